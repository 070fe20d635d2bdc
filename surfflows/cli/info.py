"""The ``info`` command: settings in force and store sizes."""

from __future__ import annotations

from surfflows.cli.common import app, console


@app.command()
def info() -> None:
    """Show the settings in force and how many documents each store holds."""
    from surfflows.settings import get_settings, redact_uri
    from surfflows.stores import STORE_NAMES, get_store, ping_database

    settings = get_settings()
    where = (
        redact_uri(settings.mongodb_uri)
        if settings.mongodb_uri
        else f"MontyDB at {settings.db_dir}"
    )
    console.print(f"database: [bold]{settings.database}[/] on {where}")
    ping_database(settings)
    for name in STORE_NAMES:
        store = get_store(name, settings)
        with store:
            console.print(f"  {name:16s} {store.count():>8d} documents")
