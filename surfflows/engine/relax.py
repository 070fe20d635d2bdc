"""Relaxations with a CHGNet model.

Two paths share one result type, :class:`RelaxResult`:

* :func:`relax_one` relaxes one structure with ASE's FIRE through the CHGNet ASE
  calculator; with ``relax_cell=True`` the cell relaxes too (FrechetCellFilter). Bulk
  relaxations use it.
* :func:`relax_structures` relaxes many fixed-cell structures (slabs) together: one CHGNet
  forward pass gives the energies and forces of a whole batch (graphs built by
  :func:`surfflows.engine.graphs.crystal_graph`), and a batched optimizer moves each structure:
  L-BFGS that repeats ``ase.optimize.LBFGS`` step for step (the default: about half the
  force evaluations of FIRE on slabs, see ``benchmarks/relax_throughput.py``), or FIRE that
  repeats ``ase.optimize.FIRE``. A structure leaves the batch when it converges, fails or
  runs out of steps, and a waiting one takes its place; a failure of one structure is
  recorded on its result and the others go on.

Fixed atoms come from the ``selective_dynamics`` site property (pymatgen / VASP
convention: ``[False, False, False]`` = fixed): an atom with all three flags False is
held by ``FixAtoms``. Site properties of the input are carried to the output structure.
"""

from __future__ import annotations

import math
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE, LBFGS
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm.auto import tqdm

from surfflows.core.slabs import fixed_mask
from surfflows.engine.graphs import crystal_graph
from surfflows.engine.models import get_calculator, load_model
from surfflows.schemas.models import ModelSpec

if TYPE_CHECKING:
    from chgnet.graph import CrystalGraph
    from chgnet.model import CHGNet

#: Optimizers of both paths: ``ase.optimize.LBFGS`` and ``ase.optimize.FIRE``, ASE defaults.
Optimizer = Literal["lbfgs", "fire"]
OPTIMIZERS: tuple[Optimizer, ...] = ("lbfgs", "fire")
#: Optimizer of :func:`relax_structures` unless told otherwise (measured: fewer evaluations).
DEFAULT_OPTIMIZER: Optimizer = "lbfgs"


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")


