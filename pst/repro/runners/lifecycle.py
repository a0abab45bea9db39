"""What every run shares: skip when its record exists, resume from its last checkpoint,
write the record atomically, then drop the checkpoints."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ... import surgery
from ...export import sparsity_report
from ..results import environment_info, read_record, record_path, run_id, write_record

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its record, its checkpoints and its side files."""

    run_id: str
    record: Path
    checkpoints: Path

    def side_file(self, suffix: str) -> Path:
        """A file next to the record, e.g. decoded outputs or score matrices."""
        return self.record.with_name(self.record.name.removesuffix(".json") + suffix)

    def last_checkpoint(self) -> str | None:
        return get_last_checkpoint(str(self.checkpoints)) if self.checkpoints.is_dir() else None


def run_paths(config: Any, results_dir: Path, work_dir: Path) -> RunPaths:
    rid = run_id(dataclasses.asdict(config))
    return RunPaths(rid, record_path(results_dir, rid), Path(work_dir) / "checkpoints" / rid)


def training_arguments(config: Any, output_dir: Path, **specific: Any) -> TrainingArguments:
    """What every run's Trainer shares: AdamW with a linear schedule, a checkpoint per epoch
    (the last one only) to resume from, no external loggers; ``specific`` adds the rest."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="epoch",
        seed=config.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        **specific,
    )


def model_summary(model: torch.nn.Module, config: Any) -> dict:
    """The record fields about the trained model: method settings, measured sparsity, counts.

    Call it before ``pst.merge``: the counts and the per-matrix report read the sparse layers.
    """
    report = sparsity_report(model) if any(True for _ in surgery.sparse_layers(model)) else []
    counts = surgery.trainable_parameters(model)
    return {
        "model_name": config.model,
        "pst_config": getattr(model, surgery.CONFIG_ATTRIBUTE).to_dict(),  # resolved: the actual targets
        "measured_sparsity": {row["name"]: row["sparsity"] for row in report},
        "mean_sparsity": (sum(r["zeros"] for r in report) / sum(r["numel"] for r in report)) if report else 0.0,
        "trainable_parameters": dataclasses.asdict(counts) | {"percent": counts.percent},
    }


def finish_run(paths: RunPaths, config: Any, body: dict, started: float, keep_checkpoints: bool = False) -> dict:
    """Assemble the record, write it atomically, and only then remove the checkpoints."""
    record = {
        "run_id": paths.run_id,
        **{k: v for k, v in dataclasses.asdict(config).items() if k in ("experiment", "task", "method", "seed")},
        "config": dataclasses.asdict(config),
        **body,
        "wall_time_s": time.time() - started,
        "environment": environment_info(),
    }
    write_record(paths.record, record)
    if not keep_checkpoints and paths.checkpoints.is_dir():
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
    logger.info("wrote %s", paths.record)
    return record


def existing_record(paths: RunPaths, force: bool) -> dict | None:
    if force or not paths.record.is_file():
        return None
    logger.info("skipping %s: its record exists", paths.run_id)
    return read_record(paths.record)


def run_all(configs: Iterable[Any], run_one: Callable[[Any], dict], description: str) -> list[dict]:
    """Run configs in order with a progress bar; a failure does not stop the others.

    Finished records are already on disk, so nothing is lost; the failures are raised
    together at the end.
    """
    configs = list(configs)
    records, failures = [], []
    for config in tqdm(configs, desc=description, unit="run"):
        try:
            records.append(run_one(config))
        except Exception as error:  # noqa: BLE001 - reported below, never swallowed
            logger.exception("run failed: %s", config)
            failures.append((config, error))
    if failures:
        lines = "\n".join(f"- {dataclasses.asdict(c)}: {type(e).__name__}: {e}" for c, e in failures)
        raise RuntimeError(f"{len(failures)} of {len(configs)} runs failed:\n{lines}") from failures[0][1]
    return records
