"""Training and validation samples read from reference documents, with their slab/bulk pairs."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from chgnet.graph import CrystalGraph, CrystalGraphConverter
from pymatgen.core import Structure

from surfflows.core.thermo import bulk_units_and_excess, slab_area
from surfflows.schemas.references import ReferenceDoc


@dataclass
class Sample:
    """One training or validation structure with its labels.

    ``energy`` is None for a gamma-only slab (published gamma, no DFT total energy): it enters
    the gamma term only, never the energy term or the per-element fit.
    """

    key: str
    doc_type: str
    material_id: str
    graph: CrystalGraph
    n_atoms: int
    energy: float | None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    structure: Structure | None = None
    set_name: str = ""


@dataclass
class SurfacePair:
    """A slab and its bulk (indices into the samples) with the reference gamma."""

    slab: int
    bulk: int
    n_units: float
    area: float
    gamma_ref: float


@dataclass
class ReferenceData:
    """Samples, the slab/bulk pairs among them, and the records left out with the reason."""

    samples: list[Sample] = field(default_factory=list)
    pairs: list[SurfacePair] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Reference keys of the samples."""
        return [s.key for s in self.samples]

    def counts(self, set_name: str | None = None) -> dict[str, int]:
        """Structures, slabs, bulks, gamma pairs, materials and force-labelled structures
        (of one set only if ``set_name``)."""
        keep = [set_name is None or s.set_name == set_name for s in self.samples]
        samples = [s for s, k in zip(self.samples, keep, strict=True) if k]
        return {
            "structures": len(samples),
            "slabs": sum(s.doc_type == "slab" for s in samples),
            "bulks": sum(s.doc_type == "bulk" for s in samples),
            "gamma_pairs": sum(keep[p.slab] for p in self.pairs),
            "materials": len({s.material_id for s in samples}),
            "force_labelled": sum(s.forces is not None for s in samples),
            "gamma_only": sum(s.energy is None for s in samples),
            "frames": sum(s.doc_type == "frame" for s in samples),
        }


def merge_data(parts: Sequence[ReferenceData]) -> ReferenceData:
    """The data of several sets as one: samples in order, pairs re-indexed, reasons joined.

    Material ids of different sets must not be the same material (see
    :func:`surfflows.core.splits.leaking_materials`); batches still keep one set each
    (:func:`make_batches`).
    """
    if len(parts) == 1:
        return parts[0]
    out = ReferenceData()
    for data in parts:
        offset = len(out.samples)
        out.samples += data.samples
        out.pairs += [
            dataclasses.replace(p, slab=p.slab + offset, bulk=p.bulk + offset) for p in data.pairs
        ]
        for reason, keys in data.dropped.items():
            out.dropped.setdefault(reason, []).extend(keys)
    return out


