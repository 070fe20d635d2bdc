"""OC22's published files: their addresses and md5 sums, and a resumable, checked download."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

OC22_BASE_URL = "https://dl.fbaipublicfiles.com/opencatalystproject/data/oc22/"

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class OC22File:
    """One published OC22 file.

    Attributes
    ----------
    url
        Download address.
    md5
        Published md5 checksum (hex digest).
    """

    url: str
    md5: str


OC22_FILES: Mapping[str, OC22File] = MappingProxyType(
    {
        name: OC22File(OC22_BASE_URL + name, md5)
        for name, md5 in (
            ("is2res_total_train_val_test_lmdbs.tar.gz", "b35dc24e99ef3aeaee6c5c949903de94"),
            ("s2ef_total_train_val_test_lmdbs.tar.gz", "ebea523c6f8d61248a37b4dd660b11e6"),
            ("oc22_trajectories.tar.gz", "977b6be1cbac6864e63c4c7fbf8a3fce"),
            ("oc22_metadata.pkl", "13dc06c6510346d8a7f614d5b26c8ffa"),
            ("oc20_ref.pkl", "043e1e0b0cce64c62f01a8563dbc3178"),
        )
    }
)


def download(
    names: str | Iterable[str],
    dest: str | Path,
    *,
    base_url: str = OC22_BASE_URL,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
    extract: bool = False,
) -> list[Path]:
    """Download OC22 files, resuming partial downloads and checking their md5.

    Each file streams into ``<dest>/<name>.part``; an existing ``.part`` file is resumed with an
    HTTP ``Range`` request (a server that ignores the range sends the whole file, which then
    replaces the part). The finished file is checked against its md5 and renamed to
    ``<dest>/<name>``. A file already at ``<dest>/<name>`` with the right md5 is not fetched
    again; one with a wrong md5 is fetched anew.

    Parameters
    ----------
    names
        File names (or one name), keys of :data:`OC22_FILES` or of ``checksums``.
    dest
        Target folder (created if missing).
    base_url
        Where the files are served; ``<base_url>/<name>`` is fetched.
    checksums
        Name -> md5 hex digest, overriding or extending the published table.
    progress
        Show a tqdm progress bar per file.
    extract
        Also unpack the ``.tar.gz`` files into ``dest`` (tarfile's ``"data"`` filter, which
        refuses absolute paths, links out of ``dest`` and device files). Unpacking runs on
        every call.

    Returns
    -------
    list of Path
        The downloaded files, in the order of ``names``.

    Raises
    ------
    ValueError
        No md5 is known for a name, or a finished download does not match its md5. The bad
        download is deleted (no ``.part`` is kept), so running again fetches it from scratch.
    urllib.error.URLError
        The server could not be reached or answered with an error; the ``.part`` file is kept
        and the next call resumes it.
    """
    if isinstance(names, str):
        names = [names]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    md5s = {name: entry.md5 for name, entry in OC22_FILES.items()} | dict(checksums or {})
    paths = []
    for name in names:
        if name not in md5s:
            raise ValueError(f"no md5 known for {name!r}: pass it in `checksums`")
        path = dest / name
        if not _matches_md5(path, md5s[name]):
            _download_one(f"{base_url.rstrip('/')}/{name}", path, md5s[name], progress=progress)
        if extract and name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                tar.extractall(dest, filter="data")
        paths.append(path)
    return paths


def _md5(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _matches_md5(path: Path, expected: str) -> bool:
    """Whether ``path`` exists with md5 ``expected`` (a mismatch is logged)."""
    if not path.exists():
        return False
    actual = _md5(path)
    if actual != expected:
        logger.warning("%s has md5 %s, expected %s: downloading it again", path, actual, expected)
    return actual == expected


def _download_one(url: str, path: Path, expected_md5: str, *, progress: bool) -> None:
    part = path.with_name(path.name + ".part")
    _fetch(url, part, progress=progress)
    actual = _md5(part)
    if actual != expected_md5:
        part.unlink()
        raise ValueError(
            f"md5 mismatch for {path.name}: expected {expected_md5}, got {actual}; the download "
            "was deleted, run again to fetch it anew"
        )
    part.replace(path)


def _fetch(url: str, part: Path, *, progress: bool) -> None:
    """Stream ``url`` into ``part``, resuming after the bytes ``part`` already holds."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Nothing after `offset`: the part already holds the whole file (md5 decides).
            exc.close()
            return
        raise
    with response:
        if response.status == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ")
            if start.partition("-")[0] != str(offset):
                raise ValueError(f"{url}: asked to resume at byte {offset}, server sent {start!r}")
            mode = "ab"
        else:
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            part.open(mode) as fh,
            tqdm.wrapattr(
                fh, "write", total=total, initial=offset, desc=part.name, disable=not progress
            ) as out,
        ):
            shutil.copyfileobj(response, out, _CHUNK_BYTES)
