"""OC22 S2EF frames as training frames, on LMDB fixtures in the published S2EF layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from oc22_fixtures import (
    is2re_fields,
    metadata_excerpt,
    pyg1_pickle,
    pyg2_pickle,
    relaxed,
    rutile_slab,
    s2ef_fields,
    with_adsorbate,
    write_shard,
)
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.io.ingest import ingest_reference_set
from surfflows.io.oc22 import oc22_reference_set, oc22_s2ef_set
from surfflows.io.splits import get_or_create_split
from surfflows.schemas.references import ReferenceFrameDoc
from surfflows.stores import get_store

#: A second material for the split test: the excerpt's TiO2 slab 36509 relabelled as mp-2657.
OTHER_BULK = "mp-2657"


@pytest.fixture
def oc22_files(tmp_path) -> tuple[Path, Path, Path]:
    """(S2EF split folder, IS2RE split folder, metadata.pkl) of three relaxations.

    Trajectories: clean slab 3589 (mp-554278, 4 frames in a PyG-1 shard), its CO adslab 23315
    (3 frames, PyG 2, in a second shard) and clean slab 36509 moved to another material
    (3 frames). Bad records: a frame without forces, one with a [N, 2] force array and one
    without an energy.
    """
    metadata = metadata_excerpt()
    metadata[36509] = {**metadata[36509], "bulk_id": OTHER_BULK}
    meta_path = tmp_path / "oc22_metadata.pkl"
    meta_path.write_bytes(pickle.dumps(metadata))
    slab111, slab11m1 = rutile_slab((1, 1, 1)), rutile_slab((1, 1, -1))
    co = with_adsorbate(slab111, "CO")

    def frames(atoms, sid, nads, n, pickler=pyg1_pickle):
        records = []
        for fid in range(n):
            moved = relaxed(atoms, seed=100 * sid + fid)
            forces = np.random.default_rng(fid).normal(0, 0.1, (len(atoms), 3))
            records.append(
                pickler(s2ef_fields(moved, sid, nads, fid, -8.0 * len(atoms) - fid, forces))
            )
        return records

    s2ef = tmp_path / "s2ef-total" / "train"
    n = len(slab111)
    bad = [
        pyg1_pickle(s2ef_fields(slab111, 3589, 0, 7, -200.0, None)),  # no forces
        pyg1_pickle(s2ef_fields(slab111, 3589, 0, 8, -200.0, np.zeros((n, 2)))),  # bad shape
        pyg1_pickle(s2ef_fields(slab111, 3589, 0, 9, None, np.zeros((n, 3)))),  # no energy
    ]
    write_shard(s2ef / "data.0000.lmdb", [*frames(slab111, 3589, 0, 4), *bad], with_length=True)
    write_shard(
        s2ef / "data.0001.lmdb",
        [*frames(co, 23315, 1, 3, pyg2_pickle), *frames(slab11m1, 36509, 0, 3)],
        with_length=False,
    )
    is2re = tmp_path / "is2re-total" / "train"
    write_shard(
        is2re / "data.0000.lmdb",
        [
            pyg1_pickle(is2re_fields(slab111, 3589, 0, relaxed(slab111, 1), -190.0)),
            pyg1_pickle(is2re_fields(co, 23315, 1, relaxed(co, 2), -210.0)),
            pyg1_pickle(is2re_fields(slab11m1, 36509, 0, relaxed(slab11m1, 3), -180.0)),
        ],
        with_length=True,
    )
    return s2ef, is2re, meta_path


def test_s2ef_frames_become_frame_documents_with_unique_keys(oc22_files):
    s2ef, _, meta = oc22_files
    refset = oc22_s2ef_set(s2ef, meta)
    assert (refset.slabs, refset.bulks, refset.adslabs) == ([], [], [])
    keys = [doc.key for doc in refset.frames]
    assert len(keys) == len(set(keys)) == 10
    assert keys[:4] == [f"oc22:oc22-3589:f{fid}" for fid in range(4)]
    assert refset.skipped == {
        "oc22_no_forces": ["oc22-3589"],
        "oc22_bad_force_shape": ["oc22-3589"],
        "oc22_no_target": ["oc22-3589"],
    }
    by_parent: dict[str, list[ReferenceFrameDoc]] = {}
    for doc in refset.frames:
        by_parent.setdefault(doc.parent_key, []).append(doc)
        assert len(doc.ref_forces) == doc.n_atoms and len(doc.ref_forces[0]) == 3
        assert doc.fixed_indices and "tags" in doc.structure.site_properties
    assert {k: len(v) for k, v in by_parent.items()} == {
        "oc22:oc22-3589": 4,
        "oc22:oc22-23315": 3,
        "oc22:oc22-36509": 3,
    }
    adslab = by_parent["oc22:oc22-23315"][0]
    assert (adslab.parent_kind, adslab.slab_id, adslab.adsorbate) == ("adslab", "oc22-3589", "CO")
    assert adslab.traj_id == "TiO2_mp-554278_AK6wavRPLH_4MPyNaaMJG"
    assert [d.frame_index for d in by_parent["oc22:oc22-36509"]] == [0, 1, 2]
    assert by_parent["oc22:oc22-36509"][0].material_id == OTHER_BULK
    assert adslab.ref_energy == pytest.approx(-8.0 * adslab.n_atoms)


def test_frame_ingest_is_idempotent_and_the_split_keeps_materials_together(oc22_files):
    s2ef, is2re, meta = oc22_files
    refs = get_store("references")
    first = ingest_reference_set(oc22_s2ef_set(s2ef, meta), refs)
    assert (first.inserted, first.updated, first.unchanged) == (10, 0, 0)
    again = ingest_reference_set(oc22_s2ef_set(s2ef, meta), refs)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 10)
    result = CliRunner().invoke(
        app, ["oc22", "ingest-frames", str(s2ef), "--metadata", str(meta)]
    )  # the command line reports the same: nothing to write
    assert result.exit_code == 0 and "0 inserted, 0 updated, 10 unchanged" in result.output
    relaxed_set = ingest_reference_set(oc22_reference_set(is2re, meta), refs)
    assert relaxed_set.inserted == 3
    with refs:
        stored_frames = list(refs.query({"set_name": "oc22", "doc_type": "frame"}))
        parents = {d["key"]: d for d in refs.query({"doc_type": {"$in": ["slab", "adslab"]}})}
    assert len(stored_frames) == 10
    assert {d["parent_key"] for d in stored_frames} == set(parents)  # every frame finds its record

    split = get_or_create_split(
        "oc22", store=get_store("splits"), references=refs, fractions=(0.5, 0.0, 0.5)
    )
    assert set(split.assignments) == {"mp-554278", OTHER_BULK}
    parts_by_trajectory: dict[str, set[str]] = {}
    for frame in stored_frames:
        part = split.assignments[frame["material_id"]]
        parts_by_trajectory.setdefault(frame["parent_key"], set()).add(part)
        assert part == split.assignments[parents[frame["parent_key"]]["material_id"]]
    assert all(len(parts) == 1 for parts in parts_by_trajectory.values())


def test_frames_extxyz_round_trip_and_bad_force_shape(oc22_files, tmp_path):
    """The same frames written as frames.extxyz read back to the same documents."""
    from ase.io import write

    from surfflows.io.canonical import read_reference_set
    from surfflows.io.oc22 import frames_from_s2ef, read_metadata

    s2ef, _, meta = oc22_files
    frames = frames_from_s2ef(s2ef, read_metadata(meta))
    folder = tmp_path / "oc22_frames"
    folder.mkdir()
    write(folder / "frames.extxyz", [*frames.slabs, *frames.adslabs])
    (folder / "README.md").write_text("level_of_theory: VASP PBE+U\n")
    refset = read_reference_set(folder)
    direct = oc22_s2ef_set(s2ef, meta, set_name="oc22_frames")
    assert [d.key for d in refset.frames] == [d.key for d in direct.frames]
    np.testing.assert_allclose(refset.frames[5].ref_forces, direct.frames[5].ref_forces, atol=1e-6)
    # a force array of the wrong shape is an error naming file, frame and field
    bad = [*frames.slabs]
    bad[1] = bad[1].copy()
    bad[1].arrays["ref_forces"] = bad[1].arrays["ref_forces"][:, :2].copy()
    write(folder / "frames.extxyz", bad)
    with pytest.raises(ValueError, match=r"frames.extxyz, frame 1: per-atom array 'ref_forces'"):
        read_reference_set(folder)


def test_frames_are_energy_and_force_training_samples(oc22_files):
    from surfflows.engine.finetune import build_batch, reference_data
    from surfflows.engine.models import load_model
    from surfflows.schemas.models import ModelSpec

    s2ef, _, meta = oc22_files
    docs = oc22_s2ef_set(s2ef, meta).documents
    parts = {"mp-554278": "train", OTHER_BULK: "test"}
    model = load_model(ModelSpec())
    train = reference_data(docs, parts, ("train",), model.graph_converter)
    assert train.counts()["frames"] == 7 and train.counts()["force_labelled"] == 7
    assert {s.material_id for s in train.samples} == {"mp-554278"}  # test frames stay out
    assert not train.pairs  # frames enter energy and force terms, never gamma
    batch = build_batch(model, train, list(range(7)), None)
    assert batch.forces is not None and bool(batch.energy_mask.all())
    selected = reference_data(
        docs, parts, ("train",), model.graph_converter, slab_keys={"oc22:oc22-23315"}
    )
    assert selected.counts()["frames"] == 3  # the frames of the selected relaxation only
