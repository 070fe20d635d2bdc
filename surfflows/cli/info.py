"""The ``info`` command: settings in force and store sizes."""

from __future__ import annotations

from surfflows.cli.common import app, console


@app.command()
def info() -> None:
    """Show the settings in force and how many documents each store holds."""
    from surfflows.settings import get_settings
    from surfflows.stores import STORE_NAMES, get_store

    settings = get_settings()
    where = settings.mongodb_uri or f"MontyDB at {settings.db_dir}"
    console.print(f"database: [bold]{settings.database}[/] on {where}")
    for name in STORE_NAMES:
        store = get_store(name, settings)
        with store:
            console.print(f"  {name:16s} {store.count():>8d} documents")
