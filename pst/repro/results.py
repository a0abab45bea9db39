"""Results records: one JSON file per run, written atomically, queried by the report.

A record is the only thing a run leaves for the report, so it must never be
half-written (runs get killed), must be valid JSON for any tool that reads it,
and must say which code and environment produced it.

Layout: ``<results_dir>/runs/<run_id>.json`` where :func:`run_id` gives
``<task>-<method>-…-<hash>`` from the run's config alone, so a run that several
experiments ask for has one record (which experiments refer to it is kept beside,
see :mod:`pst.repro.experiments`). Side files of a run (decoded outputs, score
matrices) sit next to its record.

Non-finite floats: JSON has no NaN or infinity, and a metric can honestly be
NaN (Pearson correlation of constant predictions). Rather than crash the run at
its very end, :func:`write_record` stores them as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"``, and :func:`read_record` turns exactly those
strings back into floats. So a record is always strict JSON and round-trips.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

RECORD_SUFFIX = ".json"
#: How non-finite floats are spelled inside a record (see module docstring).
NONFINITE_TOKENS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
HASH_LENGTH = 10
#: The folder of ``results_dir`` that holds the records.
RUNS_FOLDER = "runs"

# Config keys shown in the readable part of a run id, with the label used there.
# Several spellings are accepted so runners need not rename their settings.
_ID_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sp", ("sparsity", "target_sparsity")),
    ("lr", ("learning_rate", "lr")),
    ("ep", ("epochs", "num_train_epochs")),
    ("seed", ("seed",)),
    ("ws", ("world_size",)),  # only in configs of several processes (see GlueRunConfig.run_id)
)
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]*")


# --------------------------------------------------------------------------- run ids


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no whitespace, strict JSON.

    Paths and other non-JSON leaves are written with ``str``; ``1`` and ``1.0``
    stay different, as they are different settings to Python.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError as error:
        raise ValueError(f"config cannot be hashed: {error} (NaN and infinity are not accepted)") from error


def config_hash(config: dict[str, Any], length: int = HASH_LENGTH) -> str:
    """Short sha256 of the canonical JSON: the part of the id that guarantees distinctness."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:length]


def run_id(config: dict[str, Any]) -> str:
    """A stable id such as ``rte-pst-sp0.9-lr5e-05-ep20-seed42-1a2b3c4d5e``, one safe file name.

    The readable part (task, method, sparsity, learning rate, epochs, seed, and the
    world size and global batch of a multi-process run, when present at the top level)
    helps people browse; the hash of the whole config
    makes any change, anywhere in it, give a new id, and equal configs one id.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    parts = [_slug(config[key]) for key in ("task", "method") if config.get(key) is not None]
    for label, keys in _ID_FIELDS:
        value = next((config[key] for key in keys if config.get(key) is not None), None)
        if value is not None:
            parts.append(label + _slug(_format_value(value)))
    if config.get("world_size") is not None and config.get("batch_size") is not None:
        parts.append("gb" + _slug(config["world_size"] * config["batch_size"]))  # the global batch
    parts.append(config_hash(config))
    return "-".join(parts)


def _format_value(value: Any) -> str:
    """Floats in short form (5e-05, 0.9) so ids stay readable."""
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def _slug(value: Any) -> str:
    """Keep ids safe as file names on every OS: no separators, spaces or odd characters."""
    text = _UNSAFE_CHARS.sub("_", str(value)).strip("._")
    return text or "_"


def check_name(name: str, what: str = "run id") -> str:
    """Refuse a run id or experiment name that is not one safe file name (no folders, no dots first)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a safe file name: letters, digits and ._+=- only, "
                         "not starting with a dot")
    return name


def record_path(results_dir: Path | str, run_id_: str) -> Path:
    """Where the record of ``run_id_`` lives: ``<results_dir>/runs/<run_id>.json``."""
    return Path(results_dir) / RUNS_FOLDER / f"{check_name(run_id_)}{RECORD_SUFFIX}"


# --------------------------------------------------------------------------- write / read


def write_record(path: Path | str, record: dict[str, Any]) -> None:
    """Write ``record`` so that readers see the old file or the new one, never a part."""
    if not isinstance(record, dict):
        raise ValueError(f"record must be a dict, got {type(record).__name__}")
    write_text_atomic(path, json.dumps(encode_nonfinite(record), sort_keys=True, indent=2, allow_nan=False) + "\n")


