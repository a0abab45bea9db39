"""A fingerprint of the code that determines a run's result, stored in every record.

After a fix in ``pst/`` a record made by the old code must not pass for a current one:
runners, ``reproduce.py`` and the report compare a record's fingerprint with this one.
It covers the core library and the parts of the reproduction that train, load data and
score (not the report, the profiles or the notebooks: a run's settings are in its config).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the ``pst`` folder
#: Source files (relative to ``pst/``) whose content can change what a run computes.
FINGERPRINTED = ("*.py", "repro/configs.py", "repro/glue_tasks.py", "repro/models.py", "repro/data/**/*.py",
                 "repro/metrics/**/*.py", "repro/runners/**/*.py")
LENGTH = 16


def fingerprinted_files(root: Path = PACKAGE_ROOT) -> list[Path]:
    """The files :func:`code_fingerprint` reads, sorted, relative to ``root``."""
    return sorted({path.relative_to(root) for pattern in FINGERPRINTED for path in root.glob(pattern)
                   if path.is_file() and "__pycache__" not in path.parts})


@functools.cache
def code_fingerprint(root: Path = PACKAGE_ROOT) -> str:
    """sha256 over the names and contents of :func:`fingerprinted_files` (line endings normalised,
    so a Windows checkout of the same commit agrees), first 16 hex digits."""
    digest = hashlib.sha256()
    for relative in fingerprinted_files(root):
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update((root / relative).read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()[:LENGTH]