def reference_data(
    docs: Sequence[ReferenceDoc],
    assignments: dict[str, str],
    parts: Sequence[str],
    converter: CrystalGraphConverter,
    *,
    zero_force_labels: bool = False,
    slab_keys: Collection[str] | None = None,
    held_out: Mapping[str, str] | None = None,
) -> ReferenceData:
    """Slabs and bulks of some split parts of a reference set, screened, as CrystalGraphs.

    Parameters
    ----------
    docs
        Reference documents of one set (slabs, bulks and trajectory frames; others are
        ignored). Frames (OC22 S2EF) are energy and force samples without a gamma term.
    assignments
        material_id -> split part.
    parts
        Parts to take (``("train",)`` for training, ``("val",)`` for validation).
    converter
        The model's graph converter.
    zero_force_labels
        Zero forces as labels for frames without ``ref_forces`` (DFT-relaxed frames only).
    slab_keys
        Only these slabs (e.g. a DIRECT or random selection of the train part), with their
        bulks and the frames of their trajectories; None: every slab of the parts.
    held_out
        material_id -> ``"<set>:<part>"`` of materials held out (val or test) in another
        set (:func:`surfflows.core.splits.leaking_materials`): never taken.

    Returns
    -------
    ReferenceData
        Left out, by reason: ``flagged:<flag>`` (a record with ``flags``; each flag counts),
        ``held_out:<set>:<part>`` (a material of ``held_out``), ``no_bulk`` (a slab whose
        bulk is absent), ``bulk_without_slab`` (a bulk none of
        whose slabs is kept, so no surface term; a set without any slab document, e.g.
        ``wbm_bulks``, keeps its bulks as energy samples), ``graph_failed``. A slab that is not
        stoichiometric or has no reference gamma is kept for its energy without a gamma
        term; a gamma-only slab (no ``ref_energy``) is kept for its gamma term only, with
        the published gamma as target.
    """
    dropped: dict[str, list[str]] = defaultdict(list)
    by_key = {doc.key: doc for doc in docs}
    held_out = held_out or {}
    candidates = [
        doc
        for doc in docs
        if doc.doc_type in ("slab", "bulk", "frame") and assignments.get(doc.material_id) in parts
        if doc.doc_type == "bulk"
        or slab_keys is None
        or doc.key in slab_keys
        or (doc.doc_type == "frame" and doc.parent_key in slab_keys)
    ]
    selected = []
    for doc in candidates:
        if doc.material_id in held_out:
            dropped[f"held_out:{held_out[doc.material_id]}"].append(doc.key)
        else:
            selected.append(doc)
    slabs = []
    for doc in (d for d in selected if d.doc_type == "slab"):
        if doc.flags:
            for flag in doc.flags:
                dropped[f"flagged:{flag.split('(')[0]}"].append(doc.key)
        elif doc.bulk_key not in by_key:
            dropped["no_bulk"].append(doc.key)
        else:
            slabs.append(doc)
    needed = {doc.bulk_key for doc in slabs}
    bulk_only = not any(doc.doc_type == "slab" for doc in docs)
    bulks = []
    for doc in (d for d in selected if d.doc_type == "bulk"):
        if doc.flags:
            for flag in doc.flags:
                dropped[f"flagged:{flag.split('(')[0]}"].append(doc.key)
        elif doc.key not in needed and not bulk_only:
            dropped["bulk_without_slab"].append(doc.key)
        else:
            bulks.append(doc)
    frames = []  # trajectory frames (OC22 S2EF): energy and force samples, no gamma term
    for doc in (d for d in selected if d.doc_type == "frame"):
        if doc.flags:
            for flag in doc.flags:
                dropped[f"flagged:{flag.split('(')[0]}"].append(doc.key)
        else:
            frames.append(doc)
    # Bulks first so that a slab's bulk is known when the slab's pair is made.
    data = ReferenceData()
    index: dict[str, int] = {}
    for doc in [*bulks, *slabs, *frames]:
        structure = doc.structure.copy()
        try:
            graph = converter(structure, graph_id=doc.key)
        except Exception:
            dropped["graph_failed"].append(doc.key)
            continue
        forces = doc.ref_forces
        if forces is None and zero_force_labels:
            forces = np.zeros((len(structure), 3))
        index[doc.key] = len(data.samples)
        data.samples.append(
            Sample(
                key=doc.key,
                doc_type=doc.doc_type,
                material_id=doc.material_id,
                graph=graph,
                n_atoms=len(structure),
                energy=None if doc.ref_energy is None else float(doc.ref_energy),
                forces=None if forces is None else np.asarray(forces, dtype=float),
                structure=structure,
                set_name=doc.set_name,
            )
        )
        if doc.doc_type != "slab" or doc.bulk_key not in index:
            continue
        gamma_ref = doc.gamma_ref_recomputed
        if doc.ref_energy is None:  # gamma-only: the published gamma is the target
            gamma_ref = doc.gamma_ref
        bulk = by_key[doc.bulk_key].structure
        n_units, excess = bulk_units_and_excess(structure.composition, bulk.composition)
        if gamma_ref is None or excess:
            continue
        data.pairs.append(
            SurfacePair(
                slab=index[doc.key],
                bulk=index[doc.bulk_key],
                n_units=n_units,
                area=slab_area(structure.lattice),
                gamma_ref=float(gamma_ref),
            )
        )
    data.dropped = dict(dropped)
    return data
