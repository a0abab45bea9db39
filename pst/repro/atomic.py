"""The one way this package writes a file that others read: whole or not at all.

Runs get killed and disks fill up; a reader (the report, a rerun, another machine's copy)
must see the old file or the new one, never a part. Records, tables, figures, score files
and ``reproduce.py``'s state all go through :func:`write_atomic`.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

#: Mode of written files: readable by everyone, like a plain ``open(path, "w")`` under umask 022.
FILE_MODE = 0o644


def write_atomic(path: Path | str, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, rename it onto ``path``.

    The temporary file is in the same folder (same file system, so the rename is atomic) and
    is removed if ``write`` or the rename fails; ``path`` then keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync(tmp, os.O_RDONLY)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY)  # make the rename itself durable where the OS allows it
    logger.debug("wrote %s", path)
    return path


def write_text_atomic(path: Path | str, text: str) -> Path:
    """:func:`write_atomic` for text (UTF-8)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync(path: Path, flags: int) -> None:
    """Flush a file's (or a folder's) data to disk; harmless where the OS refuses (folders on Windows)."""
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