@dataclass
class RelaxResult:
    """Outcome of one relaxation.

    Attributes
    ----------
    structure
        Final structure (the input's site properties kept); the input if the run failed early.
    energy
        Final total energy, eV (NaN if the run failed).
    initial_energy
        Total energy of the input geometry, eV (NaN if not reached).
    max_force
        Largest force norm on a free atom at the end, eV/Å.
    n_steps
        Optimizer steps taken.
    converged
        Whether ``max_force <= fmax`` (and the stress criterion for cell relaxations) was met
        within ``max_steps``.
    error
        Traceback summary if the relaxation raised; None otherwise.
    """

    structure: Structure
    energy: float = math.nan
    initial_energy: float = math.nan
    max_force: float = math.nan
    n_steps: int = 0
    converged: bool = False
    error: str | None = None
    energies: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Converged and without error: fit to enter a surface energy."""
        return self.converged and self.error is None and math.isfinite(self.energy)


#: Atoms closer than this (Å) are taken as a broken structure, not relaxed.
MIN_DISTANCE = 0.5


def check_geometry(structure: Structure) -> None:
    """Raise ValueError for a structure no relaxation should start from.

    Empty structures, non-finite coordinates and atoms closer than :data:`MIN_DISTANCE`
    (periodic images included) are rejected, naming the atoms.
    """
    if len(structure) == 0:
        raise ValueError("structure has no atoms")
    if not np.isfinite(structure.cart_coords).all():
        raise ValueError("structure has non-finite atomic coordinates")
    if len(structure) > 1:
        distances = structure.distance_matrix + np.eye(len(structure)) * 1e3
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        if distances[i, j] < MIN_DISTANCE:
            raise ValueError(f"atoms {i} and {j} are {distances[i, j]:.2f} Å apart")


def _error_message(exc: Exception) -> str:
    """What a failed relaxation records: the exception and the end of its traceback."""
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"


def _to_atoms(structure: Structure):
    atoms = AseAtomsAdaptor.get_atoms(structure.copy(site_properties={}))
    mask = fixed_mask(structure)
    atoms.set_constraint(FixAtoms(mask=mask) if mask.any() else None)
    return atoms


def _final_structure(atoms, template: Structure) -> Structure:
    final = AseAtomsAdaptor.get_structure(atoms)
    return Structure(
        final.lattice,
        final.species,
        final.cart_coords,
        coords_are_cartesian=True,
        site_properties=template.site_properties,
    )


def relax_one(
    structure: Structure,
    model: ModelSpec,
    *,
    relax_cell: bool = False,
    fmax: float = 0.05,
    max_steps: int = 500,
    optimizer: Optimizer = "fire",
) -> RelaxResult:
    """Relax one structure with an ASE optimizer; never raises for a failed relaxation.

    Parameters
    ----------
    structure
        Input structure (``selective_dynamics`` marks fixed atoms).
    model
        CHGNet model, loaded once per process.
    relax_cell
        Relax the cell too (bulk). Slabs keep their cell.
    fmax
        Force criterion, eV/Å (for cell relaxations also applied to the filter's stress term).
    max_steps
        Step limit; a run that hits it is recorded as not converged.
    optimizer
        ``"fire"`` (``ase.optimize.FIRE``, bulk relaxations use it) or ``"lbfgs"``
        (``ase.optimize.LBFGS``), with ASE's default parameters.
    """
    _check_optimizer(optimizer)
    result = RelaxResult(structure=structure)
    try:
        check_geometry(structure)
        atoms = _to_atoms(structure)
        atoms.calc = get_calculator(model)
        result.initial_energy = float(atoms.get_potential_energy())
        target = FrechetCellFilter(atoms) if relax_cell else atoms
        dynamics = (
            LBFGS(target, logfile=None, **asdict(_LBFGS))
            if optimizer == "lbfgs"
            else FIRE(target, logfile=None)
        )
        dynamics.attach(lambda: result.energies.append(float(atoms.get_potential_energy())))
        result.converged = bool(dynamics.run(fmax=fmax, steps=max_steps))
        result.n_steps = dynamics.nsteps
        result.energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces()  # constrained forces: zero on fixed atoms
        result.max_force = float(np.linalg.norm(forces, axis=1).max())
        result.structure = _final_structure(atoms, structure)
        if not math.isfinite(result.energy):
            result.converged = False
            result.error = "non-finite energy"
    except Exception as exc:  # a failed relaxation is a record, not a crash
        result.converged = False
        result.error = _error_message(exc)
    return result


@dataclass
class RelaxTimings:
    """Where the wall time of a :func:`relax_structures` call went (pass one to fill it).

    Attributes
    ----------
    graphs
        Building CHGNet crystal graphs from the current geometries, s.
    forward
        CHGNet forward passes (energies and forces, autograd included), s.
    optimizer
        Optimizer steps and bookkeeping, s.
    n_forward
        Completed forward passes (one per batch step; one per structure where a failing
        batch was split).
    n_evaluations
        Energy-and-force evaluations of single structures.
    """

    graphs: float = 0.0
    forward: float = 0.0
    optimizer: float = 0.0
    n_forward: int = 0
    n_evaluations: int = 0


@dataclass(frozen=True)
class _FireParameters:
    """FIRE settings (Bitzek et al., PRL 97, 170201 (2006)); defaults of ASE 3.29's FIRE.

    ``maxstep`` caps the norm of a structure's whole displacement vector per step (all its
    atoms together), as ``ase.optimize.FIRE`` does; ``n_min`` is ASE's ``Nmin``.
    """

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


_FIRE = _FireParameters()


@dataclass(frozen=True)
class _LBFGSParameters:
    """L-BFGS settings of ``ase.optimize.LBFGS`` (ASE 3.29); ASE's defaults but ``alpha``.

    ``maxstep`` caps the largest displacement of one atom per step (the whole step is scaled
    down, keeping its direction); ``alpha`` is the curvature (eV/Å²) of the initial Hessian
    guess ``alpha * I``; ``memory`` steps of history are kept; ``damping`` scales every step.
    ASE's ``alpha = 70`` is conservative for CHGNet slabs: on 8 benchmark slabs (Cu, Pt, MgO,
    TiO2; 24-72 atoms, fmax 0.05 eV/Å) the mean force evaluations per slab were 21.9 at
    alpha 70, 16.0 at 35, 13.4 at 20, 12.6 at 15 and 14.3 at 10 (one TiO2 slab needing 43),
    against 41.6 for FIRE, with the same final energies; 20 keeps a margin from the
    unstable side.
    """

    maxstep: float = 0.2
    alpha: float = 20.0
    memory: int = 100
    damping: float = 1.0


_LBFGS = _LBFGSParameters()


@dataclass
class _FireState:
    """FIRE state of one structure."""

    velocity: np.ndarray | None = None  # None until the first FIRE step, as in ASE
    dt: float = _FIRE.dt
    a: float = _FIRE.astart
    n_downhill: int = 0  # ASE's ``Nsteps``: steps since the last uphill reset


@dataclass
class _LBFGSState:
    """L-BFGS state of one structure: the last ``memory`` position and gradient changes."""

    s: deque = field(default_factory=lambda: deque(maxlen=_LBFGS.memory))
    y: deque = field(default_factory=lambda: deque(maxlen=_LBFGS.memory))
    rho: deque = field(default_factory=lambda: deque(maxlen=_LBFGS.memory))
    positions: np.ndarray | None = None  # flattened positions before the last step
    forces: np.ndarray | None = None  # flattened forces there


#: Energy (eV) and forces (eV/Å) of one structure, or why they could not be computed.
_Evaluation = tuple[float, np.ndarray] | str


@dataclass
class _Relaxation:
    """One structure in the batched engine: geometry, optimizer state and the result it fills."""

    result: RelaxResult
    lattice: Lattice
    species: list
    positions: np.ndarray  # Cartesian, Å, (n_atoms, 3)
    free: np.ndarray  # (n_atoms,) False for atoms fixed by selective_dynamics
    state: _FireState | _LBFGSState
    forces: np.ndarray | None = None  # constrained forces at ``positions``, eV/Å

    @classmethod
    def start(cls, structure: Structure, result: RelaxResult, optimizer: Optimizer) -> _Relaxation:
        """Set up the relaxation of ``structure``; ValueError for an unusable input."""
        check_geometry(structure)
        positions = np.array(structure.cart_coords, dtype=float).reshape(-1, 3)
        state = _LBFGSState() if optimizer == "lbfgs" else _FireState()
        return cls(
            result, structure.lattice, structure.species, positions, ~fixed_mask(structure), state
        )

    def structure(self, site_properties: dict | None = None) -> Structure:
        """The current geometry as a structure, with ``site_properties`` if given."""
        return Structure(
            self.lattice,
            self.species,
            self.positions,
            coords_are_cartesian=True,
            site_properties=site_properties,
        )

    def fail(self, message: str) -> bool:
        """Record a failure; the relaxation is finished."""
        self.result.converged = False
        self.result.error = message
        return True

    def record(self, evaluation: _Evaluation, fmax: float, max_steps: int) -> bool:
        """Record the evaluation at the current positions; True if the relaxation is finished.

        As in ``ase.optimize.Optimizer.irun``: converged when the largest force on a free atom
        is below ``fmax``, stopped (not converged) once ``max_steps`` steps are taken.
        """
        result = self.result
        if isinstance(evaluation, str):
            return self.fail(evaluation)
        energy, forces = evaluation
        if not (math.isfinite(energy) and np.isfinite(forces).all()):
            return self.fail(f"non-finite energy or forces after {result.n_steps} steps")
        self.forces = np.where(self.free[:, None], forces, 0.0)  # what FixAtoms does
        if result.n_steps == 0:
            result.initial_energy = energy
        result.energies.append(energy)
        result.max_force = float(np.linalg.norm(self.forces, axis=1).max())
        result.converged = result.max_force < fmax
        if not result.converged and result.n_steps < max_steps:
            return False
        result.energy = energy
        result.structure = self.structure(result.structure.site_properties)
        return True


def _fire_step(runs: Sequence[_Relaxation]) -> None:
    """Move every run by one FIRE step: ``ase.optimize.FIRE.step`` vectorised over the batch.

    The atoms of all runs are stacked; per-structure quantities (the dot products, ``a``,
    ``dt``, ``Nsteps``, the step length) are segment sums over each structure's atoms, so
    each structure follows exactly the trajectory ASE's FIRE would give it. Fixed atoms
    have zero force and zero velocity, hence never move.
    """
    n = len(runs)
    owner = np.repeat(np.arange(n), [len(run.positions) for run in runs])

    def per_structure(per_atom: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=per_atom, minlength=n)

    states: list[_FireState] = [run.state for run in runs]
    force = np.concatenate([run.forces for run in runs])
    first = np.array([state.velocity is None for state in states])
    velocity = np.concatenate(
        [
            np.zeros_like(run.forces) if state.velocity is None else state.velocity
            for run, state in zip(runs, states, strict=True)
        ]
    )
    a = np.array([state.a for state in states])
    dt = np.array([state.dt for state in states])
    n_downhill = np.array([state.n_downhill for state in states])

    vf = per_structure(np.einsum("ij,ij->i", force, velocity))
    ff = per_structure(np.einsum("ij,ij->i", force, force))
    vv = per_structure(np.einsum("ij,ij->i", velocity, velocity))
    downhill = ~first & (vf > 0.0)
    uphill = ~first & ~downhill

    # Downhill: turn the velocity towards the force, keeping its length; after n_min
    # downhill steps in a row, lengthen the time step and mix less.
    turn = np.zeros(n)
    turn[downhill] = a[downhill] * np.sqrt(vv[downhill] / ff[downhill])
    keep = np.where(downhill, 1.0 - a, 1.0)
    velocity = keep[owner, None] * velocity + turn[owner, None] * force
    speed_up = downhill & (n_downhill > _FIRE.n_min)
    dt = np.where(speed_up, np.minimum(dt * _FIRE.finc, _FIRE.dtmax), dt)
    a = np.where(speed_up, a * _FIRE.fa, a)
    n_downhill = np.where(downhill, n_downhill + 1, n_downhill)

    # Uphill (or stalled): stop, shorten the time step, restart the mixing.
    velocity[uphill[owner]] = 0.0
    dt = np.where(uphill, dt * _FIRE.fdec, dt)
    a = np.where(uphill, _FIRE.astart, a)
    n_downhill = np.where(uphill, 0, n_downhill)

    # Euler step; a step longer than maxstep (whole-structure norm) is scaled down to it.
    velocity += dt[owner, None] * force
    step = dt[owner, None] * velocity
    length = np.sqrt(per_structure(np.einsum("ij,ij->i", step, step)))
    too_long = length > _FIRE.maxstep
    scale = np.ones(n)
    scale[too_long] = _FIRE.maxstep / length[too_long]
    step *= scale[owner, None]

    bounds = np.cumsum([len(run.positions) for run in runs])[:-1]
    for i, (run, state, v, dr) in enumerate(
        zip(runs, states, np.split(velocity, bounds), np.split(step, bounds), strict=True)
    ):
        state.velocity = v
        run.positions = run.positions + dr
        state.a, state.dt, state.n_downhill = float(a[i]), float(dt[i]), int(n_downhill[i])
        run.result.n_steps += 1


def _lbfgs_step(runs: Sequence[_Relaxation]) -> None:
    """Move every run by one L-BFGS step: ``ase.optimize.LBFGS.step`` for each structure.

    Without line search (ASE's default), as in ASE: the history gets the last step's
    position and gradient change; the two-loop recursion with the initial inverse Hessian
    ``I / alpha`` turns the forces into a step; a step whose largest atomic displacement
    exceeds ``maxstep`` is scaled down to it. Fixed atoms have zero force, so every
    history vector and hence the step is zero on them.
    """
    for run in runs:
        state: _LBFGSState = run.state
        positions, forces = run.positions.ravel(), run.forces.ravel()
        if state.positions is not None:
            s, y = positions - state.positions, state.forces - forces
            state.s.append(s)
            state.y.append(y)
            state.rho.append(1.0 / np.dot(y, s))
        q = -forces  # the gradient
        a = np.empty(len(state.s))
        for i in range(len(state.s) - 1, -1, -1):
            a[i] = state.rho[i] * np.dot(state.s[i], q)
            q = q - a[i] * state.y[i]
        z = q / _LBFGS.alpha
        for i in range(len(state.s)):
            b = state.rho[i] * np.dot(state.y[i], z)
            z = z + state.s[i] * (a[i] - b)
        step = -z.reshape(-1, 3)
        longest = np.linalg.norm(step, axis=1).max()
        if longest >= _LBFGS.maxstep:
            step *= _LBFGS.maxstep / longest
        state.positions, state.forces = positions, forces
        run.positions = run.positions + _LBFGS.damping * step
        run.result.n_steps += 1


_STEPS = {"lbfgs": _lbfgs_step, "fire": _fire_step}


def _forward(
    chgnet: CHGNet, graphs: list[CrystalGraph], timings: RelaxTimings
) -> list[tuple[float, np.ndarray]]:
    """Total energies and forces of ``graphs`` from one CHGNet energy pass and one backward.

    ``CHGNet.forward(task="ef")`` builds the force graph with ``create_graph=True`` (what
    training needs); relaxations only need the forces' values, so the energy is
    differentiated once, without a second-order graph, with respect to the fractional
    coordinates: ``F = -(dE/d frac) L^-T`` for a cell whose rows are the lattice vectors.
    """
    tic = time.perf_counter()
    for graph in graphs:
        graph.atom_frac_coord.requires_grad_(True)
    prediction = chgnet(graphs, task="e")
    energies = prediction["e"]
    if chgnet.is_intensive:  # eV/atom -> eV
        energies = energies * prediction["atoms_per_graph"]
    gradients = torch.autograd.grad(energies.sum(), [g.atom_frac_coord for g in graphs])
    evaluations = [
        (
            float(energy),
            (-gradient @ torch.linalg.inv(graph.lattice).T).detach().cpu().numpy().astype(float),
        )
        for energy, gradient, graph in zip(energies.detach().cpu(), gradients, graphs, strict=True)
    ]
    timings.forward += time.perf_counter() - tic
    timings.n_forward += 1
    timings.n_evaluations += len(graphs)
    return evaluations


def _evaluate(
    chgnet: CHGNet, runs: Sequence[_Relaxation], timings: RelaxTimings
) -> list[_Evaluation]:
    """Energy and forces of every run at its current positions, in one forward pass.

    A structure whose graph cannot be built fails alone. If the batched forward pass raises,
    the structures are evaluated one by one, so that only the culprit fails.
    """
    tic = time.perf_counter()
    device = next(chgnet.parameters()).device
    evaluations: dict[int, _Evaluation] = {}
    graphs: dict[int, CrystalGraph] = {}
    for i, run in enumerate(runs):
        try:
            graphs[i] = crystal_graph(chgnet.graph_converter, run.structure()).to(device)
        except Exception as exc:
            evaluations[i] = _error_message(exc)
    timings.graphs += time.perf_counter() - tic
    if graphs:
        try:
            evaluations.update(
                zip(graphs, _forward(chgnet, list(graphs.values()), timings), strict=True)
            )
        except Exception:
            for i, graph in graphs.items():
                try:
                    evaluations[i] = _forward(chgnet, [graph], timings)[0]
                except Exception as exc:
                    evaluations[i] = _error_message(exc)
    return [evaluations[i] for i in range(len(runs))]


def relax_structures(
    structures: Sequence[Structure],
    model: ModelSpec | CHGNet,
    *,
    fmax: float = 0.05,
    max_steps: int = 500,
    batch_size: int = 16,
    optimizer: Optimizer = DEFAULT_OPTIMIZER,
    progress: bool = True,
    timings: RelaxTimings | None = None,
) -> list[RelaxResult]:
    """Relax fixed-cell structures (slabs) in batches; one result per input, in input order.

    Each structure follows ASE's L-BFGS or FIRE (default parameters) as :func:`relax_one`
    would run it with ``relax_cell=False`` and the same ``optimizer``, but the energies and
    forces of up to ``batch_size`` structures come from one CHGNet forward pass. A structure
    leaves the batch when its largest force on a free atom is below ``fmax`` (converged),
    when it has taken ``max_steps`` steps (not converged) or when it fails (``error`` set:
    unusable input, a graph or forward pass that raises, non-finite energy or forces); a
    waiting structure then takes its place. Never raises for a failed relaxation.

    Parameters
    ----------
    structures
        Input structures (``selective_dynamics`` marks fixed atoms); cells stay fixed.
    model
        The CHGNet: a spec (loaded once per process, :func:`load_model`) or a CHGNet
        already in memory (e.g. the model being fine-tuned), used as it is (its current
        weights and head; it should be in eval mode). Either way its graph converter is
        set to ignore isolated atoms, as the ASE calculator of :func:`relax_one` does.
    fmax
        Force criterion, eV/Å.
    max_steps
        Step limit per structure; a structure that hits it is recorded as not converged.
    batch_size
        Structures evaluated together in one forward pass.
    optimizer
        ``"lbfgs"`` (``ase.optimize.LBFGS``: on the benchmark slabs about half the force
        evaluations of FIRE, same minima) or ``"fire"`` (``ase.optimize.FIRE``). Every
        structure takes one step per forward pass either way.
    progress
        Show a progress bar (structures finished / total).
    timings
        If given, filled with where the time went (graphs, forward passes, optimizer).

    Returns
    -------
    list[RelaxResult]
        As from :func:`relax_one`: final structure with the input's site properties, energies,
        largest final force, steps taken, convergence and the energy after every step.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_optimizer(optimizer)
    step = _STEPS[optimizer]
    timings = RelaxTimings() if timings is None else timings
    chgnet = load_model(model) if isinstance(model, ModelSpec) else model
    # Isolated atoms are handled as by the ASE calculator of relax_one.
    chgnet.graph_converter.set_isolated_atom_response("ignore")
    results = [RelaxResult(structure=structure) for structure in structures]
    waiting = deque(zip(structures, results, strict=True))
    active: list[_Relaxation] = []
    with tqdm(
        total=len(results), desc="relax", unit="structure", disable=not progress, leave=False
    ) as bar:
        while waiting or active:
            while waiting and len(active) < batch_size:
                structure, result = waiting.popleft()
                try:
                    active.append(_Relaxation.start(structure, result, optimizer))
                except Exception as exc:
                    result.error = _error_message(exc)
                    bar.update()
            evaluations = _evaluate(chgnet, active, timings)
            tic = time.perf_counter()
            finished = [
                run.record(evaluation, fmax, max_steps)
                for run, evaluation in zip(active, evaluations, strict=True)
            ]
            bar.update(sum(finished))
            active = [run for run, done in zip(active, finished, strict=True) if not done]
            if active:
                step(active)
            timings.optimizer += time.perf_counter() - tic
    return results
