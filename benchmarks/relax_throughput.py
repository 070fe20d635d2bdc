"""Throughput of fixed-cell slab relaxations with CHGNet: atomate2, chgnet, the batched engine.

(a) atomate2 ``ForceFieldRelaxMaker`` (CHGNet, ``relax_cell=False``): one jobflow job per
    slab, run with ``jobflow.run_locally`` into an in-memory JobStore, once per ASE optimizer
    named in ``--atomate2-optimizers`` (its default FIRE, and its best choice for slabs:
    BFGSLineSearch, the fewest force evaluations of its ``OPTIMIZERS`` measured here);
(b) chgnet ``StructOptimizer(optimizer_class="FIRE")``: one slab after the other in one process;
(c) :func:`surfflows.engine.relax.relax_structures`: the batched engine, once per optimizer
    (``--optimizers``: L-BFGS and FIRE, each ASE's algorithm step for step) and batch size.

All run on the same rattled slabs with the same ``fmax`` and step limit; fixed atoms
(``selective_dynamics``) are honoured by all. Every CHGNet energy-and-force evaluation is
counted (line searches make several per step). The script prints force evaluations per
slab, wall and CPU time, slabs/hour, the speed-ups of (c) over (a) and (b), and for every
method the final energies against the batched FIRE (mean signed and largest |dE|,
meV/atom) and the largest displacement of an atom between the two relaxed structures. It
also gives the "floor": every evaluation of (c) at the lowest per-structure cost of a
CHGNet forward pass measured in the run. ``--batch-size 1 4 16`` runs (c) once per batch
size: on a CPU a bigger batch of graphs can cost more per structure, not less.

Examples
--------
Quick check (a handful of slabs, results in ``relax_throughput_quick.json``)::

    python benchmarks/relax_throughput.py --quick

What the README quotes (20 slabs, 2 threads)::

    python benchmarks/relax_throughput.py --n-slabs 20 --threads 2 --batch-size 1 \\
        --methods atomate2,batched
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.surface import SlabGenerator

from surfflows.core.slabs import fixed_mask
from surfflows.engine.models import load_model
from surfflows.engine.relax import OPTIMIZERS, Optimizer, RelaxTimings, relax_structures
from surfflows.schemas.models import ModelSpec

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIN_ATOMS, MAX_ATOMS = 20, 100
MIN_SURFACE_LENGTH = 7.0  # Å


def bulk_cells() -> dict[str, Structure]:
    """Conventional bulk cells from experimental lattice constants (room temperature)."""
    fcc = [[0, 0, 0]]
    return {
        # Cu a = 3.615 Å, Pt a = 3.924 Å (Wyckoff, Crystal Structures, 1963)
        "Cu": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], fcc),
        "Pt": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.924), ["Pt"], fcc),
        # MgO rock salt a = 4.212 Å (Hazen, Am. Mineral. 61, 266 (1976))
        "MgO": Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
        ),
        # rutile a = 4.594 Å, c = 2.959 Å, u = 0.3048 (Burdett et al., JACS 109, 3639 (1987))
        "TiO2": Structure.from_spacegroup(
            "P4_2/mnm",
            Lattice.tetragonal(4.594, 2.959),
            ["Ti", "O"],
            [[0, 0, 0], [0.3048, 0.3048, 0]],
        ),
    }


FACETS = {
    "Cu": [(1, 1, 1), (1, 0, 0), (1, 1, 0)],
    "Pt": [(1, 1, 1), (1, 0, 0), (1, 1, 0)],
    "MgO": [(1, 0, 0), (1, 1, 0)],
    "TiO2": [(1, 1, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)],
}


def _in_plane_supercell(n_atoms: int, a: float, b: float) -> tuple[int, int] | None:
    """In-plane repeat making both surface vectors >= MIN_SURFACE_LENGTH where the atom count
    allows, within MIN_ATOMS..MAX_ATOMS atoms; None if no repeat fits."""
    repeat = [math.ceil(MIN_SURFACE_LENGTH / a), math.ceil(MIN_SURFACE_LENGTH / b)]
    lengths = (a, b)
    while n_atoms * repeat[0] * repeat[1] > MAX_ATOMS and max(repeat) > 1:
        longest = max((0, 1), key=lambda i: repeat[i] * lengths[i] if repeat[i] > 1 else 0)
        repeat[longest] -= 1
    while n_atoms * repeat[0] * repeat[1] < MIN_ATOMS:
        shortest = min((0, 1), key=lambda i: repeat[i] * lengths[i])
        repeat[shortest] += 1
    if n_atoms * repeat[0] * repeat[1] > MAX_ATOMS:
        return None
    return repeat[0], repeat[1]


def distinct_slabs() -> list[tuple[str, Structure]]:
    """One slab per facet and termination, 20-100 atoms, bottom layer fixed.

    Ordered round-robin over the materials, so that the first few slabs already mix
    metals and oxides.
    """
    per_material: list[list[tuple[str, Structure]]] = []
    for material, bulk in bulk_cells().items():
        slabs = []
        for miller in FACETS[material]:
            generator = SlabGenerator(
                bulk, miller, min_slab_size=7, min_vacuum_size=12, center_slab=True, primitive=True
            )
            for termination, slab in enumerate(generator.get_slabs(symmetrize=False)):
                repeat = _in_plane_supercell(len(slab), slab.lattice.a, slab.lattice.b)
                if repeat is None:
                    continue
                cell = Structure.from_sites(slab.get_orthogonal_c_slab()) * (*repeat, 1)
                z = cell.cart_coords[:, 2]
                cell.add_site_property(
                    "selective_dynamics", [[bool(zi > z.min() + 1.0)] * 3 for zi in z]
                )
                name = f"{material}({''.join(map(str, miller))})-t{termination}"
                slabs.append((name, cell))
        per_material.append(slabs)
    return [s for group in itertools.zip_longest(*per_material) for s in group if s is not None]


def benchmark_slabs(n_slabs: int, seed: int, rattle: float) -> list[tuple[str, Structure]]:
    """``n_slabs`` slabs: the distinct ones cycled, each copy rattled with its own seed."""
    pool = distinct_slabs()
    slabs = []
    for i in range(n_slabs):
        name, slab = pool[i % len(pool)]
        rng = np.random.default_rng(seed + i)
        positions = slab.cart_coords + rng.normal(0.0, rattle, (len(slab), 3))
        positions[fixed_mask(slab)] = slab.cart_coords[fixed_mask(slab)]
        rattled = Structure(
            slab.lattice,
            slab.species,
            positions,
            coords_are_cartesian=True,
            site_properties=slab.site_properties,
        )
        slabs.append((name, rattled))
    return slabs


@dataclass
class MethodRun:
    """One method over the whole slab set."""

    method: str
    wall_s: float
    cpu_s: float
    energies: list[float]  # final total energies, eV (NaN where failed)
    n_steps: list[int]
    converged: list[bool]
    n_evaluations: int  # CHGNet energy-and-force evaluations, all slabs
    structures: list[Structure | None] = field(default_factory=list, repr=False)
    extra: dict = field(default_factory=dict)

    def slabs_per_hour(self) -> float:
        return 3600.0 * len(self.energies) / self.wall_s

    def evaluations_per_slab(self) -> float:
        return self.n_evaluations / len(self.energies)

    def as_json(self) -> dict:
        """The run as strict JSON (a failed slab's NaN energy becomes null; no structures)."""
        data = {k: v for k, v in asdict(self).items() if k != "structures"}
        data["energies"] = [e if math.isfinite(e) else None for e in self.energies]
        return data | {
            "slabs_per_hour": self.slabs_per_hour(),
            "evaluations_per_slab": self.evaluations_per_slab(),
        }


@contextlib.contextmanager
def _counting_calculator_calls() -> Iterator[list[int]]:
    """Count CHGNet ASE-calculator evaluations in the block (the list's one item)."""
    from chgnet.model.dynamics import CHGNetCalculator

    count = [0]
    calculate = CHGNetCalculator.calculate

    def counted(self, *args, **kwargs):
        count[0] += 1
        return calculate(self, *args, **kwargs)

    CHGNetCalculator.calculate = counted
    try:
        yield count
    finally:
        CHGNetCalculator.calculate = calculate


@contextlib.contextmanager
def _clock() -> Iterator[dict[str, float]]:
    """Yield a dict that receives the wall and CPU seconds of the block."""
    elapsed: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield elapsed
    elapsed["wall"] = time.perf_counter() - wall
    elapsed["cpu"] = time.process_time() - cpu


def run_atomate2(
    slabs: list[Structure], fmax: float, max_steps: int, optimizer: str = "FIRE"
) -> MethodRun:
    """(a) One atomate2 ForceFieldRelaxMaker job per slab through ``jobflow.run_locally``.

    ``optimizer`` is a name of atomate2's ``atomate2.ase.utils.OPTIMIZERS`` (ASE classes).
    """
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker
    from jobflow import Flow, JobStore, run_locally
    from maggma.stores import MemoryStore

    maker = ForceFieldRelaxMaker(
        force_field_name="CHGNet",
        relax_cell=False,
        steps=max_steps,
        relax_kwargs={"fmax": fmax},
        optimizer_kwargs={"optimizer": optimizer},
    )
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.chdir(tmp),
        _counting_calculator_calls() as count,
        _clock() as elapsed,
    ):
        jobs = [maker.make(slab) for slab in slabs]
        responses = run_locally(Flow(jobs), store=store, log=False, root_dir=tmp)
    docs = [responses[job.uuid][1].output if job.uuid in responses else None for job in jobs]
    return MethodRun(
        method=f"atomate2[{optimizer}]",
        wall_s=elapsed["wall"],
        cpu_s=elapsed["cpu"],
        energies=[doc.output.energy if doc else math.nan for doc in docs],
        # the observer records the start, every step, and the end once more
        n_steps=[doc.output.n_steps - 2 if doc else 0 for doc in docs],
        converged=[bool(doc and doc.is_force_converged) for doc in docs],
        n_evaluations=count[0],
        structures=[doc.output.structure if doc else None for doc in docs],
    )


