"""Run one GLUE or NLG run from the command line, e.g. under ``torchrun``/``accelerate launch``:

    torchrun --nproc_per_node 4 -m pst.repro.runners glue run.json --out out
    accelerate launch -m pst.repro.runners nlg run.json --out out

``run.json`` holds the fields of a ``GlueRunConfig`` / ``NlgRunConfig`` (as in a record's
``config``). The Trainer takes care of the distributed training; only the main process
writes the record, so a finished run is skipped and an interrupted one resumed, as always.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..configs import GlueRunConfig, NlgRunConfig
from .glue import run_glue
from .nlg import run_nlg

KINDS = {"glue": (GlueRunConfig, run_glue), "nlg": (NlgRunConfig, run_nlg)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pst.repro.runners", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("config", type=Path, help="JSON file with the run's config fields")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (results/ and work/ inside)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    config_class, run = KINDS[args.kind]
    if not args.config.is_file():
        parser.error(f"config file {args.config} does not exist")
    values = json.loads(args.config.read_text())
    try:
        config = config_class(**values)
    except TypeError as error:
        parser.error(f"{args.config} does not hold the fields of a {config_class.__name__}: {error}")
    record = run(config, args.out / "results", args.out / "work", force=args.force)
    if record:
        print(json.dumps({"run_id": record["run_id"], "selected_or_metrics": record.get("selected", record.get("metrics"))},
                         default=str))


if __name__ == "__main__":
    main()
