"""Atomic file writes that leave files with the usual permissions.

A file is written under a temporary name in the same folder, flushed to disk and renamed over
the target, so a reader (or a crash) never sees half a file. The temporary file is created
with `os.open(..., 0o666)`, so the process umask (and a folder's default ACL) decides its
mode exactly as for `open(path, "w")`; `tempfile.mkstemp` would create it 0600, and the rename
would carry that private mode over to every checkpoint and report.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


# `.NAME.HEX.tmp`: the temporary name `_create_temporary` gives (12 hex digits: token_hex(6)).
TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create a new hidden file beside `path` (O_EXCL: never someone else's) → (fd, its path)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces `path` only when the block ends without error.

    On an error the temporary file is removed and `path` keeps its earlier content (if any).
    The parent folder must exist.
    """
    path = Path(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) in one rename; returns `path`."""
    path = Path(path)
    with atomic_open(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def stale_temporaries(folder: str | Path) -> list[Path]:
    """The temporary files `atomic_open` leaves in `folder` when its process is killed mid-write
    (a live writer's look the same: only their owner may judge them stale)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if TEMPORARY_NAME.fullmatch(p.name) and p.is_file())
