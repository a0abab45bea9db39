"""What the paper profile costs: each run's optimizer steps times the time of one step.

The time of a step comes from ``benchmarks/train_step.py --json`` run on your GPU where you
give its output (``reproduce.py --dry-run --step-times FILE``), else from an assumed rate.
A measurement is a BERT-base (GLUE) or GPT-2 medium (NLG) step of one method in one
precision at the benchmark's batch and sequence length (GLUE: 128 tokens, where real batches
are padded only to their longest sentence, so GLUE estimates are upper bounds); a run with
another batch is scaled in proportion, which holds while the GPU is saturated.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import glue_tasks

#: Assumed optimizer steps per second on one modern GPU where nothing was measured (a guess,
#: not a measurement: pass measured step times instead).
ASSUMED_STEPS_PER_SECOND = {"bert-base": 12.0, "gpt2-medium": 3.0}
#: Training examples of the NLG data sets (LoRA's prepared files), for the steps of a run.
NLG_TRAIN_SIZES = {"e2e": 42_061, "dart": 62_659, "webnlg": 18_025}


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds per step by (shape, precision, method), with the batch they were measured at."""

    device: str
    seconds: dict[tuple[str, str, str], tuple[float, int]]

    @classmethod
    def read(cls, paths: Iterable[str | Path]) -> "StepTimes":
        """Merge the ``--json`` files of ``benchmarks/train_step.py``; they must come from one device."""
        devices, seconds = set(), {}
        for path in paths:
            data = json.loads(Path(path).read_text())
            try:
                settings, results = data["settings"], data["results"]
                for method, result in results.items():
                    key = (settings["shape"], settings["precision"], method)
                    seconds[key] = (float(result["step_s"]), int(settings["batch"]))
                    devices.add(result["device_name"])
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path} is not the --json output of benchmarks/train_step.py ({error!r})") from None
        if len(devices) != 1:
            raise ValueError(f"step times must come from one device, got {sorted(devices) or 'none'}")
        return cls(devices.pop(), seconds)

    def step_seconds(self, shape: str, precision: str, method: str, batch: int) -> float | None:
        """Seconds of one step at ``batch``: the method's own measurement, else PST's; None if neither."""
        measured = self.seconds.get((shape, precision, method)) or self.seconds.get((shape, precision, "pst"))
        if measured is None:
            return None
        seconds, measured_batch = measured
        return seconds * batch / measured_batch


@dataclass(frozen=True)
class Estimate:
    hours: float
    measured_runs: int  # runs costed from a measured step time
    assumed_runs: int  # runs costed from an assumed rate
    device: str | None

    def __str__(self) -> str:
        if not self.measured_runs:
            return f"about {self.hours:,.0f} GPU-hours at assumed rates (pst.repro.cost.ASSUMED_STEPS_PER_SECOND)"
        where = f"step times measured on {self.device}"
        if self.assumed_runs:
            where += f"; {self.assumed_runs} run(s) at assumed rates, nothing measured for their shape or precision"
        return f"about {self.hours:,.0f} GPU-hours ({where})"


def _steps_and_shape(run) -> tuple[float, str]:
    if run.task in glue_tasks.GLUE_TASKS:  # RoBERTa-base has BERT-base's shapes
        return run.epochs * glue_tasks.GLUE_TASKS[run.task].train_size / run.batch_size, "bert-base"
    return run.epochs * NLG_TRAIN_SIZES[run.task] / run.batch_size, "gpt2-medium"


def estimate(runs: Iterable, measured: StepTimes | None = None) -> Estimate:
    """The cost of ``runs`` (tiny smoke models cost nothing worth counting)."""
    seconds, counted = 0.0, {"measured": 0, "assumed": 0}
    for run in runs:
        if run.model.startswith("tiny:"):
            continue
        steps, shape = _steps_and_shape(run)
        step = measured.step_seconds(shape, run.precision, run.method, run.batch_size) if measured else None
        counted["measured" if step is not None else "assumed"] += 1
        seconds += steps * (step if step is not None else 1.0 / ASSUMED_STEPS_PER_SECOND[shape])
    return Estimate(seconds / 3600, counted["measured"], counted["assumed"], measured.device if measured else None)
