"""Reference sets: reading the packaged data, ingest into a MontyStore, material splits."""

from __future__ import annotations

import math

import ase.io
import numpy as np
import pytest
from pymatgen.analysis.surface_analysis import SlabEntry
from pymatgen.core.surface import Slab
from pymatgen.entries.computed_entries import ComputedStructureEntry

from surfflows.core.splits import make_split
from surfflows.core.thermo import EV_PER_A2_TO_J_PER_M2
from surfflows.io.canonical import PACKAGED_SETS, documents_from_frames, read_reference_set
from surfflows.io.ingest import ingest_path
from surfflows.io.splits import get_or_create_split
from surfflows.schemas.references import ReferenceSlabDoc
from surfflows.stores import get_store

PBE_DIR = "surfflows/data/references/pbe_metal_surfaces"


@pytest.fixture(scope="module")
def pbe():
    return read_reference_set("pbe_metal_surfaces")


@pytest.fixture(scope="module")
def jarvis():
    return read_reference_set("jarvis_surfaces")


@pytest.fixture
def db(tmp_path, monkeypatch):
    """An empty embedded database for the test."""
    monkeypatch.setenv("SURFFLOWS_DB_DIR", str(tmp_path / "db"))
    monkeypatch.setenv("SURFFLOWS_SETTINGS_FILE", str(tmp_path / "no_settings.yaml"))
    monkeypatch.delenv("SURFFLOWS_MONGODB_URI", raising=False)
    return tmp_path


def _references() -> list[dict]:
    store = get_store("references")
    with store:
        return sorted(store.query({}), key=lambda doc: doc["key"])


def _user_set(folder, slabs, bulks, level_of_theory="VASP PBE"):
    """Write a reference-set folder in the canonical format."""
    folder.mkdir(exist_ok=True)
    theory = f"level_of_theory: {level_of_theory}\n" if level_of_theory else ""
    (folder / "README.md").write_text(f"# test set\n{theory}")
    ase.io.write(folder / "slabs.extxyz", slabs, format="extxyz")
    ase.io.write(folder / "bulks.extxyz", bulks, format="extxyz")
    return folder


def _pbe_frames(root):
    """Two Cu slabs and the Cu bulk of the packaged PBE set, as ASE frames."""
    slabs = ase.io.read(root / PBE_DIR / "slabs.extxyz", ":2")
    bulks = ase.io.read(root / PBE_DIR / "bulks.extxyz", ":1")
    return slabs, bulks


@pytest.fixture
def repo_root(request):
    return request.config.rootpath


def test_pbe_metal_surfaces_counts_and_cu111_gamma(pbe):
    assert (len(pbe.slabs), len(pbe.bulks), len(pbe.adslabs), pbe.skipped) == (42, 6, 0, {})
    assert pbe.info.level_of_theory == "VASP PBE" and pbe.info.licence == "MIT (pymatgen)"
    assert all(s.is_stoichiometric and s.bulk_key for s in pbe.slabs)
    # the published gamma_ref (4 decimals) is reproduced from the reference energies
    assert max(abs(s.gamma_ref_recomputed - s.gamma_ref) for s in pbe.slabs) < 1e-3

    cu111 = next(s for s in pbe.slabs if s.material_id == "Cu" and s.miller_index == (1, 1, 1))
    assert cu111.gamma_ref_recomputed == pytest.approx(1.32, abs=0.01)
    bulk = next(b for b in pbe.bulks if b.key == cu111.bulk_key)
    s = cu111.structure
    slab = Slab(s.lattice, s.species, s.frac_coords, (1, 1, 1), s, 0, np.eye(3, dtype=int))
    pmg = SlabEntry(slab, cu111.ref_energy, (1, 1, 1)).surface_energy(
        ComputedStructureEntry(bulk.structure, bulk.ref_energy)
    )
    assert cu111.gamma_ref_recomputed == pytest.approx(pmg * EV_PER_A2_TO_J_PER_M2, rel=1e-9)
    # documents survive their JSON form (what the store holds)
    again = ReferenceSlabDoc.model_validate(cu111.model_dump(mode="json"))
    assert again == cu111


def test_jarvis_surfaces_keeps_flagged_records(jarvis):
    assert len(jarvis.slabs) == 439
    assert sum(bool(s.flags) for s in jarvis.slabs) == 144
    assert all(s.initial_structure is not None for s in jarvis.slabs)
    # bulks.extxyz repeats identical cells under one id (one per slab): kept once, counted;
    # two different cells under JVASP-1002:100:bulk are ambiguous: its slabs lose the bulk.
    assert len(jarvis.skipped["duplicate_bulk_frame"]) == 36
    assert jarvis.skipped["conflicting_bulk_frames"] == ["JVASP-1002:100:bulk"]
    unlinked = [s for s in jarvis.slabs if s.slab_id in jarvis.skipped["bulk_missing"]]
    assert len(unlinked) == 2
    assert all(s.bulk_id is None and "bulk_missing" in s.flags for s in unlinked)
    clean = [s for s in jarvis.slabs if not s.flags]
    assert len(clean) == 295
    assert all(abs(s.gamma_ref_recomputed - s.gamma_ref) < 0.01 for s in clean)


def test_ingest_is_idempotent(db, pbe):
    first = ingest_path("pbe_metal_surfaces")
    assert (first.inserted, first.updated, first.unchanged) == (48, 0, 0)
    stored = _references()
    second = ingest_path("pbe_metal_surfaces")
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 48)
    assert "0 inserted, 0 updated, 48 unchanged" in second.summary()
    assert _references() == stored  # timestamps of unchanged documents are kept
    slab = next(d for d in stored if d["doc_type"] == "slab")
    assert ReferenceSlabDoc.model_validate(slab).structure == next(
        s.structure for s in pbe.slabs if s.key == slab["key"]
    )


