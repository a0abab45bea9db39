"""Records are written atomically, read back identically, found by id and filters; shards partition."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pst.repro import results
from pst.repro.results import (
    environment_info,
    git_commit,
    iter_records,
    parse_shard,
    read_record,
    record_path,
    records_frame,
    run_id,
    in_shard,
    write_record,
)

CONFIG = {
    "task": "rte",
    "method": "pst",
    "sparsity": 0.9,
    "learning_rate": 5e-5,
    "epochs": 20,
    "seed": 42,
    "pst": {"weight_rank": 8, "mask_rank": 8},
}


def _record(**overrides) -> dict:
    record = {
        "run_id": run_id(CONFIG),
        "task": "rte",
        "method": "pst",
        "config": CONFIG,
        "metrics": {"accuracy": 0.7, "loss": 0.5},
    }
    record.update(overrides)
    return record


# --------------------------------------------------------------------------- run ids


def test_run_id_is_readable_and_stable() -> None:
    identifier = run_id(CONFIG)
    assert identifier.startswith("rte-pst-sp0.9-lr5e-05-ep20-seed42-")
    assert run_id(json.loads(json.dumps(CONFIG))) == identifier
    reordered = dict(reversed(list(CONFIG.items())))
    assert run_id(reordered) == identifier


def test_run_id_is_fixed_across_versions() -> None:
    """Records on disk are found by id: the id of a config must not drift between releases.

    (Pinned again when run ids lost their experiment folder: a run is its config alone.)
    """
    pinned = {"task": "t", "seed": 1, "learning_rate": 1e-4}
    assert run_id(pinned) == "t-lr0.0001-seed1-a33da5ac81"
    assert len(run_id(CONFIG).rsplit("-", 1)[1]) == results.HASH_LENGTH


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"learning_rate": 3e-5},
        {"task": "mrpc"},
        {"pst": {"weight_rank": 8, "mask_rank": 4}},
        {"extra_setting": True},
        {"epochs": 20.0},  # a different type is a different setting
    ],
)
def test_any_config_change_changes_the_id(change: dict) -> None:
    assert run_id({**CONFIG, **change}) != run_id(CONFIG)


def test_run_id_is_one_safe_file_name() -> None:
    identifier = run_id({"task": "../evil task", "method": "p/s t"})
    assert len(Path(identifier).parts) == 1 and " " not in identifier and not identifier.startswith(".")
    assert results.check_name(identifier) == identifier
    assert run_id({}) == results.config_hash({})


def test_run_id_rejects_non_dicts_and_nan() -> None:
    with pytest.raises(ValueError, match="dict"):
        run_id(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        run_id({"learning_rate": math.nan})


def test_record_path_refuses_escapes(tmp_path: Path) -> None:
    assert record_path(tmp_path, "r") == tmp_path / "runs" / "r.json"
    for bad in ("../x", "/abs/x", "e/r", "e/../../x", "", ".hidden"):
        with pytest.raises(ValueError, match="run id"):
            record_path(tmp_path, bad)


# --------------------------------------------------------------------------- write / read


def test_round_trip(tmp_path: Path) -> None:
    record = _record()
    path = record_path(tmp_path, record["run_id"])
    write_record(path, record)
    assert read_record(path) == record
    text = path.read_text()
    assert text.endswith("\n") and text.startswith("{\n  ")
    assert list(json.loads(text)) == sorted(record)


def test_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "run.json"
    write_record(path, _record())
    write_record(path, _record(metrics={"accuracy": 0.8}))
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]
    assert read_record(path)["metrics"] == {"accuracy": 0.8}


def test_crash_before_replace_keeps_old_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.json"
    write_record(path, _record())
    old_text = path.read_text()

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(results.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_record(path, _record(metrics={"accuracy": 0.99}))
    assert path.read_text() == old_text
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_reader_never_sees_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the moment of the rename the temp file is complete; the target is never written in place."""
    path = tmp_path / "run.json"
    write_record(path, _record())
    seen: list[dict | None] = []
    real_replace = os.replace

    def checking_replace(src, dst):
        seen.append(read_record(dst))  # what a concurrent reader would see now: the old record
        assert json.loads(Path(src).read_text())["metrics"] == {"accuracy": 0.5}  # new one, whole
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", checking_replace)
    write_record(path, _record(metrics={"accuracy": 0.5}))
    assert seen == [_record()]
    assert read_record(path)["metrics"] == {"accuracy": 0.5}


