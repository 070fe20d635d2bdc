"""Tests for the OC22 download and readers on fixtures in the published format."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import sys
import tarfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.data import chemical_symbols
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

from surfflows.io.oc22 import (
    OC22_FILES,
    download,
    frames_from_is2re,
    frames_from_s2ef,
    iter_lmdb,
    iter_split,
    read_metadata,
)

OC22_DATA = Path(__file__).parents[1] / "surfflows" / "data" / "references" / "oc22"

SLAB_KEYS = {"slab_id", "material_id", "bulk_id", "miller", "ref_energy", "formula", "sid"}
SLAB_KEYS |= {"traj_id", "nads"}
ADSLAB_KEYS = {"adslab_id", "slab_id", "adsorbate", "ref_energy", "material_id", "bulk_id"}
ADSLAB_KEYS |= {"miller", "sid", "traj_id", "nads"}


@dataclass
class System:
    """One OC22 system of the fixture: initial and relaxed geometry, relaxed energy."""

    initial: Atoms
    final: Atoms
    energy: float


@pytest.fixture(scope="module")
def metadata() -> dict[int, dict]:
    return metadata_excerpt()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, metadata: dict[int, dict]):
    """Published-format splits from rutile slabs: (root, sid -> System, S2EF trajectory)."""
    root = tmp_path_factory.mktemp("oc22")
    slab111, slab11m1 = rutile_slab((1, 1, 1)), rutile_slab((1, 1, -1))
    initial = {
        3589: slab111,
        23315: with_adsorbate(slab111, "CO"),
        36509: slab11m1,
        31757: with_adsorbate(slab11m1, "O"),
        999999: slab111,  # not in the metadata
        3148: slab11m1,
        2714: with_adsorbate(slab11m1, "N"),
        1068: with_adsorbate(slab11m1, "H"),
        12032: with_adsorbate(slab11m1, "C"),
    }
    systems = {
        sid: System(atoms, relaxed(atoms, seed=sid), -8.0 * len(atoms) - sid * 1e-4)
        for sid, atoms in initial.items()
    }

    def fields(sid: int, **override) -> dict:
        system = systems[sid]
        nads = metadata.get(sid, {"nads": 0})["nads"]
        return is2re_fields(system.initial, sid, nads, system.final, system.energy) | override

    train = root / "is2re" / "train"
    write_shard(
        train / "data.0000.lmdb",
        [pyg1_pickle(fields(sid)) for sid in (3589, 23315, 36509, 31757, 999999)],
        with_length=True,
    )
    bad_numbers = {}
    for sid, z in ((1068, 0), (12032, 118)):
        numbers = systems[sid].initial.numbers.astype(np.float32)
        numbers[-1] = z
        bad_numbers[sid] = fields(sid, atomic_numbers=numbers)
    write_shard(
        train / "data.0001.lmdb",
        [
            pyg2_pickle(fields(3148)),
            pyg1_pickle(fields(2714, y_relaxed=float("nan"))),
            pyg1_pickle(bad_numbers[1068]),
            pyg1_pickle(bad_numbers[12032]),
        ],
        with_length=False,
    )
    write_shard(
        root / "is2re" / "test_id" / "data.0000.lmdb",
        [pyg1_pickle(is2re_fields(systems[sid].initial, sid, 0)) for sid in (3589, 3148)],
        with_length=True,
    )
    trajectory = [relaxed(slab111, seed=fid) for fid in range(11)]
    s2ef = [
        pyg1_pickle(
            s2ef_fields(atoms, 3589, 0, fid, -140.0 - 0.1 * fid, np.full((len(atoms), 3), fid))
        )
        for fid, atoms in enumerate(trajectory)
    ]
    s2ef.append(pyg1_pickle(s2ef_fields(initial[23315], 23315, 1, 0, None, None)))
    write_shard(root / "s2ef" / "train" / "data.0000.lmdb", s2ef, with_length=True)
    return root, systems, trajectory


# --------------------------------------------------------------------------- LMDB


def test_iter_lmdb_round_trips_pyg1_records_without_torch_geometric(dataset, monkeypatch):
    root, systems, _ = dataset
    # Block PyG for this read, whatever an earlier test in this worker imported (sevenn imports it).
    pyg_modules = [m for m in sys.modules if m.split(".")[0] == "torch_geometric"]
    for name in [*pyg_modules, "torch_geometric"]:
        monkeypatch.setitem(sys.modules, name, None)
    records = list(iter_lmdb(root / "is2re" / "train" / "data.0000.lmdb"))
    assert [index for index, _ in records] == [0, 1, 2, 3, 4]  # b"length" skipped
    record = records[0][1]
    system = systems[3589]
    assert record["pos"].dtype == np.float32
    np.testing.assert_allclose(record["pos"], system.initial.positions, atol=1e-5)
    np.testing.assert_allclose(record["pos_relaxed"], system.final.positions, atol=1e-5)
    assert record["cell"].shape == (1, 3, 3)
    np.testing.assert_allclose(record["cell"][0], system.initial.cell[:], atol=1e-5)
    assert record["y_relaxed"] == system.energy
    np.testing.assert_array_equal(record["fixed"] == 1, system.initial.arrays["fixed"])
    assert record["tags"].dtype == np.int64
    np.testing.assert_array_equal(record["tags"], system.initial.get_tags())
    assert (record["sid"], record["oc22"], record["natoms"]) == (3589, 1, len(system.initial))
    assert record["x"] is None and record["face"] is None


def test_iter_lmdb_reads_pyg2_records_and_shards_without_length(dataset):
    root, systems, _ = dataset
    records = dict(iter_lmdb(root / "is2re" / "train" / "data.0001.lmdb"))
    assert sorted(records) == [0, 1, 2, 3]
    record = records[0]  # PyG 2 style: fields in _store._mapping
    assert not any(key.startswith("_") for key in record)
    assert record["sid"] == 3148
    np.testing.assert_allclose(record["pos_relaxed"], systems[3148].final.positions, atol=1e-5)


def test_iter_lmdb_sorts_keys_numerically(dataset):
    root, _, _ = dataset
    records = list(iter_lmdb(root / "s2ef" / "train" / "data.0000.lmdb"))
    # LMDB stores keys bytewise (b"0", b"1", b"10", b"11", b"2", ...).
    assert [index for index, _ in records] == list(range(12))
    assert [int(record["fid"][0]) for _, record in records[:11]] == list(range(11))


def test_iter_split_walks_shards_in_sorted_order(dataset, tmp_path):
    root, _, _ = dataset
    seen = [(shard.name, index) for shard, index, _ in iter_split(root / "is2re" / "train")]
    assert seen == [("data.0000.lmdb", i) for i in range(5)] + [
        ("data.0001.lmdb", i) for i in range(4)
    ]
    with pytest.raises(FileNotFoundError, match=r"no \*\.lmdb shards"):
        next(iter_split(tmp_path))


def test_garbage_shard_raises_value_error_naming_the_file(tmp_path):
    shard = tmp_path / "data.0003.lmdb"
    shard.write_bytes(b"this is not an LMDB file " * 400)
    with pytest.raises(ValueError, match=r"data\.0003\.lmdb"):
        list(iter_lmdb(shard))


@pytest.mark.parametrize(
    "value", [b"not a pickle", pickle.dumps({"pos": [0.0]})], ids=["not_pickle", "not_data"]
)
def test_undecodable_record_names_file_and_key(tmp_path, value, metadata):
    atoms = rutile_slab((1, 1, 0))
    good = pyg1_pickle(is2re_fields(atoms, 3589, 0, atoms, -1.0))
    write_shard(tmp_path / "split" / "data.0007.lmdb", [good, value], with_length=True)
    with pytest.raises(ValueError, match=r"data\.0007\.lmdb: cannot decode record at key '1'"):
        frames_from_is2re(tmp_path / "split", metadata)


# --------------------------------------------------------------------------- frames


def test_is2re_frames_split_slabs_and_adslabs_and_count_every_skip(dataset, metadata):
    root, systems, _ = dataset
    frames = frames_from_is2re(root / "is2re" / "train", metadata)
    assert [atoms.info["sid"] for atoms in frames.slabs] == [3589, 36509, 3148]
    assert [atoms.info["sid"] for atoms in frames.adslabs] == [23315, 31757]
    assert frames.skipped == {"no_metadata": 1, "nan_energy": 1, "unknown_element": 2}
    assert frames.skipped_sids == {
        "no_metadata": [999999],
        "nan_energy": [2714],
        "unknown_element": [1068, 12032],
    }
    assert len(frames.slabs) + len(frames.adslabs) + sum(frames.skipped.values()) == 9

    slab, system = frames.slabs[0], systems[3589]
    assert set(slab.info) == SLAB_KEYS
    assert slab.info["slab_id"] == "oc22-3589"
    assert slab.info["material_id"] == slab.info["bulk_id"] == "mp-554278"
    assert slab.info["ref_energy"] == system.energy
    assert (slab.info["formula"], slab.info["traj_id"]) == ("TiO2", metadata[3589]["traj_id"])
    np.testing.assert_array_equal(slab.info["miller"], [1, 1, 1])
    assert slab.pbc.all()
    np.testing.assert_array_equal(slab.numbers, system.initial.numbers)
    np.testing.assert_allclose(slab.positions, system.final.positions, atol=1e-5)
    np.testing.assert_allclose(slab.cell[:], system.initial.cell[:], atol=1e-5)
    assert slab.arrays["fixed"].dtype == bool
    np.testing.assert_array_equal(slab.arrays["fixed"], system.initial.arrays["fixed"])
    np.testing.assert_array_equal(slab.get_tags(), system.initial.get_tags())

    adslab = frames.adslabs[0]
    assert set(adslab.info) == ADSLAB_KEYS
    assert (adslab.info["adslab_id"], adslab.info["slab_id"]) == ("oc22-23315", "oc22-3589")
    assert (adslab.info["adsorbate"], adslab.info["nads"]) == ("CO", 1)
    assert list(adslab.get_tags()[-2:]) == [2, 2]
    slab_ids = {atoms.info["slab_id"] for atoms in frames.slabs}
    assert {atoms.info["slab_id"] for atoms in frames.adslabs} <= slab_ids


def test_malformed_records_and_bad_metadata_are_counted(tmp_path, metadata):
    atoms = rutile_slab((1, 1, 0))
    nan_positions = torch.tensor(atoms.positions, dtype=torch.float32)
    nan_positions[0, 0] = float("nan")

    def fields(sid, **override):
        return is2re_fields(atoms, sid, 0, atoms, -100.0) | override

    records = [
        {key: value for key, value in fields(3589).items() if key != "tags"},
        fields(36509, pos_relaxed=torch.zeros((3, 3))),
        fields(3148, pos_relaxed=nan_positions),
        fields(3589) | {"sid": None},
        fields(4242),  # metadata entry without miller_index / traj_id
    ]
    write_shard(
        tmp_path / "split" / "data.0000.lmdb", [pyg1_pickle(r) for r in records], with_length=True
    )
    frames = frames_from_is2re(
        tmp_path / "split", metadata | {4242: {"nads": 0, "bulk_id": "mp-1"}}
    )
    assert frames.slabs == [] and frames.adslabs == []
    assert frames.skipped == {"malformed": 3, "nonfinite_array": 1, "bad_metadata": 1}
    assert frames.skipped_sids == {
        "malformed": [3589, 36509],
        "nonfinite_array": [3148],
        "bad_metadata": [4242],
    }


def test_frames_survive_an_extxyz_round_trip(dataset, metadata, tmp_path):
    root, _, _ = dataset
    frames = frames_from_is2re(root / "is2re" / "train", metadata)
    ase.io.write(tmp_path / "slabs.extxyz", frames.slabs)
    back = ase.io.read(tmp_path / "slabs.extxyz", ":")
    assert [atoms.info["slab_id"] for atoms in back] == ["oc22-3589", "oc22-36509", "oc22-3148"]
    np.testing.assert_array_equal(back[1].info["miller"], [1, 1, -1])
    np.testing.assert_array_equal(back[0].arrays["fixed"], frames.slabs[0].arrays["fixed"])


def test_test_split_has_no_targets_but_initial_frames(dataset, metadata):
    root, systems, _ = dataset
    frames = frames_from_is2re(root / "is2re" / "test_id", metadata)
    assert frames.slabs == [] and frames.adslabs == []
    assert frames.skipped == {"no_target": 2}
    assert frames.skipped_sids == {"no_target": [3589, 3148]}

    initial = frames_from_is2re(root / "is2re" / "test_id", metadata, relaxed=False)
    assert [atoms.info["sid"] for atoms in initial.slabs] == [3589, 3148] and not initial.skipped
    assert "ref_energy" not in initial.slabs[0].info
    np.testing.assert_allclose(
        initial.slabs[0].positions, systems[3589].initial.positions, atol=1e-5
    )


def test_s2ef_frames_carry_energy_forces_and_fid(dataset, metadata):
    root, _, trajectory = dataset
    frames = frames_from_s2ef(root / "s2ef" / "train", metadata)
    assert [atoms.info["fid"] for atoms in frames.slabs] == list(range(11))
    assert {atoms.info["slab_id"] for atoms in frames.slabs} == {"oc22-3589"}
    assert frames.skipped == {"no_target": 1} and frames.skipped_sids == {"no_target": [23315]}
    frame = frames.slabs[4]
    assert frame.info["ref_energy"] == pytest.approx(-140.4)
    np.testing.assert_allclose(frame.positions, trajectory[4].positions, atol=1e-5)
    np.testing.assert_array_equal(frame.arrays["ref_forces"], np.full((len(frame), 3), 4.0))


# --------------------------------------------------------------------------- other files


def test_read_metadata_normalises_string_sids(tmp_path):
    source = Path(__file__).parents[1] / "surfflows/data/references/oc22/metadata_excerpt.json"
    raw = json.loads(source.read_text())
    assert all(isinstance(key, str) for key in raw)
    path = tmp_path / "oc22_metadata.pkl"
    path.write_bytes(pickle.dumps(raw))
    metadata = read_metadata(path)
    assert sorted(metadata) == sorted(int(key) for key in raw)
    assert metadata[12032]["slab_sid"] == 3148 and metadata[3589]["nads"] == 0

    path.write_bytes(pickle.dumps({"7": {"nads": 0}, 7: {"nads": 1}}))
    with pytest.raises(ValueError, match="sid 7 appears twice"):
        read_metadata(path)


def test_packaged_linear_reference_energies_as_the_readme_says():
    """oc22_linfit_coeffs.npz: per-element energies by atomic number, garbage where unfitted."""
    with np.load(OC22_DATA / "oc22_linfit_coeffs.npz") as npz:
        coeff = np.asarray(npz["coeff"], dtype=float)
    assert coeff.shape == (100,)
    fitted = {
        chemical_symbols[z]: value
        for z, value in enumerate(coeff)
        if z > 0 and np.isfinite(value) and value != 0.0 and abs(value) <= 1e3
    }
    assert fitted["O"] == pytest.approx(-6.66, abs=0.01)
    assert fitted["Ti"] == pytest.approx(-11.80, abs=0.01)
    assert fitted["H"] == pytest.approx(-3.43, abs=0.01)
    # |x| up to 6e10 (He, B, F, Br, ...) and unfitted zeros (La) are not energies
    for symbol in ("He", "B", "F", "Br", "Kr", "La", "U"):
        assert symbol not in fitted
    assert np.nanmax(np.abs(coeff)) > 1e10


# --------------------------------------------------------------------------- download

PAYLOAD = bytes(range(256)) * 64
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
NAME = "oc22_metadata.pkl"


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with single-range ``Range: bytes=N-`` support."""

    server: _RangeServer

    def do_GET(self) -> None:
        body = self.server.files.get(self.path.lstrip("/"))
        requested = self.headers.get("Range")
        self.server.requests.append(requested)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if requested and self.server.honour_range:
            start = int(requested.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        # Counted before writing: the client may return as soon as the last byte arrives,
        # before this thread runs another line.
        self.server.bytes_sent += len(body) - start
        self.wfile.write(body[start:])

    def log_message(self, *args) -> None:
        """Keep the test output quiet."""


class _RangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, bytes] = {NAME: PAYLOAD}
        self.requests: list[str | None] = []
        self.bytes_sent = 0
        self.honour_range = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1, shut down after the test."""
    httpd = _RangeServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _download(server: _RangeServer, dest: Path, md5: str = PAYLOAD_MD5, **kwargs) -> list[Path]:
    return download(
        [NAME], dest, base_url=server.url, checksums={NAME: md5}, progress=False, **kwargs
    )


def test_download_fetches_verifies_and_skips_a_good_file(server, tmp_path):
    assert _download(server, tmp_path) == [tmp_path / NAME]
    assert (tmp_path / NAME).read_bytes() == PAYLOAD
    assert not (tmp_path / f"{NAME}.part").exists()
    assert server.requests == [None]

    _download(server, tmp_path)
    assert server.requests == [None]  # right md5 on disk: nothing fetched

    (tmp_path / NAME).write_bytes(b"damaged")
    _download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == PAYLOAD
    assert server.requests == [None, None]


@pytest.mark.parametrize("have", [1000, len(PAYLOAD)])
def test_download_resumes_a_partial_file(server, tmp_path, have):
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:have])
    _download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={have}-"]
    assert server.bytes_sent == len(PAYLOAD) - have
    assert not (tmp_path / f"{NAME}.part").exists()


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.honour_range = False
    (tmp_path / f"{NAME}.part").write_bytes(b"stale bytes from another file")
    _download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == PAYLOAD
    assert server.bytes_sent == len(PAYLOAD)


def test_download_md5_mismatch_deletes_the_file_and_a_rerun_repairs(server, tmp_path):
    wrong = "0" * 32
    with pytest.raises(ValueError, match=f"{NAME}.*expected {wrong}, got {PAYLOAD_MD5}"):
        _download(server, tmp_path, md5=wrong)
    assert list(tmp_path.iterdir()) == []
    _download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == PAYLOAD


def test_download_needs_a_known_md5(server, tmp_path):
    with pytest.raises(ValueError, match=r"no md5 known for 'unknown\.bin'"):
        download(["unknown.bin"], tmp_path, base_url=server.url, progress=False)
    assert server.requests == []
    assert OC22_FILES[NAME].md5 == "13dc06c6510346d8a7f614d5b26c8ffa"
    assert OC22_FILES[NAME].url.endswith("/opencatalystproject/data/oc22/oc22_metadata.pkl")


def _tarball(member: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_download_extracts_tarballs_with_the_safe_filter(server, tmp_path):
    name = "is2res_total_train_val_test_lmdbs.tar.gz"
    dest = tmp_path / "dest"
    server.files[name] = _tarball("data/oc22/is2re-total/train/data.0000.lmdb", b"shard")
    md5 = hashlib.md5(server.files[name]).hexdigest()
    download([name], dest, base_url=server.url, checksums={name: md5}, progress=False, extract=True)
    assert (dest / "data/oc22/is2re-total/train/data.0000.lmdb").read_bytes() == b"shard"

    server.files[name] = _tarball("../escaped.txt", b"evil")
    md5 = hashlib.md5(server.files[name]).hexdigest()
    with pytest.raises(tarfile.OutsideDestinationError):
        download(
            [name], dest, base_url=server.url, checksums={name: md5}, progress=False, extract=True
        )
    assert not (tmp_path / "escaped.txt").exists()