def run_struct_optimizer(
    slabs: list[Structure], spec: ModelSpec, fmax: float, max_steps: int
) -> MethodRun:
    """(b) chgnet's StructOptimizer (ASE FIRE), one slab after the other."""
    from chgnet.model import StructOptimizer

    optimizer = StructOptimizer(model=load_model(spec), optimizer_class="FIRE")
    energies, n_steps, converged, structures = [], [], [], []
    with _counting_calculator_calls() as count, _clock() as elapsed:
        for slab in slabs:
            relaxed = optimizer.relax(
                slab, fmax=fmax, steps=max_steps, relax_cell=False, verbose=False
            )
            trajectory = relaxed["trajectory"]
            # the observer records the start, every step, and the end once more
            energies.append(float(trajectory.energies[-1]))
            n_steps.append(len(trajectory.energies) - 2)
            max_force = np.linalg.norm(trajectory.forces[-1], axis=1).max()
            converged.append(bool(max_force < fmax))
            structures.append(relaxed["final_structure"])
    return MethodRun(
        "StructOptimizer",
        elapsed["wall"],
        elapsed["cpu"],
        energies,
        n_steps,
        converged,
        n_evaluations=count[0],
        structures=structures,
    )


def run_batched(
    slabs: list[Structure],
    spec: ModelSpec,
    fmax: float,
    max_steps: int,
    batch_size: int,
    optimizer: Optimizer,
) -> MethodRun:
    """(c) The batched engine, with its forward passes timed."""
    timings = RelaxTimings()
    with _clock() as elapsed:
        results = relax_structures(
            slabs,
            spec,
            fmax=fmax,
            max_steps=max_steps,
            batch_size=batch_size,
            optimizer=optimizer,
            timings=timings,
        )
    return MethodRun(
        method=f"batched[{optimizer}, {batch_size}]",
        wall_s=elapsed["wall"],
        cpu_s=elapsed["cpu"],
        energies=[r.energy for r in results],
        n_steps=[r.n_steps for r in results],
        converged=[r.ok for r in results],
        n_evaluations=timings.n_evaluations,
        structures=[r.structure for r in results],
        extra={"timings": asdict(timings)},
    )


