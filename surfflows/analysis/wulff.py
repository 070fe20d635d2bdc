"""Wulff shapes of surface energies (pymatgen ``WulffShape``) and their comparison."""

from __future__ import annotations

from collections.abc import Sequence

from pymatgen.analysis.wulff import WulffShape
from pymatgen.core import Structure
from scipy.spatial import QhullError

from surfflows.core.thermo import ranking_agreement, to_j_per_m2
from surfflows.schemas.thermo import (
    FacetComparison,
    SurfaceEntryDoc,
    SurfacePropertiesDoc,
    WulffComparisonDoc,
)

#: Fields of a SurfacePropertiesDoc given by its maker (the others follow from the surfaces).
GIVEN_FIELDS = {"material_id", "pretty_formula", "model_id", "delta_mu_O", "mu_O", "o2_energy"}


def wulff_shape(doc: SurfacePropertiesDoc) -> WulffShape:
    """pymatgen WulffShape of a document's surfaces (energies in eV/Å²)."""
    return WulffShape(
        doc.structure.lattice,
        [tuple(s.miller_index) for s in doc.surfaces],
        [s.surface_energy_EV_PER_ANG2 for s in doc.surfaces],
    )


def surface_properties(
    structure: Structure, surfaces: Sequence[SurfaceEntryDoc], **fields
) -> SurfacePropertiesDoc:
    """Document with the Wulff quantities of ``surfaces`` on ``structure``'s lattice.

    Parameters
    ----------
    structure
        Conventional bulk cell (Miller indices refer to it).
    surfaces
        One entry per facet; area fractions and ``has_wulff`` are filled in here.
    **fields
        The other fields (material_id, pretty_formula, model_id, delta_mu_O...).

    Returns
    -------
    SurfacePropertiesDoc
        With ``note`` saying why the Wulff quantities are missing, where they are.
    """
    doc = SurfacePropertiesDoc(
        structure=structure, surfaces=[s.model_copy() for s in surfaces], **fields
    )
    gammas = [s.surface_energy_EV_PER_ANG2 for s in doc.surfaces]
    if min(gammas) <= 0:
        doc.note = "a stable gamma is not positive: no Wulff shape"
        return doc
    try:
        wulff = wulff_shape(doc)
    except (QhullError, ValueError) as exc:
        doc.note = f"the facets do not enclose a finite Wulff shape ({type(exc).__name__})"
        return doc
    fractions = wulff.area_fraction_dict
    for surface in doc.surfaces:
        surface.area_fraction = float(fractions[tuple(surface.miller_index)])
        surface.has_wulff = surface.area_fraction > 1e-6
    weighted = float(wulff.weighted_surface_energy)
    doc.weighted_surface_energy_EV_PER_ANG2 = weighted
    doc.weighted_surface_energy = to_j_per_m2(weighted)
    doc.shape_factor = float(wulff.shape_factor)
    doc.surface_anisotropy = float(wulff.anisotropy)
    return doc


def restricted(
    doc: SurfacePropertiesDoc, miller_indices: Sequence[Sequence[int]]
) -> SurfacePropertiesDoc:
    """The same document on a subset of its facets (Wulff quantities recomputed)."""
    keep = {tuple(hkl) for hkl in miller_indices}
    return surface_properties(
        doc.structure,
        [s for s in doc.surfaces if tuple(s.miller_index) in keep],
        **doc.model_dump(include=GIVEN_FIELDS),
    )


def compare_wulff(
    reference: SurfacePropertiesDoc,
    model: SurfacePropertiesDoc,
    reference_set: str,
    level_of_theory: str,
    citation: str | None = None,
) -> WulffComparisonDoc:
    """Compare two Wulff documents of one material on the facets they share.

    Both Wulff shapes are rebuilt on the common facets (so area fractions compare); rank
    agreement is Kendall's tau and Spearman's rho of gamma over them.

    Raises
    ------
    ValueError
        If the two share fewer than two facets.
    """
    ref_gamma = {tuple(s.miller_index): s.surface_energy for s in reference.surfaces}
    mod_gamma = {tuple(s.miller_index): s.surface_energy for s in model.surfaces}
    common = sorted(set(ref_gamma) & set(mod_gamma), key=lambda hkl: ref_gamma[hkl])
    if len(common) < 2:
        raise ValueError(f"fewer than two common facets: {common}")
    reference, model = restricted(reference, common), restricted(model, common)
    ref_fraction = {tuple(s.miller_index): s.area_fraction for s in reference.surfaces}
    mod_fraction = {tuple(s.miller_index): s.area_fraction for s in model.surfaces}
    mod_rank = sorted(common, key=lambda hkl: mod_gamma[hkl])
    facets = []
    for rank, hkl in enumerate(common, start=1):
        fr, fm = ref_fraction[hkl], mod_fraction[hkl]
        facets.append(
            FacetComparison(
                miller_index=hkl,
                gamma_reference=ref_gamma[hkl],
                gamma_model=mod_gamma[hkl],
                rank_reference=rank,
                rank_model=mod_rank.index(hkl) + 1,
                area_fraction_reference=fr,
                area_fraction_model=fm,
                area_fraction_difference=None if fr is None or fm is None else fm - fr,
            )
        )
    diffs = [
        abs(f.area_fraction_difference) for f in facets if f.area_fraction_difference is not None
    ]
    return WulffComparisonDoc(
        material_id=model.material_id,
        model_id=model.model_id,
        reference_set=reference_set,
        level_of_theory=level_of_theory,
        citation=citation,
        delta_mu_O=model.delta_mu_O,
        facets=facets,
        missing_in_model=sorted(set(ref_gamma) - set(mod_gamma)),
        missing_in_reference=sorted(set(mod_gamma) - set(ref_gamma)),
        n_facets=len(common),
        **{k: v for k, v in ranking_agreement(ref_gamma, mod_gamma).items() if k != "n_facets"},
        lowest_facet_reference=common[0],
        lowest_facet_model=mod_rank[0],
        mean_signed_gamma_error=sum(mod_gamma[h] - ref_gamma[h] for h in common) / len(common),
        mean_abs_area_fraction_difference=sum(diffs) / len(diffs) if diffs else None,
        max_abs_area_fraction_difference=max(diffs) if diffs else None,
        reference=reference,
        model=model,
    )
