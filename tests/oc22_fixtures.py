"""Build OC22 fixtures in the published format (``surfflows/data/references/oc22/README.md``).

LMDB shards hold ``pickle.dumps(data, protocol=-1)`` of ``torch_geometric.data.data.Data``
objects whose fields are torch tensors. The ``torch_geometric`` classes come from throwaway
modules registered in :data:`sys.modules` only while pickling, so reading the shards proves
that the reader does not need ``torch_geometric``. Structures are small rutile TiO2 slabs;
metadata reuses the sids and ids of ``metadata_excerpt.json``.
"""

from __future__ import annotations

import json
import pickle
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from ase import Atoms
from pymatgen.core import Lattice, Structure
from pymatgen.core.surface import SlabGenerator
from pymatgen.io.ase import AseAtomsAdaptor

_PYG_MODULES = (
    "torch_geometric",
    "torch_geometric.data",
    "torch_geometric.data.data",
    "torch_geometric.data.storage",
)
# PyG 1.x Data defaults that OC22 records carry as None.
_PYG1_DEFAULTS = {"x": None, "edge_attr": None, "normal": None, "face": None}


def metadata_excerpt() -> dict[int, dict[str, Any]]:
    """The 8 real metadata entries of ``metadata_excerpt.json``, keyed by int sid."""
    source = resources.files("surfflows").joinpath("data/references/oc22/metadata_excerpt.json")
    raw = json.loads(source.read_text())
    return {
        int(sid): {**entry, "miller_index": tuple(entry["miller_index"])}
        for sid, entry in raw.items()
    }


def rutile_slab(miller: Sequence[int]) -> Atoms:
    """A small rutile TiO2 slab with OC22-style tags (1 = top layer) and a fixed bottom half."""
    u = 0.305
    bulk = Structure(
        Lattice.tetragonal(4.594, 2.959),
        ["Ti", "Ti", "O", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [u, u, 0], [1 - u, 1 - u, 0], [0.5 + u, 0.5 - u, 0.5],
         [0.5 - u, 0.5 + u, 0.5]],
    )  # fmt: skip
    slab = SlabGenerator(
        bulk, miller, min_slab_size=5, min_vacuum_size=10, center_slab=True, reorient_lattice=True
    ).get_slabs()[0]
    atoms = AseAtomsAdaptor.get_atoms(slab)
    atoms.info = {}
    z = atoms.positions[:, 2]
    atoms.set_tags((z > z.max() - 1.0).astype(int))
    atoms.new_array("fixed", z < np.median(z))
    return atoms


def with_adsorbate(slab: Atoms, adsorbate: str) -> Atoms:
    """``slab`` with the atoms of ``adsorbate`` (e.g. ``"CO"``) stacked above its top atom."""
    adslab = slab.copy()
    top = adslab.positions[np.argmax(adslab.positions[:, 2])]
    for height, symbol in enumerate(Atoms(adsorbate).get_chemical_symbols(), start=2):
        adslab.append(symbol)
        adslab.positions[-1] = top + np.array([0.0, 0.0, 1.15 * height])
    adslab.arrays["tags"][len(slab) :] = 2
    return adslab


def relaxed(atoms: Atoms, seed: int) -> Atoms:
    """A copy with the free atoms displaced a little, standing in for the DFT-relaxed geometry."""
    moved = atoms.copy()
    free = ~moved.arrays["fixed"]
    moved.positions[free] += np.random.default_rng(seed).normal(0.0, 0.05, (free.sum(), 3))
    return moved


def structure_fields(atoms: Atoms, sid: int, nads: int) -> dict[str, Any]:
    """The fields both record kinds share, with the published dtypes."""
    return {
        "pos": torch.tensor(atoms.positions, dtype=torch.float32),
        "cell": torch.tensor(np.asarray(atoms.cell)[None], dtype=torch.float32),
        "atomic_numbers": torch.tensor(atoms.numbers, dtype=torch.float32),
        "natoms": len(atoms),
        "nads": nads,
        "oc22": 1,
        "tags": torch.tensor(atoms.get_tags(), dtype=torch.int64),
        "fixed": torch.tensor(atoms.arrays["fixed"], dtype=torch.float32),
        "sid": sid,
    }


def is2re_fields(
    initial: Atoms, sid: int, nads: int, final: Atoms | None = None, energy: float | None = None
) -> dict[str, Any]:
    """IS2RE-total record fields; without ``final`` it is a test-split record (no targets)."""
    fields = structure_fields(initial, sid, nads)
    if final is not None:
        fields["pos_relaxed"] = torch.tensor(final.positions, dtype=torch.float32)
        fields["y_relaxed"] = energy
    return fields


def s2ef_fields(
    atoms: Atoms, sid: int, nads: int, fid: int, energy: float | None, forces: np.ndarray | None
) -> dict[str, Any]:
    """S2EF-total record fields; ``energy`` / ``forces`` None leave the targets out."""
    fields = structure_fields(atoms, sid, nads)
    fields["fid"] = torch.tensor([fid])
    if energy is not None:
        fields["y"] = energy
    if forces is not None:
        fields["force"] = torch.tensor(forces, dtype=torch.float32)
    return fields


@contextmanager
def fake_torch_geometric() -> Iterator[tuple[type, type]]:
    """Register throwaway ``torch_geometric`` modules; yield ``Data`` and ``GlobalStorage``.

    A real torch_geometric imported already (sevenn imports it) is set aside meanwhile and
    put back after.
    """
    real = {
        name: module
        for name, module in sys.modules.items()
        if name == "torch_geometric" or name.startswith("torch_geometric.")
    }
    for name in real:
        del sys.modules[name]
    modules = {name: types.ModuleType(name) for name in _PYG_MODULES}
    data_cls = type("Data", (), {"__module__": "torch_geometric.data.data"})
    storage_cls = type("GlobalStorage", (), {"__module__": "torch_geometric.data.storage"})
    modules["torch_geometric.data.data"].Data = data_cls
    modules["torch_geometric.data.storage"].GlobalStorage = storage_cls
    sys.modules.update(modules)
    try:
        yield data_cls, storage_cls
    finally:
        for name in _PYG_MODULES:
            del sys.modules[name]
        sys.modules.update(real)


def pyg1_pickle(fields: Mapping[str, Any]) -> bytes:
    """A PyG 1.x ``Data`` pickle: fields in the object's ``__dict__``."""
    with fake_torch_geometric() as (data_cls, _):
        data = data_cls()
        data.__dict__.update({**_PYG1_DEFAULTS, **fields})
        return pickle.dumps(data, protocol=-1)


def pyg2_pickle(fields: Mapping[str, Any]) -> bytes:
    """A PyG 2.x ``Data`` pickle: fields in ``_store._mapping``, the store linked to its parent."""
    with fake_torch_geometric() as (data_cls, storage_cls):
        data = data_cls()
        store = storage_cls()
        store.__dict__.update({"_mapping": dict(fields), "_parent": data})
        data.__dict__["_store"] = store
        return pickle.dumps(data, protocol=-1)


def write_shard(path: Path, values: Sequence[bytes], *, with_length: bool) -> Path:
    """Write ``values`` under keys ``b"0"``..``b"n-1"`` (and ``b"length"`` if asked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, meminit=False)
    with env, env.begin(write=True) as txn:
        for index, value in enumerate(values):
            txn.put(str(index).encode("ascii"), value)
        if with_length:
            txn.put(b"length", pickle.dumps(len(values), protocol=-1))
    return path
