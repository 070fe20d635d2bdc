"""Slab generation from a (relaxed) bulk with pymatgen's SlabGenerator.

Miller indices refer to the conventional standard cell of the bulk (as in the
Materials Project surface database). Every distinct termination of each facet is
kept; by default slabs are symmetric (two equivalent faces) so that
``gamma = (E_slab - n E_bulk) / 2A`` holds. A symmetrised slab may be
non-stoichiometric: it is kept and labelled, and its surface energy needs explicit
chemical potentials (see :mod:`surfflows.core.thermo`).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymatgen.core import Structure
from pymatgen.core.surface import (
    Slab,
    SlabGenerator,
    get_symmetrically_distinct_miller_indices,
)
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from surfflows.core.text import MillerIndex
from surfflows.core.thermo import bulk_units_and_excess, slab_area

#: Largest |component| of a Miller index (and largest max_index): beyond it pymatgen's
#: slab search takes minutes and the slabs hold thousands of atoms.
MAX_MILLER_INDEX = 4
#: Largest slab or vacuum thickness, Å.
MAX_THICKNESS = 100.0


class SlabSettings(BaseModel):
    """How to cut slabs from a bulk."""

    model_config = ConfigDict(extra="forbid")

    miller_indices: list[MillerIndex] | None = Field(
        default=None, description="Facets to cut (conventional cell); None: all up to max_index."
    )
    max_index: int = Field(
        default=1, ge=1, le=MAX_MILLER_INDEX, description="Largest Miller index to enumerate."
    )
    min_slab_size: float = Field(
        default=10.0, gt=0, le=MAX_THICKNESS, description="Minimum slab thickness, Å."
    )
    min_vacuum_size: float = Field(
        default=15.0, gt=0, le=MAX_THICKNESS, description="Minimum vacuum thickness, Å."
    )
    min_in_plane_size: float = Field(
        default=0.0,
        ge=0,
        le=MAX_THICKNESS,
        description="Minimum length of the in-plane vectors a and b, Å.",
    )
    symmetric: bool = Field(default=True, description="Keep only slabs with two equivalent faces.")
    n_fixed_layers: int = Field(
        default=0, ge=0, description="Atomic layers at the bottom held fixed during relaxation."
    )
    layer_tolerance: float = Field(
        default=0.3, gt=0, description="Atoms within this height (Å) belong to one layer."
    )
    max_atoms: int = Field(
        default=200, ge=1, le=2000, description="Skip slabs with more atoms than this."
    )

    @field_validator("miller_indices")
    @classmethod
    def _nonzero(cls, value: list[MillerIndex] | None) -> list[MillerIndex] | None:
        for hkl in value or []:
            if not any(hkl):
                raise ValueError("Miller index (0, 0, 0) does not define a plane")
            if max(abs(i) for i in hkl) > MAX_MILLER_INDEX:
                raise ValueError(
                    f"Miller index {tuple(hkl)}: components beyond +-{MAX_MILLER_INDEX} make "
                    "slabs of thousands of atoms (and pymatgen searches for minutes)"
                )
        return value


class SlabCandidate(BaseModel):
    """A generated slab with the metadata every later document carries."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    structure: Structure = Field(
        description="Slab structure; selective_dynamics marks fixed atoms."
    )
    miller_index: MillerIndex = Field(description="Miller index in the conventional bulk cell.")
    shift: float = Field(description="SlabGenerator shift (fractional c) of the termination.")
    termination: str = Field(description="Termination label (pymatgen label_termination).")
    is_symmetric: bool = Field(description="Whether the two faces are symmetry-equivalent.")
    is_stoichiometric: bool = Field(description="Whether the slab has the bulk's composition.")
    excess: dict[str, float] = Field(
        default_factory=dict,
        description="Atoms in excess of whole bulk units (non-stoichiometric).",
    )
    area: float = Field(description="|a x b| of the slab cell, Å².")
    n_fixed: int = Field(default=0, description="Number of fixed atoms.")


