#!/usr/bin/env python
"""Regenerate every table and figure of the PST paper by executing the notebooks with papermill.

    python reproduce.py --all                      # smoke profile: tiny models, synthetic data, CPU, minutes
    python reproduce.py --all --profile paper      # the paper's models, data and grids (GPU machine)
    python reproduce.py --only 04_glue_bert -p "tasks=['rte']"
    python reproduce.py --all --profile paper --shard 0/4   # this machine's quarter of the runs
    python reproduce.py --list | --dry-run [-v]

Before anything runs, the plan is printed: per notebook, its runs, how many are done and how
many will train, decided as the runners decide (``--dry-run`` stops there). A run that several
experiments share trains once. A ``-p`` name that no selected notebook takes is refused. An
unreadable record is moved aside and its run redone. Records made by other code (another
version of ``pst/``) stop everything before training unless ``--rerun-stale`` (redo them) or
``--keep-stale-records`` (use them) says what to do; ``--force`` redoes every run.

Notebooks that share no run execute side by side (``--jobs``; by default two at a time in the
smoke profile, where tiny models leave a CPU core idle, one at a time in the paper profile);
notebooks sharing a run execute one after the other, so it trains once, and the report last.
Executed notebooks are kept under <out>/executed. A failing notebook is reported with its
failing cell and error; the others still run. Exit status: 0 done, 1 a notebook failed,
2 bad arguments, 3 records made by other code were found and nothing ran.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = (
    "01_quickstart",
    "02_inside_a_layer",
    "03_importance_scores",
    "04_glue_bert",
    "05_glue_roberta",
    "06_nlg_gpt2",
    "07_ablations",
    "08_new_model",
    "09_report",
)
ALWAYS_RERUN = {"09_report"}  # cheap, and it must see every record (other shards included)
RUN_LAST = {"09_report"}  # reads what every other notebook wrote
#: Notebook parameters that this script's own flags set; ``-p`` cannot override them.
FLAG_PARAMETERS = {"profile": "--profile", "out_dir": "--out", "shard": "--shard", "force": "--force",
                   "stale_records": "--rerun-stale / --keep-stale-records"}
EXIT_STALE = 3

logger = logging.getLogger("reproduce")


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


def notebook_parameters(name: str) -> dict[str, str]:
    """The parameters cell of a notebook: name -> default value as written there (papermill reads it)."""
    import papermill

    return {key: spec["default"] for key, spec in papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb")).items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every notebook, in order, then the report")
    which.add_argument("--only", nargs="+", metavar="NAME", help="these notebooks, in this order (names from --list)")
    which.add_argument("--list", action="store_true", help="list the notebooks and exit")
    parser.add_argument("--profile", choices=("smoke", "paper"), default="smoke")
    parser.add_argument("-p", "--parameter", action="append", type=parse_parameter, default=[],
                        metavar="KEY=VALUE", help="notebook parameter (repeatable), passed to the notebooks that take it")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (default: ./out)")
    parser.add_argument("--force", action="store_true",
                        help="redo every run and notebook (a run shared by several experiments is redone once)")
    stale = parser.add_mutually_exclusive_group()
    stale.add_argument("--rerun-stale", action="store_true", help="redo the runs whose records other code made")
    stale.add_argument("--keep-stale-records", action="store_true",
                       help="use records that other code made as they are (the plan says how many)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (runs, estimated cost) and exit")
    parser.add_argument("--step-times", nargs="+", type=Path, metavar="FILE",
                        help="benchmarks/train_step.py --json outputs measured on your GPU: the paper profile's cost "
                             "is estimated from them instead of assumed rates")
    parser.add_argument("-v", "--verbose", action="store_true", help="with the plan, list every run and its fate")
    parser.add_argument("--shard", help="i/n: run only shard i (0-based) of n of the runs")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks executed side by side, among those that share no run (default: 2 in the "
                             "smoke profile on a machine with 2 or more CPUs, else 1)")
    parser.add_argument("--update-notebooks", action="store_true",
                        help="write each notebook that ran without error back over its source in notebooks/, with "
                             "its outputs (smoke profile, no -p or --shard: the committed notebooks show that run)")
    args = parser.parse_args(argv)
    if args.list:
        return args
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
    if args.update_notebooks and (args.profile != "smoke" or args.parameter or args.shard or args.dry_run):
        parser.error("--update-notebooks writes the smoke run of the notebooks' own defaults: "
                     "use it with --profile smoke and without -p, --shard or --dry-run")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs is None:
        args.jobs = min(2, os.cpu_count() or 1) if args.profile == "smoke" else 1
    args.names = list(NOTEBOOKS) if args.all else list(args.only)
    args.declared = {name: notebook_parameters(name) for name in args.names}
    for key, _ in args.parameter:
        if key in FLAG_PARAMETERS:
            parser.error(f"parameter {key!r} is set with {FLAG_PARAMETERS[key]}, not with -p")
        if not any(key in declared for declared in args.declared.values()):
            accepted = "; ".join(f"{name}: {', '.join(k for k in declared if k not in FLAG_PARAMETERS) or 'none'}"
                                 for name, declared in args.declared.items())
            parser.error(f"unknown parameter {key!r}: no selected notebook takes it. Their parameters: {accepted}")
    return args


def common_parameters(args: argparse.Namespace, started: float) -> dict:
    """The values of :data:`FLAG_PARAMETERS`. ``--force`` passes this invocation's start time:
    records finished before it are redone, so a run shared by several notebooks is redone once."""
    stale_records = "rerun" if args.rerun_stale else "keep" if args.keep_stale_records else "refuse"
    return {"profile": args.profile, "out_dir": str(args.out.resolve()), "shard": args.shard,
            "force": started if args.force else False, "stale_records": stale_records}


def parameters_for(name: str, args: argparse.Namespace, common: dict) -> dict:
    """What papermill passes to notebook ``name``: the parameters its parameters cell declares."""
    return {key: value for key, value in {**common, **dict(args.parameter)}.items() if key in args.declared[name]}


def notebook_plan(name: str, args: argparse.Namespace, parameters: dict) -> dict:
    """The experiments the notebook will run: the same profile function it calls, with its defaults and -p."""
    from pst.repro import profiles

    values = {}
    for key in profiles.plan_parameters(name):
        if key not in args.declared[name]:
            raise ValueError(f"{name}: its plan takes {key!r}, which its parameters cell does not declare")
        values[key] = parameters[key] if key in parameters else ast.literal_eval(args.declared[name][key])
    return profiles.plan(name, parameters["profile"], **values)


def print_plan(planned: list, args: argparse.Namespace, common: dict) -> None:
    """Per notebook: distinct runs, done, to do (with why), kept or refused records of other code."""
    from pst.repro.cost import StepTimes, estimate
    from pst.repro.fingerprint import code_fingerprint

    reasons = {"missing": "new", "unreadable": "unreadable: moved aside and redone",
               "incomplete": "without their score files", "other-code": "made by other code", "done": "forced"}
    print(f"profile: {args.profile}   output: {common['out_dir']}   shard: {args.shard or 'all'}   "
          f"code: {code_fingerprint()}")
    for name in args.names:
        rows = [p for p in planned if p.notebook == name]
        redo = [p for p in rows if p.action == "redo"]
        refused = {p.run_id for p in rows if p.action == "refuse"}
        kept = {p.run_id for p in rows if p.action == "reuse" and p.status == "other-code"}
        runs = {p.run_id for p in rows}
        notes = _counts(p.status for p in redo)
        line = f"  {name:<22} {len(runs):>4} runs, {len(runs - {p.run_id for p in redo} - refused):>4} done, " \
               f"{len(redo):>4} to do"
        earlier = {p.run_id for p in rows if p.status == "earlier"} - {p.run_id for p in redo}
        extra = [f"{n} {reasons[s]}" for s, n in notes.items() if s != "missing"]
        extra += [f"{len(earlier)} trained by an earlier notebook"] * bool(earlier)
        extra += [f"{len(kept)} kept although made by other code"] * bool(kept)
        extra += [f"{len(refused)} made by other code: refused"] * bool(refused)
        print(line + (f"  ({'; '.join(extra)})" if extra else ""))
        if args.verbose:
            for p in rows:
                print(f"      {p.action:<7} {p.experiment:<18} {p.run_id}  [{p.status}]")
    todo = [p.config for p in planned if p.action == "redo"]
    distinct = {p.run_id for p in planned}
    asked = len({(p.experiment, p.run_id) for p in planned})
    cost = str(estimate(todo, StepTimes.read(args.step_times) if args.step_times else None)) \
        if args.profile == "paper" else "minutes on a CPU"
    print(f"distinct runs: {len(distinct)} ({asked - len(distinct)} asked for by more than one experiment); "
          f"to train: {len(todo)}; estimated cost: {cost}")


def _counts(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def stale_stop(planned: list) -> str | None:
    """The message that stops the invocation when records of other code are refused, else None."""
    refused = [p for p in planned if p.action == "refuse"]
    if not refused:
        return None
    per_notebook = ", ".join(f"{name}: {n}" for name, n in _counts(p.notebook for p in refused).items())
    return (f"{len({p.run_id for p in refused})} planned record(s) were made by other code ({per_notebook}), "
            f"e.g. {refused[0].run_id}: {refused[0].detail}.\nNothing was run. Rerun them with --rerun-stale "
            "(or redo every run with --force), or keep them with --keep-stale-records.")


def notebook_groups(names: list[str], planned: list) -> list[list[str]]:
    """``names`` in groups that may execute side by side, each group in the given order: notebooks
    sharing a planned run are one group (so the first trains it and the others reuse it), and
    the :data:`RUN_LAST` ones follow every other group, one per group."""
    runs = {name: {p.run_id for p in planned if p.notebook == name} for name in names}
    groups: list[list[str]] = []
    for name in names:
        if name in RUN_LAST:
            continue
        joined = [group for group in groups if any(runs[name] & runs[other] for other in group)]
        merged = sorted([other for group in joined for other in group] + [name], key=names.index)
        at = groups.index(joined[0]) if joined else len(groups)
        groups = [group for group in groups if group not in joined]
        groups.insert(min(at, len(groups)), merged)
    return groups + [[name] for name in names if name in RUN_LAST]


def kernel_threads(profile: str, jobs: int) -> dict[str, str]:
    """The notebooks' kernels' OpenMP threads, as environment variables (none if ``OMP_NUM_THREADS``
    is set). The smoke profile trains with one each: its numbers then depend neither on
    ``--jobs`` nor on the machine's core count (float sums change with the thread count), and
    kernels side by side do not stall each other's parallel regions. Elsewhere kernels side by
    side share the cores."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    if profile == "smoke":
        return {"OMP_NUM_THREADS": "1"}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))} if jobs > 1 else {}


