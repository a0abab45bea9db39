#!/usr/bin/env python
"""Regenerate every table and figure of the PST paper by executing the notebooks with papermill.

    python reproduce.py --all                      # smoke profile: tiny models, synthetic data, CPU, minutes
    python reproduce.py --all --profile paper      # the paper's models, data and grids (GPU machine)
    python reproduce.py --only 03_glue_bert -p "learning_rates=[1e-4]"
    python reproduce.py --all --profile paper --shard 0/4   # this machine's quarter of the runs
    python reproduce.py --list | --dry-run

Executed notebooks are kept under <out>/executed; every run leaves a results record, so a
rerun (or an interrupted --all) skips finished work. A failing notebook is reported with
its failing cell and error; the others still run and the exit status is non-zero.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = (
    "01_quickstart",
    "02_importance_scores",
    "03_glue_bert",
    "04_glue_roberta",
    "05_nlg_gpt2",
    "06_ablations",
    "07_report",
)
ALWAYS_RERUN = {"07_report"}  # cheap, and it must see every record (other shards included)

logger = logging.getLogger("reproduce")


def planned_runs(name: str, profile: str) -> list:
    """The training runs a notebook launches (for --dry-run)."""
    from pst.repro import profiles

    plans = {
        "02_importance_scores": lambda: profiles.analysis_runs(profile),
        "03_glue_bert": lambda: profiles.glue_runs(profile, "bert"),
        "04_glue_roberta": lambda: profiles.glue_runs(profile, "roberta"),
        "05_nlg_gpt2": lambda: profiles.nlg_runs(profile),
        "06_ablations": lambda: (profiles.flatten(profiles.score_ablation_runs(profile))
                                 + profiles.flatten(profiles.rank_ablation_runs(profile))
                                 + profiles.flatten(profiles.sparsity_sweep_runs(profile))),
    }
    return plans[name]() if name in plans else []


def parse_parameter(text: str) -> tuple[str, object]:
    """``key=value`` with value read as a Python literal when it is one (numbers, lists), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"parameter {text!r} is not of the form key=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every notebook, in order, then the report")
    which.add_argument("--only", nargs="+", metavar="NAME", help="these notebooks (names from --list)")
    which.add_argument("--list", action="store_true", help="list the notebooks and exit")
    parser.add_argument("--profile", choices=("smoke", "paper"), default="smoke")
    parser.add_argument("-p", "--parameter", action="append", type=parse_parameter, default=[],
                        metavar="KEY=VALUE", help="papermill parameter override (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (default: ./out)")
    parser.add_argument("--force", action="store_true", help="redo finished runs and notebooks")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (runs, estimated cost) and exit")
    parser.add_argument("--shard", help="i/n: run only shard i (0-based) of n of each grid")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)
    if args.only:
        unknown = [name for name in args.only if name not in NOTEBOOKS]
        if unknown:
            parser.error(f"unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}")
    if args.shard is not None:
        from pst.repro.results import parse_shard

        try:
            parse_shard(args.shard)
        except ValueError as error:
            parser.error(str(error))
    return args


def notebook_parameters(args: argparse.Namespace) -> dict:
    return {"profile": args.profile, "out_dir": str(args.out.resolve()), "shard": args.shard,
            "force": bool(args.force), **dict(args.parameter)}


def dry_run(names: list[str], args: argparse.Namespace) -> None:
    from pst.repro import profiles
    from pst.repro.results import record_exists, run_id
    from pst.repro.workspace import Workspace, shard_of
    import dataclasses

    results = Workspace(args.out.resolve()).results
    total_todo = []
    print(f"profile: {args.profile}   output: {args.out.resolve()}   shard: {args.shard or 'all'}")
    for name in names:
        runs = shard_of(planned_runs(name, args.profile), args.shard)
        todo = [r for r in runs if args.force or not record_exists(results, run_id(dataclasses.asdict(r)))]
        total_todo += todo
        print(f"  {name:<22} {len(runs):>4} runs, {len(runs) - len(todo):>4} done, {len(todo):>4} to do")
    hours = profiles.estimated_gpu_hours(total_todo)
    cost = (f"about {hours:,.0f} GPU-hours (assumed throughput, see pst.repro.profiles.ASSUMED_STEPS_PER_SECOND)"
            if args.profile == "paper" else "minutes on a CPU")
    print(f"to do: {len(total_todo)} runs; estimated cost: {cost}")


def _state_path(out: Path) -> Path:
    return out / "executed" / "state.json"


def _load_state(out: Path) -> dict:
    path = _state_path(out)
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(out: Path, state: dict) -> None:
    from pst.repro.atomic import write_text_atomic

    write_text_atomic(_state_path(out), json.dumps(state, indent=2, sort_keys=True))


def _fingerprint(name: str, parameters: dict) -> str:
    source = (NOTEBOOK_DIR / f"{name}.ipynb").read_bytes()
    return hashlib.sha256(source + json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]


def execute(name: str, parameters: dict, out: Path, timeout: int | None) -> None:
    import papermill

    output = out / "executed" / f"{name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / f"{name}.ipynb"), str(output), parameters=parameters, cwd=str(NOTEBOOK_DIR),
        kernel_name="python3", progress_bar=False, log_output=False, execution_timeout=timeout,
    )


def describe_failure(name: str, error: Exception) -> str:
    """Name, failing cell and error of a failed notebook (papermill's error carries them)."""
    cell = getattr(error, "exec_count", None)
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    where = f"cell [{cell}]" if cell is not None else "before any cell ran"
    return f"{name}: failed in {where}: {ename}: {evalue}".strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list:
        for name in NOTEBOOKS:
            print(name)
        return 0
    names = list(NOTEBOOKS) if args.all else list(args.only)
    if args.dry_run:
        dry_run(names, args)
        return 0
    out = args.out.resolve()
    parameters = notebook_parameters(args)
    state = _load_state(out)
    failures = []
    started = time.time()
    for position, name in enumerate(names, 1):
        fingerprint = _fingerprint(name, parameters)
        done = state.get(name, {})
        if not args.force and name not in ALWAYS_RERUN and done.get("fingerprint") == fingerprint and done.get("ok"):
            logger.info("[%d/%d] %s: finished earlier with the same parameters, skipped", position, len(names), name)
            continue
        logger.info("[%d/%d] %s ...", position, len(names), name)
        t0 = time.time()
        try:
            execute(name, parameters, out, args.timeout)
        except Exception as error:  # noqa: BLE001 - reported, counted, and the exit status says so
            message = describe_failure(name, error)
            failures.append(message)
            logger.error("[%d/%d] %s", position, len(names), message)
            state[name] = {"fingerprint": fingerprint, "ok": False, "error": message}
        else:
            logger.info("[%d/%d] %s done in %.0f s", position, len(names), name, time.time() - t0)
            state[name] = {"fingerprint": fingerprint, "ok": True, "seconds": round(time.time() - t0, 1)}
        _save_state(out, state)
    logger.info("finished in %.0f s; outputs in %s", time.time() - started, out)
    if failures:
        logger.error("%d notebook(s) failed:\n%s", len(failures), "\n".join(f"  {m}" for m in failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