def write_jsonl(path: Path | str, rows: Iterable[dict[str, Any]]) -> None:
    """Side files of a run (e.g. decoded outputs), one JSON object a line, written atomically.

    Not ``.json``: only records carry that suffix, so readers of records never see them.
    """
    lines = [json.dumps(encode_nonfinite(row), sort_keys=True, allow_nan=False) for row in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    return [decode_nonfinite(json.loads(line)) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def read_record(path: Path | str) -> dict[str, Any] | None:
    """The record at ``path``, or ``None`` if there is none; a corrupt file is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"record {path} is not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f"record {path} holds a {type(record).__name__}, expected a JSON object")
    return decode_nonfinite(record)


def encode_nonfinite(value: Any, where: str = "record") -> Any:
    """Make ``value`` strict JSON: NaN/inf floats become their string tokens, at any depth.

    Numpy scalars (what metric libraries return) become Python numbers and
    paths become strings; any other non-JSON type is refused, naming the field.
    """
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        bad_keys = [key for key in value if not isinstance(key, str)]
        if bad_keys:
            raise ValueError(f"{where} has a non-string key {bad_keys[0]!r}; JSON objects need str keys")
        return {key: encode_nonfinite(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_nonfinite(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise ValueError(
        f"{where} has type {type(value).__name__}, which JSON cannot hold; "
        "expected dict, list, str, int, float, bool or None"
    )


def decode_nonfinite(value: Any) -> Any:
    """Inverse of :func:`encode_nonfinite`: exactly the three tokens become floats again."""
    if isinstance(value, str):
        return NONFINITE_TOKENS.get(value, value)
    if isinstance(value, dict):
        return {key: decode_nonfinite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_nonfinite(item) for item in value]
    return value


# --------------------------------------------------------------------------- query


def iter_records(results_dir: Path | str, **filters: Any) -> Iterator[dict[str, Any]]:
    """Records under ``results_dir`` (sorted by path) whose top-level fields match ``filters``.

    A filter value that is a list, tuple or set matches any of its members,
    e.g. ``iter_records(d, task=["rte", "mrpc"], method="pst")``. A record that
    lacks a filtered field does not match. Temporary files are never read.
    """
    results_dir = Path(results_dir)
    if not results_dir.exists():
        return
    if not results_dir.is_dir():
        raise ValueError(f"results_dir {results_dir} is not a folder")
    for path in sorted(results_dir.rglob(f"*{RECORD_SUFFIX}")):
        if path.name.startswith(".") or not path.is_file():
            continue
        record = read_record(path)
        if record is not None and _matches(record, filters):
            yield record


def _matches(record: dict[str, Any], filters: dict[str, Any]) -> bool:
    for key, wanted in filters.items():
        if key not in record:
            return False
        accepted = wanted if isinstance(wanted, (list, tuple, set, frozenset)) else (wanted,)
        if record[key] not in accepted:
            return False
    return True


def records_frame(results_dir: Path | str, **filters: Any) -> "pd.DataFrame":
    """The matching records as a table, nested fields flattened with dots (``metrics.accuracy``)."""
    import pandas as pd  # only the report needs pandas

    records = list(iter_records(results_dir, **filters))
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records, sep=".")


# --------------------------------------------------------------------------- environment


def environment_info() -> dict[str, Any]:
    """What produced a record: versions, platform, device and git commit. Never raises."""
    return {
        "python": platform.python_version(),
        "torch": _package_version("torch"),
        "transformers": _package_version("transformers"),
        "datasets": _package_version("datasets"),
        "pst": _pst_version(),
        "platform": _safe(platform.platform, "unknown"),
        "device": _safe(_device_name, "unknown"),
        "git_commit": git_commit(),
    }


def _safe(function: Any, fallback: Any) -> Any:
    try:
        return function()
    except Exception as error:  # environment probing must not kill a finished run
        logger.warning("environment probe %s failed: %s", getattr(function, "__name__", function), error)
        return fallback


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pst_version() -> str:
    """Installed version if pst is installed, else the package's own ``__version__``."""
    try:
        return importlib.metadata.version("pst")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("pst"), "__version__", "unknown"))


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def git_commit(repo_root: Path | str | None = None) -> str | None:
    """``HEAD`` of the checkout holding the ``pst`` package, ``-dirty`` if tracked files changed.

    ``None`` when git is missing or the package is not in a git checkout (an
    installed wheel inside someone else's repository does not count). Like
    ``git describe --dirty``, untracked files are ignored: run outputs written
    into the checkout must not mark every record dirty.
    """
    root = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[2]
    toplevel = _git(root, "rev-parse", "--show-toplevel")
    if toplevel is None or Path(toplevel).resolve() != root.resolve():
        return None
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if status else commit


def _git(cwd: Path, *args: str) -> str | None:
    """Output of a git command, or ``None`` if git is missing, fails or hangs."""
    try:
        # No optional locks: never take index.lock, which a concurrent `git commit` needs.
        result = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip()


# --------------------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based: shard ``i`` of ``n``, ``0 <= i < n``) from a command line."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match is None:
        raise ValueError(f"shard {text!r} is not of the form 'i/n' with integers 0 <= i < n, e.g. '0/4'")
    index, count = int(match.group(1)), int(match.group(2))
    _check_shard(index, count)
    return index, count


def _check_shard(index: int, count: int) -> None:
    for name, value in (("index i", index), ("count n", count)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"shard {name}={value!r} must be an int")
    if count < 1:
        raise ValueError(f"shard count n={count} must be >= 1")
    if not 0 <= index < count:
        raise ValueError(f"shard index i={index} must satisfy 0 <= i < n={count} (shards are 0-based)")


def in_shard(config: dict[str, Any], index: int, count: int) -> bool:
    """Whether the run of ``config`` belongs to shard ``index`` of ``count``, by its config hash.

    The hash, not a position in a list, decides: a run that several experiments or
    notebooks share lands in the same shard everywhere, so it trains on one machine only.
    Over ``index = 0 .. count-1`` the shards partition any set of runs.
    """
    _check_shard(index, count)
    return int(config_hash(config), 16) % count == index


__all__ = [
    "canonical_json", "config_hash", "decode_nonfinite", "encode_nonfinite", "environment_info",
    "check_name", "git_commit", "in_shard", "iter_records", "parse_shard", "read_jsonl", "read_record", "record_path",
    "records_frame", "run_id", "write_jsonl", "write_text_atomic", "write_record",
]