def max_displacement(a: Structure, b: Structure) -> float:
    """Largest distance between the same atom in two structures of one cell (minimum image), Å."""
    delta = a.frac_coords - b.frac_coords
    delta -= np.round(delta)
    return float(np.linalg.norm(delta @ a.lattice.matrix, axis=1).max())


def agreement(run: MethodRun, reference: MethodRun, n_atoms: list[int]) -> dict:
    """Final energies and geometries of ``run`` against ``reference``, slab by slab.

    Over the slabs both converged: mean signed and largest |dE| (meV/atom; negative: ``run``
    ends lower) and the largest and median per-slab maximum atomic displacement (Å).
    """
    pairs = [
        ((e - e_ref) / n * 1e3, max_displacement(s, s_ref))
        for e, e_ref, n, ok, ok_ref, s, s_ref in zip(
            run.energies,
            reference.energies,
            n_atoms,
            run.converged,
            reference.converged,
            run.structures,
            reference.structures,
            strict=True,
        )
        if ok and ok_ref
    ]
    if not pairs:
        return {"n_compared": 0}
    de, dx = np.array(pairs).T
    return {
        "n_compared": len(pairs),
        "mean_signed_meV_per_atom": float(de.mean()),
        "max_abs_meV_per_atom": float(np.abs(de).max()),
        "max_displacement_A": float(dx.max()),
        "median_max_displacement_A": float(np.median(dx)),
    }