def _state_path(out: Path) -> Path:
    return out / "executed" / "state.json"


def _load_state(out: Path) -> dict:
    path = _state_path(out)
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(out: Path, state: dict) -> None:
    from pst.repro.atomic import write_text_atomic

    write_text_atomic(_state_path(out), json.dumps(state, indent=2, sort_keys=True))


def _fingerprint(name: str, parameters: dict) -> str:
    """What a notebook's execution depends on: its cells (not their outputs), its parameters and
    the package's code."""
    import nbformat

    from pst.repro.fingerprint import code_fingerprint
    from pst.repro.notebooks import source_digest

    cells = source_digest(nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4))
    extra = json.dumps(parameters, sort_keys=True) + code_fingerprint()
    return hashlib.sha256((cells + extra).encode()).hexdigest()[:16]


def execute(name: str, parameters: dict, out: Path, timeout: int | None) -> None:
    import papermill

    output = out / "executed" / f"{name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    # Progress bars drawn into a headless notebook only leave frozen "0%" lines in its outputs;
    # the kernel inherits this (tqdm reads TQDM_* variables as its defaults).
    os.environ.setdefault("TQDM_DISABLE", "1")
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / f"{name}.ipynb"), str(output), parameters=parameters, cwd=str(NOTEBOOK_DIR),
        kernel_name="python3", progress_bar=False, log_output=False, execution_timeout=timeout,
    )


