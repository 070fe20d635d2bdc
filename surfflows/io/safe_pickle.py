"""A restricted unpickler for OC22 files: only the classes the published records need.

OC22's LMDB values are pickled PyG ``Data`` objects holding torch tensors, and
``oc22_metadata.pkl`` is a dict of plain values. Plain :mod:`pickle` would call any
function a crafted file names; :class:`RestrictedUnpickler` resolves only

- ``torch_geometric.data.*`` classes, to the inert :class:`PygStub` (PyG is not needed);
- torch tensors (``torch._utils._rebuild_tensor*``), whose storages are read with
  ``torch.load(weights_only=True)`` instead of torch's own unrestricted loader;
- numpy arrays, dtypes and scalars, and ``collections.OrderedDict``;

and refuses every other global with :class:`pickle.UnpicklingError`.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO


class PygStub:
    """Stand-in for every ``torch_geometric`` class; unpickling fills its ``__dict__``."""


def _load_storage(data: bytes) -> Any:
    """A pickled torch storage, read without running code (``weights_only=True``)."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed() -> dict[tuple[str, str], Any]:
    import collections

    import numpy as np
    import torch._utils

    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _load_storage,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    for module in ("numpy.core", "numpy._core"):  # files written under either numpy
        allowed[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler of OC22 records and metadata; any other class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch_geometric."):
            return PygStub
        try:
            return _allowed()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: OC22 files hold only PyG data, numpy and "
                "torch tensors"
            ) from None


def restricted_load(handle: BinaryIO) -> Any:
    """Unpickle ``handle`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(handle).load()


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return restricted_load(io.BytesIO(data))