def _plot(runs: list[MethodRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.method for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    left.barh(names, [r.slabs_per_hour() for r in runs], color="C0")
    left.set_xlabel("slabs / hour")
    right.barh(names, [r.evaluations_per_slab() for r in runs], color="C1")
    right.set_xlabel("force evaluations / slab")
    left.invert_yaxis()
    fig.suptitle(f"CHGNet slab relaxations ({len(runs[0].energies)} slabs, shared CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark from the command line; return the report that is saved as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-slabs", type=int, default=100, help="slabs to relax (default 100)")
    parser.add_argument("--quick", action="store_true", help="a handful of slabs (4)")
    parser.add_argument("--fmax", type=float, default=0.05, help="force criterion, eV/Å")
    parser.add_argument("--max-steps", type=int, default=500, help="step limit per slab")
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[16],
        help="batched engine slots; several values run (c) once per value",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=OPTIMIZERS,
        default=list(OPTIMIZERS),
        help="batched engine optimizers (FIRE always runs: it is the energy reference)",
    )
    parser.add_argument(
        "--atomate2-optimizers",
        nargs="+",
        default=["FIRE", "BFGSLineSearch"],
        help="names from atomate2.ase.utils.OPTIMIZERS, one atomate2 run each",
    )
    parser.add_argument("--rattle", type=float, default=0.05, help="rattle of free atoms, Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--methods",
        default="atomate2,StructOptimizer,batched",
        help="comma-separated subset of atomate2, StructOptimizer, batched",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)

    n_slabs = 4 if args.quick else args.n_slabs
    output = args.output or RESULTS_DIR / (
        "relax_throughput_quick.json" if args.quick else "relax_throughput.json"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    optimizers = sorted(set(args.optimizers) | {"fire"}, key=OPTIMIZERS.index)
    spec = ModelSpec()  # CHGNet 0.3.0: what atomate2's CHGNetCalculator() loads by default
    named = benchmark_slabs(n_slabs, args.seed, args.rattle)
    slabs = [slab for _, slab in named]
    n_atoms = [len(slab) for slab in slabs]
    load_model(spec)  # loading is not timed for (b) and (c)
    print(
        f"{n_slabs} slabs, {min(n_atoms)}-{max(n_atoms)} atoms, {torch.get_num_threads()} "
        f"torch threads, fmax {args.fmax} eV/Å, max {args.max_steps} steps",
        flush=True,
    )

    config = {
        "n_slabs": n_slabs,
        "quick": args.quick,
        "fmax": args.fmax,
        "max_steps": args.max_steps,
        "batch_sizes": args.batch_size,
        "optimizers": optimizers,
        "atomate2_optimizers": args.atomate2_optimizers,
        "rattle": args.rattle,
        "seed": args.seed,
        "model": spec.model_id,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "energy_reference": f"batched[fire, {args.batch_size[0]}]",
        "slabs": [f"{name} ({len(slab)} atoms)" for name, slab in named],
    }

    def save(runs: dict[str, MethodRun], verbose: bool = False) -> dict:
        """Report the runs so far (JSON + PNG), so that a long run leaves results early."""
        report = summarize(runs, config, n_atoms, verbose)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, allow_nan=False))
        _plot(list(runs.values()), output.with_suffix(".png"))
        return report

    runs: dict[str, MethodRun] = {}
    # the batched FIRE always runs: every method's energies are compared with it
    for optimizer in optimizers if "batched" in methods else ["fire"]:
        for batch_size in args.batch_size if "batched" in methods else args.batch_size[:1]:
            run = run_batched(slabs, spec, args.fmax, args.max_steps, batch_size, optimizer)
            runs[run.method] = run
            print(f"{run.method}: {run.wall_s:.1f} s", flush=True)
    save(runs)
    if "StructOptimizer" in methods:
        runs["StructOptimizer"] = run_struct_optimizer(slabs, spec, args.fmax, args.max_steps)
        save(runs)
    if "atomate2" in methods:
        for optimizer in args.atomate2_optimizers:
            run = run_atomate2(slabs, args.fmax, args.max_steps, optimizer)
            runs[run.method] = run
            print(f"{run.method}: {run.wall_s:.1f} s", flush=True)
            save(runs)
    report = save(runs, verbose=True)
    print(f"\nwrote {output} and {output.with_suffix('.png')}")
    return report


