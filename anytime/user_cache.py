"""Arrays worth keeping between runs, in the user's cache directory.

Some results take seconds to compute from a catalog and never change for
it (the option table's exit behaviour: every calibrated exit setting over
10,000 test samples).  They are kept as ``.npz`` files named by a hash of
everything they are computed from, so a changed catalog never meets a stale
entry.  The folder is ``$ANYTIME_CACHE_DIR``, else
``$XDG_CACHE_HOME/anytime``, else ``~/.cache/anytime``; deleting it is always
safe.  Entries are read with ``allow_pickle=False`` and checked by the
caller; an entry that cannot be read, or a folder that cannot be written, is
logged and ignored: the cache only ever saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

__all__ = ["cache_dir", "cached_arrays", "content_key"]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where cached arrays live (module docstring)."""
    if os.environ.get("ANYTIME_CACHE_DIR"):
        return Path(os.environ["ANYTIME_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "anytime"


def content_key(parts: Iterable[np.ndarray | str | bytes]) -> str:
    """A hash of arrays (their dtype, shape and bytes) and strings: BLAKE2b
    (a key, not a checksum anyone records; twice sha256's speed on CPUs
    without SHA instructions, and hashing the traces is most of a warm
    ``anytime select``), read from the arrays' own memory, not a copy."""
    digest = hashlib.blake2b(digest_size=32)
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).reshape(-1).view(np.uint8).data)
        else:
            digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def cached_arrays(kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]],
                  valid: Callable[[dict[str, np.ndarray]], bool]) -> dict[str, np.ndarray]:
    """The arrays kept under ``kind`` and ``key``, or ``compute()``'s, which
    are then kept.  ``valid`` checks what was read (shapes, finiteness): an
    entry that fails it is computed again and replaced."""
    path = cache_dir() / f"{kind}-{key}.npz"
    found = _read(path)
    if found is not None and valid(found):
        return found
    arrays = compute()
    _write(path, arrays)
    return arrays


def _read(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        log.warning("ignoring unreadable cache entry %s: %s", path, exc)
        return None


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write beside and rename into place, so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    except OSError as exc:
        log.info("not caching %s: %s", path.name, exc)
        return
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(staging, path)
    except OSError as exc:
        log.info("not caching %s: %s", path.name, exc)
        with contextlib.suppress(OSError):
            os.unlink(staging)
