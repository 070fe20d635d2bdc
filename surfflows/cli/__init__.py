"""The ``surfflows`` command line: thin typer commands, one module per command group.

Settings are read and stores opened here; the orchestration lives in :mod:`surfflows.flows`.
"""

from __future__ import annotations

from surfflows.cli import benchmark, campaign, db, finetune, info, phases, references, thermo
from surfflows.cli.common import app

__all__ = [
    "app",
    "benchmark",
    "campaign",
    "db",
    "finetune",
    "info",
    "phases",
    "references",
    "thermo",
]
