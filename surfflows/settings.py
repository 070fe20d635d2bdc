"""Settings from environment variables and an optional YAML file.

Precedence (highest first): environment variables ``SURFFLOWS_<FIELD>``, the YAML
file named by ``SURFFLOWS_SETTINGS_FILE`` (default ``~/.config/surfflows/settings.yaml``,
read only if it exists), then the defaults below.

Examples
--------
>>> import os
>>> os.environ["SURFFLOWS_DB_DIR"] = "/tmp/my_campaign_db"  # doctest: +SKIP
>>> get_settings().db_dir  # doctest: +SKIP
PosixPath('/tmp/my_campaign_db')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from surfflows.core.text import validation_summary
from surfflows.core.yaml_files import load_yaml

DEFAULT_SETTINGS_FILE = Path("~/.config/surfflows/settings.yaml").expanduser()


class SurfflowsSettings(BaseSettings):
    """Where surfflows keeps its data and which database it talks to."""

    model_config = SettingsConfigDict(env_prefix="SURFFLOWS_", extra="forbid")

    db_dir: Path = Field(
        default=Path("~/.surfflows/db").expanduser(),
        description="Directory of the embedded MontyStore database (used when no MongoDB URI is "
        "set). Created on first use.",
    )
    mongodb_uri: str | None = Field(
        default=None,
        description="MongoDB connection URI (mongodb:// or mongodb+srv://). When set, every store "
        "is a maggma MongoURIStore in `database` instead of the embedded MontyStore.",
    )
    database: str = Field(default="surfflows", description="Database name (MongoDB and MontyDB).")
    db_storage: Literal["sqlite", "lightning", "flatfile"] = Field(
        default="sqlite",
        description="montydb storage engine of a new embedded database (sqlite, lightning = "
        "LMDB, flatfile = JSON files). An existing database keeps the engine it was made with; "
        "`surfflows db migrate --storage` copies it into another.",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="torch intra-op threads for CHGNet in every CLI command (None: torch's "
        "default). Jobs never read settings: a jobflow-remote worker sets OMP_NUM_THREADS.",
    )


def _yaml_settings(path: Path) -> dict:
    """Read the YAML settings file; an unreadable or non-mapping file is an error."""
    if not path.exists():
        return {}
    data = load_yaml(path, "settings file") or {}
    if not isinstance(data, dict):
        raise ValueError(f"settings file {path} must hold a mapping of setting names to values")
    return data


def get_settings() -> SurfflowsSettings:
    """Return the current settings (read anew on each call, so tests can set env vars).

    Returns
    -------
    SurfflowsSettings
        Settings merged from the environment, the YAML file and the defaults.

    Raises
    ------
    ValueError
        If the YAML file is malformed or names an unknown setting.
    """
    path = Path(os.environ.get("SURFFLOWS_SETTINGS_FILE", DEFAULT_SETTINGS_FILE)).expanduser()
    from_file = _yaml_settings(path)
    env_names = {
        name for name in SurfflowsSettings.model_fields if f"SURFFLOWS_{name.upper()}" in os.environ
    }
    try:
        # Environment wins: only pass file values that the environment does not override.
        return SurfflowsSettings(**{k: v for k, v in from_file.items() if k not in env_names})
    except ValidationError as exc:
        raise ValueError(
            f"invalid surfflows settings (environment or file {path}): {validation_summary(exc)}"
        ) from None


_URI_PASSWORD = re.compile(r"(mongodb(?:\+srv)?://[^:/@\s]+:)(\S+)(@)")


def redact_uri(text: str) -> str:
    """``text`` with the password of every MongoDB URI in it replaced by ``***``.

    Examples
    --------
    >>> redact_uri("mongodb://ann:s3cret@db.example.org:27017/x")
    'mongodb://ann:***@db.example.org:27017/x'
    """
    return _URI_PASSWORD.sub(r"\1***\3", text)
