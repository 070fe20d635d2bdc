"""Fine-tune the last X units of CHGNet on surface reference data.

One module per part: :mod:`~.depth` (stages, units, freezing), :mod:`~.data` (samples from
reference documents), :mod:`~.heads` (readout heads, AtomRef fit), :mod:`~.batches`
(fixed batches, forward passes), :mod:`~.replay`, :mod:`~.objective` (loss, one pass),
:mod:`~.selection` (epoch records, relaxed-mode selection), :mod:`~.checkpoints` (work
folder files) and :mod:`~.loop` (:func:`finetune`). Every name is importable from this package.

Depth X (the design notes' "Fine-tuning depth X")
----------------------------------------------------
CHGNet's energy path in forward order is ``embedding -> block 0 -> ... -> block n-2 ->
atom_conv n-1 -> readout``, a block being ``[atom_conv i, bond_conv i, angle i]``.
X counts units from the readout backwards (:func:`depth_units`):

====  =====================================================================================
X     modules fitted (CHGNet 0.3.0: n_conv = 4)
====  =====================================================================================
0     ``composition_model`` (AtomRef, per-element reference energies) only
1     + ``readout_norm``, ``mlp``
2     + ``atom_conv_layers.3``
3     + ``atom_conv_layers.2``, ``bond_conv_layers.2``, ``angle_layers.2``
4, 5  + block 1, + block 0
6     + embeddings (``atom_embedding``, bond and angle bases and embeddings, bond weights)
====  =====================================================================================

``site_wise`` (the magnetic-moment head) is never trained: no magmom labels. In unit 3
``angle_layers.2`` is fitted in name only, since CHGNet's energy does not read the angle
features after the last block.

Objective
---------
1. Per-element reference energies are fitted first (linear least squares, chgnet's
   :meth:`AtomRef.fit`) to the residual ``E_DFT - E_parent`` per atom of the training
   structures and added to the parent's AtomRef, so a data set's energy scale (JARVIS
   OptB88vdW versus CHGNet's MP2020-corrected PBE) is not learned by the network. AtomRef
   is then frozen.
2. The X units are trained with Adam(W) and a cosine learning-rate decay on
   ``energy_weight * L(E/N) + gamma_weight * L(gamma) [+ force_weight * L(F)]
   [+ anchor_weight * |theta - theta_parent|^2]`` where
   ``L`` is MSE, Huber or L1, ``E/N`` the energy per atom of slabs and bulks (eV/atom) and
   ``gamma = (E_slab - (N_slab / N_bulk) E_bulk) / 2A`` (J/m²) of each training slab with
   its bulk in the same batch. gamma is invariant to per-element offsets for stoichiometric
   slabs, so that term targets exactly what is evaluated. The last term (L2-SP, Li, Grandvalet
   and Davoine, ICML 2018) pulls the trainable weights towards the parent's, against
   forgetting what the parent knew about bulks.
3. After every epoch the validation gamma MAE (val slabs with their bulks) is measured; the
   epoch with the lowest one is kept (epoch 0 is the model before any gradient step), and
   training stops after ``patience`` epochs without improvement.

Relaxed-mode selection (``selection="relaxed"``)
-------------------------------------------------
Users relax slabs with the model, so the epoch can be selected on relaxed-mode validation
gamma instead: after every epoch, and at epoch 0 so the parent stays a candidate, a fixed
subset of ``selection_slabs`` val slabs (:func:`selection_pairs`, drawn once with the
seed, spread over the sets) and their bulks have their ions relaxed by the model being
trained in their DFT cells, as the evaluation's relaxed mode does (:func:`relaxed_gamma`;
each slab with its set's head). The epoch with the lowest relaxed gamma MAE
(:func:`selection_key`; several sets: the mean over sets) is kept and patience counts on
it. The single-point figures are still recorded. A failed or unconverged relaxation
leaves its slab out of that epoch's MAE and is counted (``val_relaxed_failures``). The
selection has its own random generator, so training itself (batches, order, weights) is
the same as with single-point selection.

Compute
-------
CrystalGraphs and batches are made once. Without forces, the frozen stages do not change,
so their output is computed once per batch and only the X trainable stages run each step
(:func:`run_stages` replays ``CHGNet._compute``'s energy path stage by stage; a test checks
it against ``CHGNet.forward``). X = all needs the full forward pass every step. Forces
(``force_weight > 0``) need it too: energies and gamma still come from the cached path for
every structure, and a random ``force_fraction`` of each batch's force-labelled structures
runs ``CHGNet.forward`` with forces (and stress for replay structures), which sets the cost.

Replay (``replay_weight > 0``)
------------------------------
The training bulks and rattled / strained copies of them (:func:`replay_structures`, a
pool of ``replay_pool_size``; never a validation or test material) are labelled by the
frozen parent (:func:`replay_data`: energy, forces, stress) and spread over every batch
(:func:`with_replay`). Their energy labels get the fitted per-element shift, so replay
pulls towards the parent's physics at the training set's energy scale. They enter the
loss as ``replay_weight * (L(E/N) + force_weight * L(F) + stress_weight * L(S))``, forces
and stress only through the force subset.

With ``replay_bulks`` (the train parts of ``settings.replay_sets``, e.g. ``wbm_bulks`` and
``mp_elemental_refs``), the pool's bulks are drawn at random from the training bulks and
those; the copies follow as before. Replay runs through the default head and gets that
head's per-element shift.

Several sets, one head per level of theory (``heads``)
------------------------------------------------------
``train`` and ``val`` may hold several sets (:func:`merge_data`; each set's train and val
parts). Every batch is one set's (:func:`make_batches`). With two heads or more (one per
level of theory, named by :func:`surfflows.core.heads.head_name`: ``pbe``, ``optb88vdw``,
``pbe+u``), the backbone (the trainable units below the readout) is shared and each head
has its own readout (``readout_norm``, ``mlp``) and AtomRef (``composition_model``),
fitted by the least-squares step above on the head's own training structures. A batch
runs through its set's head (:func:`forward_batch` runs the backbone once and each head's
readout on its structures). The epoch kept is the one with the lowest mean, over the sets
with validation gamma pairs, of each set's validation gamma MAE (one set: its validation
gamma MAE, as before). The default head is ``pbe`` if present, else the first set's
(:func:`surfflows.core.heads.default_head`). ``best.pth.tar`` then holds the model with
its default head under ``model`` (``CHGNet.from_file`` loads it) and, under ``heads``,
every head's readout and AtomRef state with its level of theory and sets, and
``default_head``; :func:`surfflows.engine.models.load_model` swaps in the head a model
spec names (``chgnet-ft-<sha12>@<head>``). With one set or one level of theory there is
one head and the checkpoint is the same as a single-set one.

Batches are fixed groups of materials (a bulk with its slabs), formed once with the seed;
their order is reshuffled every epoch. ``last.pth.tar`` in the work folder holds model,
optimizer, random state and history after every epoch, so a run resumes where
it stopped; ``best.pth.tar`` holds the selected model and loads with ``CHGNet.from_file``.
"""