def test_bad_frames_are_counted_or_refused(db, repo_root):
    slabs, bulks = _pbe_frames(repo_root)
    slabs[0].info["ref_energy"] = float("nan")
    folder = _user_set(db / "cu_set", slabs, bulks)
    refset = read_reference_set(folder)
    assert refset.skipped == {"non_finite_energy": [slabs[0].info["slab_id"]]}
    assert [s.slab_id for s in refset.slabs] == [slabs[1].info["slab_id"]]

    # a slab whose bulk is absent is kept, flagged and counted
    slabs[0].info["ref_energy"] = -118.99154132
    slabs[0].info["bulk_id"] = "bulk:unknown"
    refset = read_reference_set(_user_set(folder, slabs, bulks))
    assert refset.skipped == {"bulk_missing": [slabs[0].info["slab_id"]]}
    assert refset.slabs[0].bulk_id is None and refset.slabs[0].flags == ["bulk_missing"]
    assert ingest_path(folder).inserted == 3
    stored = _references()

    # structural problems raise, naming file, frame and field, and write nothing
    del slabs[1].info["slab_id"]
    _user_set(folder, slabs, bulks)
    with pytest.raises(ValueError, match=r"slabs\.extxyz, frame 1: missing .*'slab_id'"):
        ingest_path(folder)
    slabs[1].info["slab_id"] = slabs[0].info["slab_id"]
    _user_set(folder, slabs, bulks)
    with pytest.raises(ValueError, match=r"frame 1: duplicate slab_id"):
        ingest_path(folder)
    with pytest.raises(ValueError, match="states no level of theory"):
        read_reference_set(_user_set(db / "no_theory", slabs, bulks, level_of_theory=None))
    # the same set at another level of theory is refused before any write
    _, bulks_only = _pbe_frames(repo_root)
    with pytest.raises(ValueError, match="at \\['VASP PBE'\\]"):
        ingest_path(_user_set(folder, slabs[:1], bulks_only, level_of_theory="VASP r2SCAN"))
    assert _references() == stored


def test_unsupported_element_and_oc22_style_frames(repo_root):
    slabs, bulks = _pbe_frames(repo_root)
    slabs[0].numbers[0] = 95  # Am: beyond CHGNet's embedding
    del slabs[0].info["formula"]
    slabs[1].arrays["fixed"] = np.arange(len(slabs[1])) < 4
    slabs[1].set_tags(np.ones(len(slabs[1]), dtype=int))
    slabs[1].info.update(sid=12, traj_id="Cu_mp-30_clean_x", nads=0)
    adslab = slabs[1].copy()
    adslab.info = {"adslab_id": "a1", "slab_id": slabs[1].info["slab_id"], "adsorbate": "O"}
    adslab.info["ref_energy"] = -50.0
    refset = documents_from_frames(PACKAGED_SETS["pbe_metal_surfaces"], slabs, bulks, [adslab])
    assert refset.skipped == {"unsupported_element": [slabs[0].info["slab_id"]]}
    (slab,) = refset.slabs
    assert slab.fixed_indices == [0, 1, 2, 3]
    assert slab.extra == {"sid": 12, "traj_id": "Cu_mp-30_clean_x", "nads": 0}
    assert slab.structure.site_properties["tags"] == [1] * len(slabs[1])
    assert refset.adslabs[0].slab_key == slab.key and refset.adslabs[0].material_id == "Cu"


def test_splits_by_material(db, repo_root):
    ids = [f"m{i}" for i in range(1000)]
    split = make_split("demo", ids, seed=3)
    assert split == make_split("demo", reversed(ids), seed=3).model_copy(
        update={"created_at": split.created_at, "updated_at": split.updated_at}
    )
    parts = {
        part: {m for m, assigned in split.assignments.items() if assigned == part}
        for part in ("train", "val", "test")
    }
    assert set().union(*parts.values()) == set(ids)
    assert sum(map(len, parts.values())) == len(ids)  # disjoint
    assert all(
        abs(split.counts[p] / 1000 - f) < 0.05 for p, f in zip(parts, split.fractions, strict=True)
    )
    grown = make_split("demo", [*ids, "new"], seed=3)
    assert {m: grown.assignments[m] for m in ids} == split.assignments
    assert make_split("demo", ids, seed=4).assignments != split.assignments

    # stored and reused; new materials are added, old ones never move
    slabs, bulks = _pbe_frames(repo_root)
    folder = _user_set(db / "cu_set", slabs, bulks)
    ingest_path(folder)
    splits, references = get_store("splits"), get_store("references")
    stores = {"store": splits, "references": references}
    stored = get_or_create_split("cu_set", **stores)
    assert stored.assignments.keys() == {"Cu"}
    assert get_or_create_split("cu_set", **stores) == stored
    assert splits.count() == 1
    pt = ase.io.read(repo_root / PBE_DIR / "slabs.extxyz", "-3")  # Pt(111)
    pt_bulk = ase.io.read(repo_root / PBE_DIR / "bulks.extxyz", "4")
    ingest_path(_user_set(folder, [*slabs, pt], [*bulks, pt_bulk]))
    extended = get_or_create_split("cu_set", **stores)
    assert extended.assignments.keys() == {"Cu", "Pt"}
    assert extended.assignments["Cu"] == stored.assignments["Cu"]
    assert extended.created_at == stored.created_at
    with pytest.raises(ValueError, match="stored with fractions"):
        get_or_create_split("cu_set", fractions=(0.5, 0.25, 0.25), **stores)
    assert math.isclose(sum(extended.fractions), 1.0)
