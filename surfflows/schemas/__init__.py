"""Pydantic documents of surface campaigns, one module per domain.

Each document names the model that made it (``model_id``: ``chgnet-0.3.0`` or
``chgnet-ft-<sha12>``) and carries the slab metadata (Miller index, shift,
termination, fixed atoms) itself, since relaxed structures lose it. Documents import
:mod:`surfflows.core` only, never torch.
"""
