"""``python -m surfflows.cli``."""

from surfflows.cli import app

app()
