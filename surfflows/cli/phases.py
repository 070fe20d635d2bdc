"""``surfflows phases``: folders of competing phases for chemical-system campaigns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from surfflows.cli.common import app, console, fail

phases_app = typer.Typer(help="Competing phases of a chemical system, from the Materials Project.")
app.add_typer(phases_app, name="phases")

#: Default cut-off of ``phases fetch``, eV/atom.
DEFAULT_MAX_E_ABOVE_HULL = 0.05
#: The environment variable holding the Materials Project API key.
API_KEY_VARIABLE = "MP_API_KEY"


@phases_app.command("fetch")
def fetch(
    system: Annotated[str, typer.Argument(help="Chemical system, e.g. Sr-Ti-O (2 to 4 elements).")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the CIFs and README.md.")],
    e_above_hull: Annotated[
        float,
        typer.Option(
            "--e-above-hull", min=0.0, help="Keep entries this close to the hull, eV/atom."
        ),
    ] = DEFAULT_MAX_E_ABOVE_HULL,
) -> None:
    """Write every Materials Project phase of SYSTEM and its subsystems within --e-above-hull
    of MP's hull to --out: one CIF per phase and a README.md with MP ids, energies above the
    hull, the date and the licence (CC BY 4.0). Needs MP_API_KEY; a campaign file's
    phases: reads the folder."""
    from surfflows.io.phases import (
        check_new_folder,
        fetch_entries,
        parse_chemical_system,
        write_phase_folder,
    )

    api_key = os.environ.get(API_KEY_VARIABLE)
    if not api_key:
        fail(
            f"{API_KEY_VARIABLE} is not set: export your Materials Project API key to fetch phases"
        )
    try:
        elements = parse_chemical_system(system)
    except ValueError as exc:
        fail(str(exc))
    try:
        check_new_folder(out)
    except ValueError as exc:
        fail(f"--out {exc}")
    entries, source = fetch_entries(elements, api_key)
    command = f"`surfflows phases fetch {system} --e-above-hull {e_above_hull:g}`"
    selection = write_phase_folder(entries, out, elements, e_above_hull, f"{source} by {command}")
    table = Table(title=f"{len(selection.phases)} phases of {system} written to {out}")
    for column in ("file", "space group", "MP id", "E above hull (eV/atom)", "atoms"):
        table.add_column(column, overflow="fold")
    for phase in selection.phases:
        table.add_row(
            phase.file_name,
            phase.space_group,
            phase.material_id,
            f"{phase.e_above_hull:.3f}",
            str(len(phase.structure)),
        )
    console.print(table)
    console.print(
        f"{len(entries)} entries fetched; {selection.n_above_cutoff} above {e_above_hull:g} "
        f"eV/atom, {len(selection.left_out)} left out (see {out / 'README.md'})",
        highlight=False,
    )
