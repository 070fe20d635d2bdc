"""The typer app, its console and the helpers every command group shares.

Every command runs through :class:`_Group`: an exception becomes one ``error:`` line
(passwords of MongoDB URIs redacted) and exit status 2, unless ``--debug`` (or
``SURFFLOWS_DEBUG=1``) asks for the traceback. Before a command that touches the
database, a MongoDB server is pinged (fails in seconds) and, on the embedded database,
the writer lock is taken for commands that write.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

if TYPE_CHECKING:
    from surfflows.flows.campaign import CampaignConfig

#: Commands that only read the database (no writer lock; ``db migrate`` takes it itself), and
#: those that need none (``info`` shows the settings first and pings the server itself;
#: ``phases`` writes files).
READ_ONLY_COMMANDS = frozenset({"results", "info", "report", "submit", "export", "db"})
NO_DATABASE_COMMANDS = frozenset({"download", "info", "phases"})

#: Library warnings that are not the user's business (module regex, category, message regex).
QUIET_WARNINGS = (
    ("jobflow", FutureWarning, ""),
    ("monty", FutureWarning, ""),
    ("chgnet", UserWarning, ""),
    ("torch", UserWarning, ".*requires_grad"),
    ("pymatgen.io.cif", UserWarning, ""),
    ("pymatgen", DeprecationWarning, ""),
    ("maggma", UserWarning, ""),
    ("", DeprecationWarning, ".*contextlib.chdir"),
    ("spglib", DeprecationWarning, ""),
    # pymatgen sorts formulas by electronegativity; noble gases have none (raised in functools)
    ("", UserWarning, "No Pauling electronegativity for"),
)


def quiet_library_warnings() -> None:
    """Filter the library warnings of :data:`QUIET_WARNINGS` (the CLI's, not the library's)."""
    for module, category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


#: Seconds between progress lines when stderr is not a terminal (a log file, a pipe).
LOG_PROGRESS_INTERVAL_S = 60


def quiet_progress_off_terminal() -> None:
    """Off a terminal, tqdm bars print a line a minute instead of one per update."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", str(LOG_PROGRESS_INTERVAL_S))


#: Set by ``--debug`` (or ``SURFFLOWS_DEBUG``) for the command being run.
_debug = False


def debug_enabled() -> bool:
    """``--debug`` was given or ``SURFFLOWS_DEBUG`` is set to something true."""
    return _debug or os.environ.get("SURFFLOWS_DEBUG", "").lower() in ("1", "true", "yes", "on")


def error_line(exc: BaseException) -> str:
    """What the user sees of an exception: its message (its type when it is not an input
    error), MongoDB passwords redacted."""
    from surfflows.settings import redact_uri
    from surfflows.stores import explain_storage_error

    explained = explain_storage_error(exc)
    if explained:
        return explained
    message = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, ValueError | OSError | LookupError | RuntimeError):
        message = f"{type(exc).__name__}: {message}"
    return redact_uri(message)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers send at walltime), raised where the command is, like Ctrl-C:
    jobs and builders stop between writes, and what was stored stays."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


#: Exit status of a command stopped by SIGTERM (128 + 15, what shells report).
SIGTERM_EXIT = 128 + signal.SIGTERM


class _Group(TyperGroup):
    """A command group that turns exceptions into one-line errors (``--debug``: traceback),
    and SIGTERM into the interruption Ctrl-C makes (exit status 143)."""

    def invoke(self, ctx: click.Context):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            return super().invoke(ctx)
        except (typer.Exit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            console.print(f"[bold red]{what}[/]: what was stored stays; run again to resume")
            raise typer.Exit(code=SIGTERM_EXIT if isinstance(exc, Terminated) else 130) from None
        except Exception as exc:
            if debug_enabled():
                from surfflows.settings import redact_uri

                sys.stderr.write(redact_uri(traceback.format_exc()))
            console.print(f"[bold red]error:[/] {error_line(exc)}", highlight=False, soft_wrap=True)
            if not debug_enabled():
                console.print("(run with --debug or SURFFLOWS_DEBUG=1 for the traceback)")
            raise typer.Exit(code=2) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


app = typer.Typer(
    cls=_Group,
    help="Surface-energy campaigns with CHGNet, stored in MongoDB or an embedded MontyDB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


# Wide tables when piped (rich assumes 80 columns off a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)


#: Help text of every --model option.
MODEL_HELP = (
    "Model: chgnet-0.3.0 (0.2.0, r2scan), chgnet-surf (packaged fine-tuned CHGNet), "
    "chgnet-ft-<sha>, sha256:<hex>, a checkpoint file, "
    "sevennet-0, an ASE calculator 'package.module.Class' or JSON "
    '\'{"force_field_name": ..., "calculator_kwargs": {...}}\'.'
)


def apply_torch_threads() -> None:
    """Give torch the ``torch_threads`` of the settings (``SURFFLOWS_TORCH_THREADS``).

    Set when torch is imported (wrapt's post-import hook; at once if it already is):
    commands that never load a model do not pay torch's import (3 CPU s here).
    ``OMP_NUM_THREADS`` alone would not do: torch caps it at the number of cores.
    """
    from surfflows.settings import get_settings

    threads = get_settings().torch_threads
    if threads is not None:
        import wrapt

        wrapt.register_post_import_hook(lambda torch: torch.set_num_threads(threads), "torch")


def prepare_database(ctx: click.Context) -> None:
    """Ping MongoDB and take the embedded writer lock as the invoked command needs."""
    from surfflows.stores import ping_database, writer_lock

    command = ctx.invoked_subcommand
    if command is None or command in NO_DATABASE_COMMANDS:
        return
    ping_database()
    if command not in READ_ONLY_COMMANDS:
        ctx.with_resource(writer_lock())


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="SURFFLOWS_DEBUG", help="Show tracebacks of errors."),
    ] = False,
) -> None:
    """Surface-energy campaigns with CHGNet, stored in MongoDB or an embedded MontyDB."""
    global _debug
    _debug = debug
    quiet_library_warnings()
    quiet_progress_off_terminal()
    apply_torch_threads()
    if ctx.invoked_subcommand != "oc22":  # the oc22 group prepares for its own commands
        prepare_database(ctx)


def fail(message: str) -> None:
    """Print one ``error:`` line (the traceback first if ``--debug`` and one is active), exit 2."""
    from surfflows.settings import redact_uri

    if debug_enabled() and sys.exc_info()[0] is not None:
        sys.stderr.write(redact_uri(traceback.format_exc()))
    console.print(f"[bold red]error:[/] {redact_uri(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def input_error(exc: Exception, labels: dict[str, str] | None = None) -> str:
    """One line of an input error: a pydantic error as ``field: message`` per field, the
    fields renamed by ``labels`` (e.g. to the options that set them)."""
    from pydantic import ValidationError

    from surfflows.core.text import validation_summary

    return validation_summary(exc, labels) if isinstance(exc, ValidationError) else str(exc)


def load_campaign(config: Path) -> CampaignConfig:
    """The campaign file parsed and validated, or a clear error naming what is wrong."""
    from surfflows.flows.campaign import CampaignConfig

    try:
        return CampaignConfig.from_yaml(config, progress=True)
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