def test_failing_writer_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Tables, figures and score files use the same writer as records, with any write function."""
    from pst.repro.atomic import FILE_MODE, write_atomic

    path = tmp_path / "figure.png"
    assert write_atomic(path, lambda tmp: tmp.write_bytes(b"old")) == path

    def half_written(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_written)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    assert path.stat().st_mode & 0o777 == FILE_MODE


def test_unserialisable_record_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    with pytest.raises(ValueError, match=r"record\.metrics\.bad has type object"):
        write_record(path, _record(metrics={"bad": object()}))
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_nonfinite_floats_are_encoded_as_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    metrics = {"pearson": math.nan, "up": math.inf, "down": -math.inf, "list": [1.0, math.nan]}
    record = _record(metrics=metrics)
    write_record(path, record)
    raw = json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"non-strict JSON {token}"))
    assert raw["metrics"]["pearson"] == "NaN" and raw["metrics"]["up"] == "Infinity"
    back = read_record(path)["metrics"]
    assert math.isnan(back["pearson"]) and math.isnan(back["list"][1])
    assert back["up"] == math.inf and back["down"] == -math.inf


def test_numpy_scalars_become_plain_numbers(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_record(path, _record(metrics={"f1": np.float32(0.5), "n": np.int64(3), "nan": np.float64("nan")}))
    metrics = read_record(path)["metrics"]
    assert metrics["f1"] == 0.5 and metrics["n"] == 3 and type(metrics["n"]) is int
    assert math.isnan(metrics["nan"])


def test_read_missing_is_none_and_corrupt_is_an_error(tmp_path: Path) -> None:
    assert read_record(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text('{"truncated": ')
    with pytest.raises(ValueError, match="bad.json"):
        read_record(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_record(tmp_path / "list.json")


# --------------------------------------------------------------------------- query


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    for model, task, method, accuracy in [
        ("bert", "rte", "pst", 0.7),
        ("bert", "rte", "magnitude", 0.6),
        ("bert", "mrpc", "pst", 0.8),
        ("roberta", "rte", "pst", 0.75),
    ]:
        config = {**CONFIG, "model": model, "task": task, "method": method}
        record = {"run_id": run_id(config), "model": model, "task": task, "method": method,
                  "config": config, "metrics": {"accuracy": accuracy}}
        write_record(record_path(tmp_path, record["run_id"]), record)
    (tmp_path / "runs" / ".leftover.json.abc.tmp").write_text("{partial")
    return tmp_path


def test_iter_records_filters(populated: Path) -> None:
    assert len(list(iter_records(populated))) == 4
    pst_rte = list(iter_records(populated, task="rte", method="pst"))
    assert {r["model"] for r in pst_rte} == {"bert", "roberta"}
    assert len(list(iter_records(populated, model="bert"))) == 3
    assert len(list(iter_records(populated, task=["rte", "mrpc"], model="bert"))) == 3
    assert list(iter_records(populated, task="cola")) == []
    assert list(iter_records(populated, no_such_field="x")) == []
    assert list(iter_records(populated / "missing")) == []


def test_records_frame_flattens(populated: Path) -> None:
    frame = records_frame(populated, model="bert")
    assert len(frame) == 3
    assert {"metrics.accuracy", "config.pst.weight_rank", "task", "method"} <= set(frame.columns)
    assert sorted(frame["metrics.accuracy"]) == [0.6, 0.7, 0.8]
    assert records_frame(populated, task="cola").empty


# --------------------------------------------------------------------------- environment


def test_environment_info_keys() -> None:
    info = environment_info()
    expected = {"python", "torch", "transformers", "datasets", "pst", "platform", "device", "git_commit"}
    assert set(info) >= expected
    assert info["torch"] and info["transformers"] and info["pst"]
    assert info["device"] == "cpu" or isinstance(info["device"], str)
    json.dumps(info)  # storable in a record as is


def test_environment_info_never_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(results, "_device_name", broken)
    monkeypatch.setenv("PATH", "")  # no git
    info = environment_info()
    assert info["device"] == "unknown" and info["git_commit"] is None


def _git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_reports_head_and_dirty(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    assert git_commit(repo) is None  # not a checkout
    _git(repo, "init", "-q")
    (repo / "tracked.py").write_text("x = 1\n")
    _git(repo, "add", "tracked.py")
    _git(repo, "commit", "-q", "-m", "init")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == head
    (repo / "untracked_output.json").write_text("{}")
    assert git_commit(repo) == head  # run outputs do not make the tree dirty
    (repo / "tracked.py").write_text("x = 2\n")
    assert git_commit(repo) == f"{head}-dirty"
    (repo / "sub").mkdir()
    assert git_commit(repo / "sub") is None  # only the checkout's root counts


# --------------------------------------------------------------------------- shards


@pytest.mark.parametrize(("text", "expected"), [("0/1", (0, 1)), ("2/4", (2, 4)), (" 1 / 3 ", (1, 3))])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("3/2", r"i=3 must satisfy 0 <= i < n=2"),
        ("2/2", r"0-based"),
        ("a/b", r"'a/b' is not of the form 'i/n'"),
        ("0/0", r"n=0 must be >= 1"),
        ("-1/2", r"not of the form"),
        ("1", r"not of the form"),
        ("1/2/3", r"not of the form"),
    ],
)
def test_parse_shard_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_shard(text)


def test_a_runs_shard_follows_from_its_config_alone() -> None:
    """The same run is in the same shard whichever list (experiment, notebook) it comes in."""
    assert in_shard(CONFIG, 0, 1)
    owner = next(index for index in range(3) if in_shard(CONFIG, index, 3))
    assert in_shard(json.loads(json.dumps(CONFIG)), owner, 3)
    assert int(results.config_hash(CONFIG), 16) % 3 == owner
    with pytest.raises(ValueError, match="0 <= i < n"):
        in_shard(CONFIG, 3, 3)


@given(seeds=st.lists(st.integers(), max_size=50, unique=True), count=st.integers(min_value=1, max_value=8))
def test_shards_partition_runs(seeds: list[int], count: int) -> None:
    configs = [{**CONFIG, "seed": seed} for seed in seeds]
    owners = [[index for index in range(count) if in_shard(config, index, count)] for config in configs]
    assert all(len(found) == 1 for found in owners)  # every run in exactly one shard


def test_shards_are_roughly_balanced() -> None:
    configs = [{**CONFIG, "seed": seed} for seed in range(400)]
    sizes = [sum(in_shard(config, index, 4) for config in configs) for index in range(4)]
    assert sum(sizes) == 400 and min(sizes) > 70  # 100 expected each
