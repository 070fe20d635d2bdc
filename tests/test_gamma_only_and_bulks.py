"""Gamma-only reference slabs and bulk-only sets, from ingest to benchmark rows and report.

Fixtures are small real records of the packaged ``mp_elemental_surfaces`` (Tran et al. 2016,
published gamma, no slab energies) and ``wbm_bulks`` (Wang et al. 2021) sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write
from jobflow import run_locally
from typer.testing import CliRunner

from surfflows.builders import configured_builders, run_builders
from surfflows.cli import app
from surfflows.core.benchmark import (
    alignment_drift,
    alignment_offsets,
    bulk_energy_errors,
    bulk_summary,
)
from surfflows.engine.finetune import Objective, build_batch, reference_data
from surfflows.engine.models import load_model
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.canonical import read_reference_set
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_inputs, reference_items
from surfflows.schemas.finetune import FineTuneSettings
from surfflows.schemas.models import ModelSpec
from surfflows.stores import get_job_store, get_store

DATA = Path(__file__).parents[1] / "surfflows" / "data" / "references"
MP_SURFACES = DATA / "mp_elemental_surfaces"
#: 4-6 atom slabs of Au, Ca and Zr, and a flagged In slab (in-plane mismatch 2.5 %).
SLAB_IDS = ("29Au100", "338Ca100", "341Ca111", "447Zr111", "379In101")


def _write_set(folder: Path, slabs: list, bulks: list) -> Path:
    folder.mkdir()
    write(folder / "slabs.extxyz", slabs)
    if bulks:
        write(folder / "bulks.extxyz", bulks)
    (folder / "README.md").write_text("# gamma-only test set\nlevel_of_theory: VASP PBE\n")
    return folder


@pytest.fixture
def gamma_only_set(tmp_path) -> Path:
    """Five real gamma-only slabs of mp_elemental_surfaces with their MP-PBE bulks."""
    slabs = [a for a in read(MP_SURFACES / "slabs.extxyz", ":") if a.info["slab_id"] in SLAB_IDS]
    bulk_ids = {a.info["bulk_id"] for a in slabs}
    bulks = [a for a in read(MP_SURFACES / "bulks.extxyz", ":") if a.info["bulk_id"] in bulk_ids]
    return _write_set(tmp_path / "tiny_gamma_only", slabs, bulks)


def test_packaged_gamma_only_set_reads_with_published_gamma_only():
    refset = read_reference_set("mp_elemental_surfaces")
    assert (len(refset.slabs), len(refset.bulks)) == (570, 53)
    assert all(s.ref_energy is None and s.published == ["gamma_ref"] for s in refset.slabs)
    assert all(s.gamma_ref_recomputed is None and s.bulk_key for s in refset.slabs)
    assert len(refset.skipped["flagged"]) == 113
    cu111 = next(s for s in refset.slabs if s.formula == "Cu" and s.miller_index == (1, 1, 1))
    assert cu111.gamma_ref == pytest.approx(1.339, abs=1e-3)  # README check
    for name, n_bulks in (("wbm_bulks", 674), ("mp_elemental_refs", 88)):
        bulks = read_reference_set(name)
        assert (len(bulks.slabs), len(bulks.bulks), bulks.skipped) == (0, n_bulks, {})


def test_bad_gamma_only_records_are_errors_or_counted_skips(gamma_only_set, tmp_path):
    slabs = read(gamma_only_set / "slabs.extxyz", ":")
    bulks = read(gamma_only_set / "bulks.extxyz", ":")
    neither = [a.copy() for a in slabs]
    del neither[2].info["gamma_ref"]
    folder = _write_set(tmp_path / "neither", neither, bulks)
    with pytest.raises(ValueError, match=r"slabs.extxyz, frame 2: missing info key 'ref_energy'"):
        read_reference_set(folder)

    orphan, no_bulk = slabs[0].copy(), slabs[1].copy()
    orphan.info.update(slab_id="orphan", bulk_id="mpref:Au:99")
    no_bulk.info["slab_id"] = "no_bulk"
    del no_bulk.info["bulk_id"]
    refset = read_reference_set(_write_set(tmp_path / "unlinked", [*slabs, orphan, no_bulk], bulks))
    assert refset.skipped == {
        "bulk_missing": ["orphan"],
        "gamma_only_without_bulk": ["no_bulk"],
        "flagged": ["379In101"],
    }
    by_id = {s.slab_id: s for s in refset.slabs}
    assert by_id["no_bulk"].flags == ["gamma_only_without_bulk"]
    assert by_id["orphan"].flags == ["bulk_missing"] and by_id["orphan"].bulk_id is None


def test_gamma_only_slabs_evaluate_build_and_report_in_both_modes(gamma_only_set):
    assert ingest_path(gamma_only_set).inserted == 5 + 4
    refs, splits = get_store("references"), get_store("splits")
    with refs, splits:
        items = reference_items(reference_inputs("tiny_gamma_only", refs, splits))
    flow = EvaluateMaker(modes=("single_point", "relaxed"), max_steps=60).make(
        "tiny_gamma_only", items
    )
    run_locally(flow, store=get_job_store(), log=False, ensure_success=True)
    run_builders(configured_builders())

    errors, benchmarks = get_store("surface_errors"), get_store("benchmarks")
    with errors, benchmarks:
        for mode in ("single_point", "relaxed"):
            slabs = {e["reference_key"]: e for e in errors.query({"mode": mode, "kind": "slab"})}
            assert len(slabs) == 5
            flagged = slabs.pop("tiny_gamma_only:379In101")
            assert flagged["status"] == "excluded" and flagged["reason"].startswith("flagged")
            for e in slabs.values():
                assert e["gamma_only"] and e["energy_error_per_atom"] is None  # none invented
                assert e["status"] == "ok", e["reason"]
                assert e["gamma_error"] == pytest.approx(e["gamma_model"] - e["gamma_ref"])
            au = slabs["tiny_gamma_only:29Au100"]
            assert au["gamma_ref"] == pytest.approx(0.0546 * 16.0218, rel=0.05)  # published
            assert 0.1 < au["gamma_model"] < 2.0
            row = benchmarks.query_one({"mode": mode, "split": "all", "quantity": "gamma"})
            assert row["n"] == 4 and row["n_gamma_only"] == 4
            assert row["n_excluded"] == {"flagged": 1}
        # relaxing the ions lowers each slab's energy at least as much as its bulk's (CHGNet
        # softness), so relaxed gamma is at most the single-point one
        sp = {e["reference_key"]: e for e in errors.query({"mode": "single_point", "kind": "slab"})}
        for e in errors.query({"mode": "relaxed", "kind": "slab", "status": "ok"}):
            assert e["gamma_model"] <= sp[e["reference_key"]]["gamma_model"] + 0.02

    out = gamma_only_set / "reports"
    result = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("parity_*.png")) == [
        "parity_tiny_gamma_only_chgnet-0.3.0_relaxed.png",
        "parity_tiny_gamma_only_chgnet-0.3.0_single_point.png",
    ]


def test_gamma_only_slabs_feed_only_the_gamma_term_of_finetuning(gamma_only_set):
    ingest_path(gamma_only_set)
    docs = read_reference_set(gamma_only_set).documents
    parts = {d.material_id: "train" for d in docs}
    model = load_model(ModelSpec())
    data = reference_data(docs, parts, ("train",), model.graph_converter)
    counts = data.counts()
    assert counts["slabs"] == 4 and counts["gamma_only"] == 4 and counts["gamma_pairs"] == 4
    assert data.dropped == {
        "flagged:inplane_mismatch_gt_1pct": ["tiny_gamma_only:379In101"],
        "bulk_without_slab": ["tiny_gamma_only:mpref:In:0"],
    }
    by_key = {d.key: d for d in docs}
    for pair in data.pairs:  # the published gamma is the target
        assert pair.gamma_ref == by_key[data.samples[pair.slab].key].gamma_ref
    batch = build_batch(model, data, list(range(len(data.samples))), None)
    assert int(batch.energy_mask.sum()) == counts["bulks"]  # bulks only carry energy labels
    energy = model(batch.graphs, task="e")["e"]
    loss = Objective(FineTuneSettings(energy_weight=1.0, gamma_weight=0.0))(batch, energy)
    bulk_only = energy[batch.energy_mask] - batch.energy_per_atom[batch.energy_mask]
    assert float(loss) == pytest.approx(float((bulk_only**2).mean()), rel=1e-5)


# --------------------------------------------------------------------------- bulk rows


def test_bulk_alignment_recovers_per_element_offsets_on_a_disjoint_part():
    rng = np.random.default_rng(0)
    shift = {"Fe": -1.3, "O": 0.4, "Ni": -0.7}
    refs, model, parts = [], {}, {}
    for i in range(30):
        comp = {el: int(n) for el, n in zip(shift, rng.integers(1, 4, 3), strict=True)}
        n_atoms = sum(comp.values())
        e_model = -5.0 * n_atoms
        offset = sum(shift[el] * n for el, n in comp.items())
        key = f"set:b{i}"
        refs.append(
            {
                "key": key,
                "material_id": f"m{i}",
                "n_atoms": n_atoms,
                "ref_energy": e_model + offset + (0.01 if i == 0 else 0.0),
                "structure": _structure(comp).as_dict(),
            }
        )
        model[key] = {"energy": e_model, "converged": True}
        parts[f"m{i}"] = ("train", "val", "test")[i % 3]
    rows = bulk_energy_errors(refs, model, parts)
    assert all(r["status"] == "ok" for r in rows.values())
    # the exact linear shifts are removed; the one perturbed bulk keeps its 0.01 eV
    aligned = np.array([rows[r["key"]]["aligned_energy_error_per_atom"] for r in refs])
    assert aligned[0] == pytest.approx(-0.01 / refs[0]["n_atoms"], abs=1e-4)
    assert np.abs(aligned[1:]).max() < 1e-3
    assert rows["set:b0"]["alignment"] == "offsets fitted on the bulks of parts test,val"
    stats = bulk_summary(list(rows.values()))
    assert stats["n"] == 30 and stats["raw_energy_mae"] > 0.3 and stats["force_mae"] is None

    # offsets fitted once apply to a few bulks alone, as to all of them
    offsets = alignment_offsets(refs, model, parts)
    assert bulk_energy_errors(refs[1:3], model, parts, offsets=offsets) == {
        r["key"]: rows[r["key"]] for r in refs[1:3]
    }
    # without the perturbed bulk the offsets move a little; a fit of other parts is no match
    drift = alignment_drift(offsets, alignment_offsets(refs[1:], model, parts))
    assert 0 < drift < 0.01
    assert alignment_drift(offsets, {"train": offsets["train"]}) is None


def _structure(comp: dict[str, int]):
    from pymatgen.core import Lattice, Structure

    species = [el for el, n in comp.items() for _ in range(n)]
    coords = np.random.default_rng(len(species)).random((len(species), 3))
    return Structure(Lattice.cubic(3.0 * len(species) ** (1 / 3)), species, coords)


def test_bulk_only_set_gives_bulk_energy_rows_with_parent_change(tmp_path):
    """14 small WBM bulks of 14 elements: two models through the same builders."""
    elements = set("Al Cu Fe Ga In Mg Ni Pd Pt Rh Ru Si Sn Zn".split())
    frames = [
        a
        for a in read(DATA / "wbm_bulks" / "bulks.extxyz", ":")
        if len(a) <= 8 and set(a.get_chemical_symbols()) <= elements
    ]
    assert len(frames) == 14
    folder = tmp_path / "tiny_wbm"
    folder.mkdir()
    write(folder / "bulks.extxyz", frames)
    (folder / "README.md").write_text("# tiny wbm\nlevel_of_theory: VASP PBE\n")
    assert ingest_path(folder).inserted == 14
    refs, splits = get_store("references"), get_store("splits")
    with refs, splits:
        items = reference_items(reference_inputs("tiny_wbm", refs, splits))
    assert [i[1] for i in items] == ["bulk"] * 14
    for spec in (ModelSpec(version="0.3.0"), ModelSpec(version="0.2.0")):
        flow = EvaluateMaker(model=spec, modes=("single_point",)).make("tiny_wbm", items)
        run_locally(flow, store=get_job_store(), log=False, ensure_success=True)
    # a FineTuneDoc output naming 0.3.0 as the parent of 0.2.0, so the row names a parent
    outputs = get_store("outputs")
    with outputs:
        outputs.update(
            [
                {
                    "uuid": "parent-link",
                    "index": 1,
                    "completed_at": "2026-01-01T00:00:00+00:00",
                    "output": {
                        "@class": "FineTuneDoc",
                        "model_id": "chgnet-0.2.0",
                        "parent_model_id": "chgnet-0.3.0",
                    },
                }
            ],
            key="uuid",
        )
    run_builders(configured_builders())
    benchmarks, errors = get_store("benchmarks"), get_store("surface_errors")
    with benchmarks, errors:
        rows = {
            (r["model_id"], r["split"]): r
            for r in benchmarks.query({"set_name": "tiny_wbm", "quantity": "bulk_energy"})
        }
        assert {split for _, split in rows} >= {"all"}
        child, parent = rows[("chgnet-0.2.0", "all")], rows[("chgnet-0.3.0", "all")]
        assert child["parent_model_id"] == "chgnet-0.3.0" and parent["parent_model_id"] is None
        assert child["parent_mae"] == pytest.approx(parent["mae"])
        if parent["mae"]:
            assert child["relative_change"] == pytest.approx(child["mae"] / parent["mae"] - 1)
        assert child["n_raw"] == 14 and child["raw_energy_mae"] < 0.5
        n_excluded = sum(child["n_excluded"].values())
        assert child["n"] >= 1 and child["mae"] < 0.5
        assert child["n"] + n_excluded == 14
        docs = list(errors.query({"set_name": "tiny_wbm", "model_id": "chgnet-0.3.0"}))
        assert {d["kind"] for d in docs} == {"bulk"} and len(docs) == 14