def update_notebook(name: str, out: Path) -> None:
    """Write the executed notebook back over its source, fit to commit (see pst.repro.notebooks)."""
    import nbformat

    from pst.repro.atomic import write_text_atomic
    from pst.repro.notebooks import for_commit, problems

    executed = nbformat.read(out / "executed" / f"{name}.ipynb", as_version=4)
    notebook = for_commit(executed, {str(out): "../out", str(ROOT): "..", sys.prefix: "<python>"})
    found = problems(notebook)
    if found:
        raise ValueError(f"{name} is not fit to commit: " + "; ".join(found[:3]))
    write_text_atomic(NOTEBOOK_DIR / f"{name}.ipynb", nbformat.writes(notebook) + "\n")
    logger.info("wrote %s back with its outputs", name)


def describe_failure(name: str, error: Exception) -> str:
    """Name, failing cell and error of a failed notebook (papermill's error carries them)."""
    cell = getattr(error, "exec_count", None)
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    where = f"cell [{cell}]" if cell is not None else "before any cell ran"
    return f"{name}: failed in {where}: {ename}: {evalue}".strip()


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list:
        print("\n".join(NOTEBOOKS))
        return 0
    from pst.repro.planning import assess

    out = args.out.resolve()
    common = common_parameters(args, started)
    parameters = {name: parameters_for(name, args, common) for name in args.names}
    plans = {}
    for name in args.names:
        try:
            plans[name] = notebook_plan(name, args, parameters[name])
        except (TypeError, ValueError) as error:  # a -p value the plan cannot use: nothing has run yet
            print(f"reproduce.py: error: {name}: {error}", file=sys.stderr)
            return 2
    planned = assess(plans, out / "results", args.shard, common["force"], common["stale_records"])
    print_plan(planned, args, common)
    if (message := stale_stop(planned)) is not None:
        print(message, file=sys.stderr)
        return EXIT_STALE
    if args.dry_run:
        return 0
    state = _load_state(out)
    failures = []
    lock = threading.Lock()  # the state file and the failure list, shared by the groups' threads

    def run_notebook(position: int, name: str) -> None:
        fingerprint = _fingerprint(name, parameters[name])
        done = state.get(name, {})
        trains = any(p.action == "redo" for p in planned if p.notebook == name)
        if (name not in ALWAYS_RERUN and not trains and not args.update_notebooks
                and done.get("fingerprint") == fingerprint and done.get("ok")):
            logger.info("[%d/%d] %s: finished earlier with the same parameters and code, nothing to train: skipped",
                        position, len(args.names), name)
            return
        logger.info("[%d/%d] %s ...", position, len(args.names), name)
        t0 = time.time()
        try:
            execute(name, parameters[name], out, args.timeout)
        except Exception as error:  # noqa: BLE001 - reported, counted, and the exit status says so
            message = describe_failure(name, error)
            logger.error("[%d/%d] %s", position, len(args.names), message)
            outcome, problems = {"fingerprint": fingerprint, "ok": False, "error": message}, [message]
        else:
            logger.info("[%d/%d] %s done in %.0f s", position, len(args.names), name, time.time() - t0)
            outcome, problems = {"fingerprint": fingerprint, "ok": True, "seconds": round(time.time() - t0, 1)}, []
            if args.update_notebooks:
                try:
                    update_notebook(name, out)
                except ValueError as error:  # an output not fit to commit: the source stays as it was
                    problems.append(str(error))
                    logger.error("[%d/%d] %s", position, len(args.names), error)
        with lock:
            failures.extend(problems)
            state[name] = outcome
            _save_state(out, state)

    def run_group(group: list[str]) -> None:
        for name in group:
            run_notebook(args.names.index(name) + 1, name)

    groups = notebook_groups(args.names, planned)
    last = [group for group in groups if group[0] in RUN_LAST]
    if args.jobs > 1:
        logger.info("%d notebooks at a time; in order, as they share runs: %s", args.jobs,
                    "; ".join(" -> ".join(group) for group in groups if len(group) > 1) or "none")
    with mock.patch.dict(os.environ, kernel_threads(args.profile, args.jobs)):  # the kernels inherit it
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(run_group, group) for group in groups if group not in last]:
                future.result()
        for group in last:
            run_group(group)
    logger.info("finished in %.0f s; outputs in %s", time.time() - started, out)
    if failures:
        logger.error("%d notebook(s) failed:\n%s", len(failures), "\n".join(f"  {m}" for m in failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
