"""Run one GLUE or NLG run from the command line, e.g. under ``torchrun``/``accelerate launch``:

    torchrun --nproc_per_node 4 -m pst.repro.runners glue run.json --out out --experiment glue-bert
    accelerate launch -m pst.repro.runners nlg run.json --out out

``run.json`` holds the fields of a ``GlueRunConfig`` / ``NlgRunConfig`` (as in a record's
``config``); ``batch_size`` is per process, and ``world_size`` (the number of processes) is
taken from the launcher when the file leaves it out, so the run id and the record say what
trained. The Trainer takes care of the distributed training; only the main process writes
the record, so a finished run is skipped and an interrupted one resumed, as always.
``--experiment`` notes the run as part of that experiment, so the report's table shows it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..configs import CONFIG_KINDS
from ..experiments import Experiment, record_membership
from ..runstate import STALE_POLICIES
from .glue import run_glue
from .lifecycle import launched_processes
from .nlg import run_nlg

RUNNERS = {"glue": run_glue, "nlg": run_nlg}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pst.repro.runners", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(CONFIG_KINDS))
    parser.add_argument("config", type=Path, help="JSON file with the run's config fields")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (results/ and work/ inside)")
    parser.add_argument("--experiment", help="note the run as part of this experiment (e.g. glue-bert)")
    parser.add_argument("--force", action="store_true", help="redo the run even if its record is done")
    parser.add_argument("--stale-records", choices=STALE_POLICIES, default="refuse",
                        help="a record made by other code: refuse (default), rerun or keep it")
    args = parser.parse_args(argv)
    config_class = CONFIG_KINDS[args.kind]
    if not args.config.is_file():
        parser.error(f"config file {args.config} does not exist")
    values = json.loads(args.config.read_text())
    values.setdefault("world_size", launched_processes())  # batch_size is per process: the id says how many
    try:
        config = config_class(**values)
    except (TypeError, ValueError) as error:
        parser.error(f"{args.config} does not hold the fields of a {config_class.__name__}: {error}")
    if args.experiment:
        try:
            record_membership(args.out / "results", Experiment(args.experiment, (config,)))
        except ValueError as error:
            parser.error(str(error))
    record = RUNNERS[args.kind](config, args.out / "results", args.out / "work", force=args.force,
                               stale_records=args.stale_records)
    if record:
        print(json.dumps({"run_id": record["run_id"], "selected_or_metrics": record.get("selected", record.get("metrics"))},
                         default=str))


if __name__ == "__main__":
    main()