def estimated_slab_atoms(bulk: Structure, hkl: MillerIndex, settings: SlabSettings) -> int:
    """Fewest atoms a slab of ``bulk`` along ``hkl`` can have under ``settings``.

    A slab is at least ``ceil(min_slab_size / d)`` primitive layers thick, ``d`` being the
    spacing of the primitive lattice planes parallel to ``hkl`` (conventional-cell index),
    and each layer holds one primitive cell (area ``V / d``). The in-plane repeat needs at
    least ``0.866 L^2 / area`` surface cells (reduced 2D cells have 60-120 degree angles).

    Parameters
    ----------
    bulk
        The bulk structure.
    hkl
        Miller index in the conventional standard cell.
    settings
        Slab settings (thickness and in-plane size).

    Returns
    -------
    int
        A lower bound of the atoms of the generated slabs, cheap to compute.
    """
    from fractions import Fraction

    conv = conventional_cell(bulk)
    prim = conv.get_primitive_structure()  # in the conventional cell's Cartesian frame
    normal = conv.lattice.reciprocal_lattice_crystallographic.get_cartesian_coords(hkl)
    frac = prim.lattice.reciprocal_lattice_crystallographic.get_fractional_coords(normal)
    ratios = [Fraction(float(x)).limit_denominator(48) for x in frac]
    scale = math.lcm(*(r.denominator for r in ratios))
    ints = [int(r * scale) for r in ratios]
    divisor = math.gcd(*ints)
    d = prim.lattice.d_hkl([i // divisor for i in ints])
    layers = max(1, math.ceil(settings.min_slab_size / d))
    area = prim.volume / d
    in_plane = max(1, math.ceil(0.866 * settings.min_in_plane_size**2 / area))
    return len(prim) * layers * in_plane


def conventional_cell(bulk: Structure) -> Structure:
    """Conventional standard cell, the frame in which Miller indices are given."""
    return SpacegroupAnalyzer(bulk).get_conventional_standard_structure()


def fixed_mask(structure: Structure) -> np.ndarray:
    """Boolean mask of atoms fixed by ``selective_dynamics`` (all three flags False)."""
    flags = structure.site_properties.get("selective_dynamics")
    if flags is None:
        return np.zeros(len(structure), dtype=bool)
    return ~np.asarray(flags, dtype=bool).any(axis=1)


def layer_heights(slab: Structure, tolerance: float) -> np.ndarray:
    """Layer index of every site, counted from the bottom (cartesian z clustering)."""
    z = slab.cart_coords[:, 2]
    order = np.argsort(z)
    layers = np.empty(len(z), dtype=int)
    layers[order] = np.concatenate([[0], np.cumsum(np.diff(z[order]) > tolerance)])
    return layers


def fix_bottom_layers(slab: Structure, n_layers: int, tolerance: float) -> Structure:
    """Copy of ``slab`` whose bottom ``n_layers`` atomic layers are fixed (selective_dynamics)."""
    layers = layer_heights(slab, tolerance)
    fixed = layers < n_layers
    flags = [[not f] * 3 for f in fixed]
    return slab.copy(site_properties={"selective_dynamics": flags})


def _in_plane_supercell(slab: Slab, min_size: float) -> Slab:
    if min_size <= 0:
        return slab
    na = max(1, math.ceil(min_size / slab.lattice.a))
    nb = max(1, math.ceil(min_size / slab.lattice.b))
    if na == nb == 1:
        return slab
    supercell = slab.copy()
    supercell.make_supercell([na, nb, 1])  # in place, keeps the Slab type and its metadata
    return supercell


def generate_slabs(bulk: Structure, settings: SlabSettings | None = None) -> list[SlabCandidate]:
    """All slabs (facets x terminations) of ``bulk`` under ``settings``.

    Parameters
    ----------
    bulk
        Bulk structure, ideally relaxed with the model that will relax the slabs.
    settings
        Slab settings; defaults to :class:`SlabSettings`.

    Returns
    -------
    list[SlabCandidate]
        One entry per (Miller index, termination), orthogonal-c slabs centred in the cell.
    """
    settings = settings or SlabSettings()
    if not bulk.is_3d_periodic or len(bulk) == 0:
        raise ValueError("the bulk must be a non-empty, 3D-periodic structure")
    conv = conventional_cell(bulk)
    millers = settings.miller_indices or get_symmetrically_distinct_miller_indices(
        conv, settings.max_index
    )
    from pymatgen.core.interface import label_termination  # 5 s to import: only when cutting

    candidates = []
    for hkl in millers:
        generator = SlabGenerator(
            conv,
            tuple(hkl),
            min_slab_size=settings.min_slab_size,
            min_vacuum_size=settings.min_vacuum_size,
            center_slab=True,
            lll_reduce=True,
            primitive=True,
        )
        for slab in generator.get_slabs(symmetrize=settings.symmetric):
            slab = _in_plane_supercell(slab.get_orthogonal_c_slab(), settings.min_in_plane_size)
            if len(slab) > settings.max_atoms:
                continue
            symmetric = slab.is_symmetric()
            if settings.symmetric and not symmetric:
                continue
            _, excess = bulk_units_and_excess(slab.composition, conv.composition)
            structure = Structure.from_sites(slab)
            if settings.n_fixed_layers:
                structure = fix_bottom_layers(
                    structure, settings.n_fixed_layers, settings.layer_tolerance
                )
            candidates.append(
                SlabCandidate(
                    structure=structure,
                    miller_index=tuple(int(i) for i in hkl),
                    shift=round(float(slab.shift), 6),
                    termination=label_termination(slab),
                    is_symmetric=symmetric,
                    is_stoichiometric=not excess,
                    excess=excess,
                    area=slab_area(slab.lattice),
                    n_fixed=sum(
                        not any(f) for f in structure.site_properties.get("selective_dynamics", [])
                    ),
                )
            )
    return candidates
