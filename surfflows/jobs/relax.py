"""Relaxation Makers: a bulk with a free cell, and batches of slabs with fixed cells.

Every Maker loads its model once per process (see :func:`surfflows.engine.models.preload`);
a slab Maker relaxes a whole list of slabs in one job, so a jobflow-remote worker gets
a few large jobs rather than thousands of tiny ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobflow import Maker, job
from pymatgen.core import Structure

from surfflows.core.slabs import SlabCandidate
from surfflows.core.validation import check_elements
from surfflows.engine.calculators import relax_fixed_cell
from surfflows.engine.models import preload
from surfflows.engine.relax import DEFAULT_OPTIMIZER, Optimizer, relax_one
from surfflows.io.registry import decode_checkpoint
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.relax import BulkRelaxDoc, SlabRelaxDoc


@dataclass
class BulkRelaxMaker(Maker):
    """Relax a bulk structure (positions and cell) with the model and FIRE.

    Parameters
    ----------
    name
        Job name.
    model
        The model (CHGNet or any ASE calculator).
    fmax
        Force criterion, eV/Å.
    max_steps
        Step limit; a run that reaches it is recorded as not converged.
    """

    name: str = "bulk relax"
    model: ModelSpec = field(default_factory=ModelSpec)
    fmax: float = 0.05
    max_steps: int = 500

    @job(output_schema=BulkRelaxDoc, data=[Structure])
    def make(
        self, structure: Structure, material_id: str, checkpoint: str | None = None
    ) -> BulkRelaxDoc:
        """Relax ``structure``; the document names ``material_id`` and the model.

        ``checkpoint``: the model's checkpoint (base64) if it is fine-tuned.
        """
        check_elements(structure, f"bulk {material_id}")
        preload(self.model, decode_checkpoint(checkpoint))
        result = relax_one(
            structure, self.model, relax_cell=True, fmax=self.fmax, max_steps=self.max_steps
        )
        return BulkRelaxDoc.from_result(result, self.model, self.fmax, material_id)


@dataclass
class SlabRelaxMaker(Maker):
    """Relax a list of slabs (fixed cell, fixed atoms respected) in one job.

    Parameters
    ----------
    name
        Job name.
    model
        The model (CHGNet or any ASE calculator).
    fmax
        Force criterion, eV/Å.
    max_steps
        Step limit per slab.
    optimizer
        Batched optimizer, ``"lbfgs"`` (default, fewer force evaluations) or ``"fire"``.
    """

    name: str = "slab relax"
    model: ModelSpec = field(default_factory=ModelSpec)
    fmax: float = 0.05
    max_steps: int = 500
    optimizer: Optimizer = DEFAULT_OPTIMIZER

    @job(data=[Structure])
    def make(
        self, slabs: list[SlabCandidate], material_id: str, checkpoint: str | None = None
    ) -> list[SlabRelaxDoc]:
        """Relax every slab; one :class:`SlabRelaxDoc` per input, failures included.

        ``checkpoint``: the model's checkpoint (base64) if it is fine-tuned.
        """
        preload(self.model, decode_checkpoint(checkpoint))
        results = relax_fixed_cell(
            [s.structure for s in slabs],
            self.model,
            fmax=self.fmax,
            max_steps=self.max_steps,
            optimizer=self.optimizer,
        )
        return [
            SlabRelaxDoc.from_result(result, self.model, self.fmax, material_id, slab)
            for result, slab in zip(results, slabs, strict=True)
        ]
