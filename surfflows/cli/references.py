"""Commands that ingest DFT reference sets (extxyz files, OC22)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from surfflows.cli.common import app, console, fail, prepare_database


@app.command()
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="Packaged set names or folders in the canonical format.")
    ],
    level_of_theory: Annotated[
        str | None, typer.Option(help="Level of theory of a user folder (else its README).")
    ] = None,
    set_name: Annotated[
        str | None,
        typer.Option(help="Name of a user folder's set in the store (default: folder name)."),
    ] = None,
) -> None:
    """Ingest DFT reference sets (upsert by key: re-ingesting changes nothing)."""
    from surfflows.io.ingest import ingest_path

    if set_name and len(sources) > 1:
        fail("--set-name names one set: give one folder")
    for source in sources:
        try:
            report = ingest_path(source, level_of_theory=level_of_theory, set_name=set_name)
        except (ValueError, FileNotFoundError) as exc:
            fail(f"{source}: {exc}")
        console.print(report.summary())


oc22_app = typer.Typer(help="OC22: download the published files and ingest them.")


app.add_typer(oc22_app, name="oc22")


@oc22_app.callback()
def oc22_main(ctx: typer.Context) -> None:
    """OC22: download the published files and ingest them."""
    prepare_database(ctx)


@oc22_app.command("download")
def oc22_download(
    dest: Annotated[Path, typer.Argument(help="Download folder.")],
    files: Annotated[
        list[str] | None, typer.Option("--file", help="Published file name (repeatable).")
    ] = None,
    extract: Annotated[bool, typer.Option(help="Unpack tarballs after the md5 check.")] = False,
) -> None:
    """Download OC22 files with md5 check and resume (default: IS2RE LMDBs + metadata)."""
    from surfflows.io.oc22 import download

    names = files or ["is2res_total_train_val_test_lmdbs.tar.gz", "oc22_metadata.pkl"]
    try:
        paths = download(names, dest, extract=extract)
    except OSError as exc:  # URLError, timeouts, disk errors
        fail(
            f"OC22 download of {', '.join(names)} into {dest} failed ({exc}); is the machine "
            "online? Partial files are kept and a rerun resumes them"
        )
    for path in paths:
        console.print(f"ok {path}")


@oc22_app.command("ingest")
def oc22_ingest(
    split_dir: Annotated[Path, typer.Argument(help="IS2RE-total split folder of LMDB shards.")],
    metadata: Annotated[Path, typer.Option(help="oc22_metadata.pkl")],
    bulks: Annotated[
        Path | None, typer.Option(help="Canonical bulks.extxyz (bulk_id = mp id).")
    ] = None,
    mp_api_key: Annotated[
        str | None,
        typer.Option(envvar="MP_API_KEY", help="Fetch bulks from Materials Project instead."),
    ] = None,
    set_name: Annotated[str, typer.Option(help="Name of the set in the store.")] = "oc22",
) -> None:
    """Ingest an OC22 split as canonical reference documents (clean slabs and adslabs)."""
    from ase.io import read

    from surfflows.io.ingest import ingest_reference_set
    from surfflows.io.oc22 import (
        bulks_from_materials_project,
        oc22_reference_set,
        read_metadata,
    )

    bulk_frames = read(bulks, ":") if bulks else []
    if not bulk_frames and mp_api_key:
        mp_ids = sorted({m["bulk_id"] for m in read_metadata(metadata).values()})
        bulk_frames = bulks_from_materials_project(mp_ids, mp_api_key)
    refset = oc22_reference_set(split_dir, metadata, bulk_frames, set_name=set_name)
    console.print(ingest_reference_set(refset).summary())


@oc22_app.command("ingest-frames")
def oc22_ingest_frames(
    split_dir: Annotated[Path, typer.Argument(help="S2EF-total split folder of LMDB shards.")],
    metadata: Annotated[Path, typer.Option(help="oc22_metadata.pkl")],
    set_name: Annotated[
        str, typer.Option(help="Name of the set in the store (that of the IS2RE records).")
    ] = "oc22",
) -> None:
    """Ingest an OC22 S2EF split as training frames (energy, forces; one key per frame)."""
    from surfflows.io.ingest import ingest_reference_set
    from surfflows.io.oc22 import oc22_s2ef_set

    try:
        refset = oc22_s2ef_set(split_dir, metadata, set_name=set_name)
    except (ValueError, FileNotFoundError) as exc:
        fail(f"{split_dir}: {exc}")
    console.print(ingest_reference_set(refset).summary())
