"""The typer app, its console and the helpers every command group shares."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from surfflows.flows.campaign import CampaignConfig

app = typer.Typer(
    help="Surface-energy campaigns with CHGNet, stored in MongoDB or an embedded MontyDB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def configure() -> None:
    """Apply the settings that concern this process (torch threads)."""
    from surfflows.settings import get_settings

    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)


# Wide tables when piped (rich assumes 80 columns off a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def load_campaign(config: Path) -> CampaignConfig:
    """The campaign file parsed and validated, or a clear error naming what is wrong."""
    from surfflows.flows.campaign import CampaignConfig

    try:
        return CampaignConfig.from_yaml(config)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


def parse_miller(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.replace(",", " ").split() if (" " in text or "," in text) else list(text)
    try:
        hkl = tuple(int(p) for p in parts)
    except ValueError:
        hkl = ()
    if len(hkl) != 3:
        fail(f"Miller index {text!r}: give three integers, e.g. 111 or '1,-1,0'")
    return hkl


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_json(data: dict | list, path: Path) -> None:

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
