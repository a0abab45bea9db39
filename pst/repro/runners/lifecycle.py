"""What every run shares: reuse its record when it is done (:mod:`pst.repro.runstate`), else
resume from its last checkpoint (made by the same code), write the record atomically with
the code's fingerprint, then drop the checkpoints."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ... import surgery
from ...export import sparsity_report
from ..atomic import write_text_atomic
from ..fingerprint import code_fingerprint
from ..results import environment_info, write_record
from ..runstate import RunPaths, StaleRecordsError, action, move_aside, run_state, stale_message

#: In a run's checkpoint folder: the fingerprint of the code that made the checkpoints.
CHECKPOINT_FINGERPRINT = "code_fingerprint"

#: The training loss is logged every this fraction of the optimizer steps (and at step 1):
#: about 20 points, enough to draw a curve, whatever the run's length.
LOG_FRACTION = 0.05

logger = logging.getLogger(__name__)


def precision_used(config: Any) -> str:
    """The precision the run trains in: bf16 mixed precision where asked for and the device has
    it (every CPU, CUDA GPUs from Ampere on), else fp32, with a warning saying so."""
    if config.precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        logger.warning("%s asks for bf16, which %s does not support: training in fp32",
                       config.run_id, torch.cuda.get_device_name())
        return "fp32"
    return config.precision


def training_arguments(config: Any, output_dir: Path, **specific: Any) -> TrainingArguments:
    """What every run's Trainer shares: AdamW with a linear schedule, a checkpoint per epoch
    (the last one only) to resume from, the loss logged ~20 times (:data:`LOG_FRACTION`) for the
    record's ``training_log``, no external loggers, the run's precision; ``specific`` adds the rest."""
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
        logging_strategy="steps",
        logging_steps=LOG_FRACTION,  # a float below 1 is a fraction of the run's optimizer steps
        logging_first_step=True,
        seed=config.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        bf16=precision_used(config) == "bf16",
        **specific,
    )


def launched_processes() -> int:
    """How many processes torchrun / accelerate launch started for this run (1 without them)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_world_size(config: Any) -> None:
    """Refuse a run whose config was made for another number of processes: its id, and its
    global batch, would not be what trains."""
    launched = launched_processes()
    if config.world_size != launched:
        raise ValueError(
            f"{config.run_id} is configured for world_size={config.world_size} but {launched} process(es) run it: "
            f"set \"world_size\": {launched} in the config (the run id and the global batch follow it), or launch "
            f"{config.world_size} process(es)"
        )


def batch_record(trainer: Trainer) -> dict:
    """What one optimizer step saw, as the Trainer ran it: processes and the global batch."""
    args = trainer.args
    return {"world_size": args.world_size,
            "global_batch_size": args.train_batch_size * args.gradient_accumulation_steps * args.world_size}


def without_printed_logs(trainer: Trainer) -> Trainer:
    """The Trainer without its PrinterCallback, which (with tqdm disabled) prints every log dict
    to stdout: the record's ``training_log`` keeps them, and notebooks stay readable."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def logged_sparsity(entry: dict, prunes: bool) -> float:
    """The sparsity ``pst.SparsityCallback`` logged with a Trainer log entry (0 for methods that
    do not prune), so a record says what the model had, not what a formula expects."""
    if not prunes:
        return 0.0
    if "sparsity" not in entry:
        raise RuntimeError(f"the log entry at step {entry.get('step')} has no logged sparsity; the Trainer needs "
                           "pst.SparsityCallback among its callbacks")
    return entry["sparsity"]


def training_log(log_history: Iterable[dict], prunes: bool) -> list[dict]:
    """The record's ``training_log``: the Trainer's training-loss entries (which survive a resume)
    as curve points ``{"step", "epoch", "loss", "sparsity", "learning_rate"}``, by step."""
    return [{"step": entry["step"], "epoch": entry.get("epoch"), "loss": entry["loss"],
             "sparsity": logged_sparsity(entry, prunes), "learning_rate": entry.get("learning_rate")}
            for entry in sorted(log_history, key=lambda e: e["step"]) if "loss" in entry]


def model_summary(model: torch.nn.Module, config: Any) -> dict:
    """The record fields about the trained model: method settings, measured sparsity, counts.

    Call it before ``pst.merge``: the counts and the per-matrix report read the sparse layers.
    """
    report = sparsity_report(model) if any(True for _ in surgery.sparse_layers(model)) else []
    counts = surgery.trainable_parameters(model)
    return {
        "model_name": config.model,
        "precision": precision_used(config),
        "pst_config": getattr(model, surgery.CONFIG_ATTRIBUTE).to_dict(),  # resolved: the actual targets
        "measured_sparsity": {row["name"]: row["sparsity"] for row in report},
        "mean_sparsity": (sum(r["zeros"] for r in report) / sum(r["numel"] for r in report)) if report else 0.0,
        "trainable_parameters": dataclasses.asdict(counts) | {"percent": counts.percent},
    }


def finish_run(paths: RunPaths, config: Any, body: dict, started: float, keep_checkpoints: bool = False) -> dict:
    """Assemble the record, write it atomically, and only then remove the checkpoints."""
    record = {
        "run_id": paths.run_id,
        **{k: v for k, v in dataclasses.asdict(config).items() if k in ("task", "method", "seed")},
        "config": dataclasses.asdict(config),
        **body,
        "wall_time_s": time.time() - started,
        "finished_at": time.time(),
        "code_fingerprint": code_fingerprint(),
        "environment": environment_info(),
    }
    write_record(paths.record, record)
    if not keep_checkpoints and paths.checkpoints.is_dir():
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
    logger.info("wrote %s", paths.record)
    return record


def reusable_record(paths: RunPaths, force: bool | float = False, stale_records: str = "refuse",
                    needs: tuple[str, ...] = ()) -> dict | None:
    """The run's record when it can stand (the run is skipped), else ``None`` (the run is redone).

    An unreadable record is moved aside, with a warning, before the run is redone; a record of
    other code follows ``stale_records`` ("refuse" raises :class:`StaleRecordsError`).
    """
    state = run_state(paths, needs)
    decision = action(state, force, stale_records)
    if decision == "refuse":
        raise StaleRecordsError(stale_message({paths.run_id: state}, f"run {paths.run_id}"))
    if decision == "reuse":
        if state.status == "other-code":
            logger.warning("keeping %s although it was %s (stale_records='keep')", paths.run_id, state.detail)
        else:
            logger.info("skipping %s: its record is done", paths.run_id)
        return state.record
    if state.status == "unreadable":
        logger.warning("%s: moved aside to %s; the run is redone", state.detail, move_aside(paths.record).name)
    elif state.status in ("incomplete", "other-code"):
        logger.warning("redoing %s: its record %s", paths.run_id, state.detail)
    return None


def resume_point(paths: RunPaths) -> str | None:
    """The last checkpoint to resume from, if the current code made it; older ones are dropped."""
    marker = paths.checkpoints / CHECKPOINT_FINGERPRINT
    ours = marker.is_file() and marker.read_text().strip() == code_fingerprint()
    if not ours and paths.last_checkpoint() is not None:  # the Trainer makes the folder itself: empty is not old
        logger.warning("checkpoints of %s were made by other code: the run starts afresh", paths.run_id)
        shutil.rmtree(paths.checkpoints)
    write_text_atomic(marker, code_fingerprint() + "\n")
    return paths.last_checkpoint()


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