def summarize(runs: dict[str, MethodRun], config: dict, n_atoms: list[int], verbose: bool) -> dict:
    """The report of ``runs``: each method, its agreement with FIRE, speed-ups, the floor."""
    fire = runs[config["energy_reference"]]
    out = print if verbose else lambda *_: None
    report: dict = {
        "config": config,
        "methods": {
            name: run.as_json() | {"vs_fire": agreement(run, fire, n_atoms)}
            for name, run in runs.items()
        },
    }

    out(
        f"\n{'method':<24} {'wall s':>8} {'CPU s':>8} {'slabs/h':>8} {'conv.':>7} "
        f"{'eval/slab':>9} {'ms/eval':>8} {'dE meV/at':>10} {'max dx Å':>9}"
    )
    for name, run in runs.items():
        versus = report["methods"][name]["vs_fire"]
        out(
            f"{name:<24} {run.wall_s:8.1f} {run.cpu_s:8.1f} {run.slabs_per_hour():8.0f} "
            f"{sum(run.converged):3d}/{len(run.converged):<3d} {run.evaluations_per_slab():9.1f} "
            f"{1e3 * run.wall_s / run.n_evaluations:8.1f} "
            + (
                f"{versus['mean_signed_meV_per_atom']:+10.3f} {versus['max_displacement_A']:9.3f}"
                if versus["n_compared"]
                else f"{'-':>10} {'-':>9}"
            )
        )

    batched_runs = [run for name, run in runs.items() if name.startswith("batched")]
    # the floor: every evaluation at the lowest per-structure forward cost measured
    per_evaluation = min(
        r.extra["timings"]["forward"] / r.extra["timings"]["n_evaluations"] for r in batched_runs
    )
    report["floor"] = {"forward_s_per_evaluation": per_evaluation}
    others = [run for name, run in runs.items() if not name.startswith("batched")]
    for batched in batched_runs:
        report["speedup"] = report.get("speedup", {}) | {
            batched.method: {
                other.method: {
                    "wall": other.wall_s / batched.wall_s,
                    "cpu": other.cpu_s / batched.cpu_s,
                    "evaluations": other.n_evaluations / batched.n_evaluations,
                }
                for other in [*others, fire]
                if other is not batched
            }
        }
        for other in others:
            out(
                f"{batched.method} / {other.method}: {other.wall_s / batched.wall_s:.2f}x wall, "
                f"{other.cpu_s / batched.cpu_s:.2f}x CPU, "
                f"{other.n_evaluations / batched.n_evaluations:.2f}x evaluations"
            )
        timings = batched.extra["timings"]
        floor_s = per_evaluation * timings["n_evaluations"]
        report["floor"][batched.method] = {
            "forward_s": timings["forward"],
            "graphs_s": timings["graphs"],
            "optimizer_s": timings["optimizer"],
            "forward_ms_per_evaluation": 1e3 * timings["forward"] / timings["n_evaluations"],
            "floor_s": floor_s,
            "fraction_of_floor": floor_s / batched.wall_s,
        }
        out(
            f"{batched.method}: forward passes {timings['forward']:.1f} s of "
            f"{batched.wall_s:.1f} s ({1e3 * timings['forward'] / timings['n_evaluations']:.0f} "
            f"ms per structure); graphs {timings['graphs']:.1f} s, optimizer "
            f"{timings['optimizer']:.1f} s; {timings['n_forward']} forward passes for "
            f"{timings['n_evaluations']} evaluations; floor {floor_s:.1f} s = "
            f"{floor_s / batched.wall_s:.0%} of its wall time"
        )

    return report


if __name__ == "__main__":
    main()
