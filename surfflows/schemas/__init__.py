"""Pydantic documents of surface campaigns, one module per domain.

Each document names the model that made it (a :class:`~surfflows.schemas.models.ModelSpec`;
``model_id`` ``chgnet-0.3.0``, ``chgnet-ft-<sha12>``, ``sevennet-0``, ...) and carries the
slab metadata (Miller index, shift, termination, fixed atoms) itself, since relaxed
structures lose it. Documents import :mod:`surfflows.core` only, never torch.
"""