from __future__ import annotations

from surfflows.engine.finetune.batches import (
    Batch,
    build_batch,
    force_mae,
    force_subset,
    forward_batch,
    gamma_j_per_m2,
    make_batches,
    material_groups,
    predict_batches,
    predict_forces,
    predict_rows,
    set_composition_energies,
)
from surfflows.engine.finetune.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    RESUME_IGNORED,
    saved_run,
    write_best_checkpoint,
)
from surfflows.engine.finetune.data import (
    ReferenceData,
    Sample,
    SurfacePair,
    merge_data,
    reference_data,
)
from surfflows.engine.finetune.depth import (
    EMBEDDING_MODULES,
    READOUT_MODULES,
    FreezeInfo,
    cache_cut,
    depth_units,
    freeze_to_depth,
    max_depth,
    network_stages,
    parameter_modules,
    run_stages,
)
from surfflows.engine.finetune.heads import (
    HEAD_MODULES,
    Head,
    TrainingHeads,
    fit_atomref_shift,
    fit_head_shifts,
    head_modules,
    head_of_sets,
    predict_energies,
    training_heads,
    use_head,
)
from surfflows.engine.finetune.loop import FineTuneResult, finetune
from surfflows.engine.finetune.objective import (
    EpochErrors,
    Objective,
    cosine_lr,
    make_optimizer,
    run_epoch,
)
from surfflows.engine.finetune.replay import (
    add_replay,
    replay_data,
    replay_structures,
    shift_replay_labels,
    with_replay,
)
from surfflows.engine.finetune.selection import (
    epoch_record,
    relaxed_gamma,
    selection_key,
    selection_pairs,
)

#: Names these objects had before the engine became a package (imported by older code).
_Objective = Objective
_parameter_modules = parameter_modules

__all__ = [
    "BEST_CHECKPOINT",
    "EMBEDDING_MODULES",
    "HEAD_MODULES",
    "LAST_CHECKPOINT",
    "READOUT_MODULES",
    "RESUME_IGNORED",
    "Batch",
    "EpochErrors",
    "FineTuneResult",
    "FreezeInfo",
    "Head",
    "Objective",
    "ReferenceData",
    "Sample",
    "SurfacePair",
    "TrainingHeads",
    "add_replay",
    "build_batch",
    "cache_cut",
    "cosine_lr",
    "depth_units",
    "epoch_record",
    "finetune",
    "fit_atomref_shift",
    "fit_head_shifts",
    "force_mae",
    "force_subset",
    "forward_batch",
    "freeze_to_depth",
    "gamma_j_per_m2",
    "head_modules",
    "head_of_sets",
    "make_batches",
    "make_optimizer",
    "material_groups",
    "max_depth",
    "merge_data",
    "network_stages",
    "parameter_modules",
    "predict_batches",
    "predict_energies",
    "predict_forces",
    "predict_rows",
    "reference_data",
    "relaxed_gamma",
    "replay_data",
    "replay_structures",
    "run_epoch",
    "run_stages",
    "saved_run",
    "selection_key",
    "selection_pairs",
    "set_composition_energies",
    "shift_replay_labels",
    "training_heads",
    "use_head",
    "with_replay",
    "write_best_checkpoint",
]
