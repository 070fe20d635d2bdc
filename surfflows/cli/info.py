"""The ``info`` command: settings in force, store sizes and the packaged models."""

from __future__ import annotations

from surfflows.cli.common import app, console


@app.command()
def info() -> None:
    """Show the settings in force, how many documents each store holds and the packaged models."""
    from surfflows.io.packaged import model_card, packaged_names
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
    for name in packaged_names():
        try:
            card = model_card(name)
        except ValueError as exc:  # a broken card is reported, the rest still shown
            console.print(f"packaged model [bold]{name}[/]: [red]{exc}[/]")
            continue
        test = {mode: parts.get("test") for mode, parts in card.figures.items()}
        figures = ", ".join(
            f"{mode} {f.mae:.3f} J/m² (N={f.n})" for mode, f in test.items() if f and f.mae
        )
        heads = ", ".join(h.name or h.level_of_theory for h in card.heads)
        if card.default_head:
            heads += f" (default {card.default_head})"
        console.print(
            f"packaged model [bold]{name}[/] = {card.model_id} ({card.n_bytes / 1e6:.1f} MB"
            f"{', [red]interim[/]' if card.interim else ''}): parent {card.parent}, heads "
            f"{heads}, {card.figures_set or 'test split'} γ MAE {figures or '-'}; reproduce: "
            f"{card.command}"
        )
