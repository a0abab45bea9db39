"""One GLUE run: load data and model, sparsify, train with the Trainer, select, record.

Model selection follows the official code: evaluate on the dev set every epoch and,
among the evaluations made once the target sparsity is reached, keep the best by the
task's main metric (for methods that do not prune, every evaluation is eligible).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

import pst

from ..atomic import write_atomic
from ..configs import GlueRunConfig
from ..data.glue import get_task, load_glue, tokenize_glue
from ..metrics.glue import MAIN_METRIC, make_compute_metrics
from ..models import load_model, load_tokenizer
from ..runstate import SCORES_SUFFIX, run_paths
from .lifecycle import (
    batch_record,
    check_world_size,
    finish_run,
    logged_sparsity,
    model_summary,
    resume_point,
    reusable_record,
    training_arguments,
    training_log,
    without_printed_logs,
)
from .model_source import resolve_model

logger = logging.getLogger(__name__)


def run_glue(config: GlueRunConfig, results_dir: Path, work_dir: Path, force: bool | float = False,
             save_scores: bool = False, stale_records: str = "refuse") -> dict:
    """Run (or skip, or resume) one GLUE run and return its record.

    ``force``: redo the run (a time: redo it if its record was finished before then);
    ``save_scores``: also keep the learned score matrices beside the record (a record
    without them is redone); ``stale_records``: what to do with a record of other code
    (:data:`pst.repro.runstate.STALE_POLICIES`).
    """
    paths = run_paths(config, results_dir, work_dir)
    needs = (SCORES_SUFFIX,) if save_scores else ()
    if (record := reusable_record(paths, force, stale_records, needs)) is not None:
        return record
    started = time.time()
    spec = get_task(config.task)
    pst_config = config.pst_config()  # validates before any work
    check_world_size(config)
    set_seed(config.seed)

    model_path = resolve_model(config.model, Path(work_dir) / "models")
    tokenizer = load_tokenizer(model_path)
    data = load_glue(config.task, config.data_source, data_dir=config.data_dir, seed=config.seed,
                     synthetic_sizes=config.synthetic_sizes)
    features = tokenize_glue(data, tokenizer, config.task, max_length=config.max_length)
    model = load_model(model_path, "sequence-classification", num_labels=spec.num_labels,
                       is_regression=spec.is_regression)
    # A classification loss is the mean over the process's own batch and ignores num_items_in_batch; the
    # Trainer, seeing forward(**kwargs), would multiply it (and the gradients) by the number of processes
    # (average_tokens_across_devices). Declared here, it averages like one process with the global batch.
    model.accepts_loss_kwargs = False
    pst.sparsify(model, pst_config)

    eval_splits = {split: features[split] for split in spec.eval_splits}
    trainer = without_printed_logs(Trainer(
        model=model,
        args=_training_arguments(config, paths.checkpoints),
        train_dataset=features["train"],
        eval_dataset=eval_splits,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=make_compute_metrics(config.task),
        callbacks=[pst.SparsityCallback()],
    ))
    trainer.train(resume_from_checkpoint=resume_point(paths))
    if not trainer.is_world_process_zero():  # multi-process runs: one writer
        return {}

    prunes = pst.get_method(config.method).prunes
    evaluations = _evaluations(trainer, spec.eval_splits, prunes)
    selected = select_evaluation(evaluations, config, spec.eval_splits[0])
    if save_scores:
        _save_scores(model, paths.side_file(SCORES_SUFFIX))
    else:  # scores of an earlier training of this config would not match the new record
        paths.side_file(SCORES_SUFFIX).unlink(missing_ok=True)
    body = {
        **model_summary(model, config),
        "main_metric": MAIN_METRIC[config.task],
        "evaluations": evaluations,
        "selected": selected,
        "training_log": training_log(trainer.state.log_history, prunes),
        "train_steps": trainer.state.global_step,
        **batch_record(trainer),
    }
    return finish_run(paths, config, body, started)


def _training_arguments(config: GlueRunConfig, output_dir: Path) -> TrainingArguments:
    return training_arguments(config, output_dir, per_device_eval_batch_size=config.eval_batch_size,
                              eval_strategy="epoch")


def _evaluations(trainer: Trainer, eval_splits: tuple[str, ...], prunes: bool) -> list[dict]:
    """Dev-set evaluations from the Trainer's history (which survives a resume), by step.

    The sparsity of each is what ``pst.SparsityCallback`` logged with it (0 for methods that
    do not prune), so the record says what the model had, not what a formula expects.
    """
    by_step: dict[int, dict] = {}
    for entry in trainer.state.log_history:
        keys = [k for k in entry if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second", "_loss"))]
        if not keys:
            continue
        step = entry["step"]
        evaluation = by_step.setdefault(step, {
            "step": step,
            "epoch": entry.get("epoch"),
            "sparsity": logged_sparsity(entry, prunes),
            "metrics": {},
        })
        for key in keys:
            split_metric = key.removeprefix("eval_")
            split = next(s for s in eval_splits if split_metric.startswith(s + "_"))
            evaluation["metrics"].setdefault(split, {})[split_metric.removeprefix(split + "_")] = entry[key]
    return [by_step[s] for s in sorted(by_step)]


def select_evaluation(evaluations: list[dict], config: GlueRunConfig, primary_split: str) -> dict:
    """The best evaluation at the target sparsity, by the task's main metric on the primary dev split."""
    if not evaluations:
        raise ValueError(f"run {config.task}/{config.method} made no evaluation; is the training set empty?")
    prunes = pst.get_method(config.method).prunes
    eligible = [e for e in evaluations if not prunes or e["sparsity"] >= config.sparsity - 1e-9]
    target_reached = bool(eligible)
    if not eligible:
        logger.warning("%s/%s never reached the target sparsity; selecting among all evaluations",
                       config.task, config.method)
        eligible = evaluations
    metric = MAIN_METRIC[config.task]
    best = max(eligible, key=lambda e: _comparable(e["metrics"][primary_split][metric]))
    return {**best, "target_reached": target_reached, "metric": metric, "value": best["metrics"][primary_split][metric]}


def _comparable(value: float) -> float:
    return float("-inf") if value is None or value != value else value  # NaN never wins


def _save_scores(model: torch.nn.Module, path: Path) -> None:
    """The learned score matrices (movement) or their factors (PST), for the analysis notebook.

    Per layer: its score parts, the effective weight ``M * W'`` (``weight``) and, for methods with
    a low-rank update (PST), U, V and the frozen pre-trained ``W`` (output x input), from which
    the analysis rebuilds ``|W'|`` and magnitude pruning's mask (:mod:`pst.repro.analysis_pst`).
    """
    from safetensors.torch import save_file

    tensors = {}
    for name, layer in pst.sparse_layers(model):
        for part in ("scores", "A", "B", "R", "C", "U", "V"):
            value = getattr(layer, part)
            if value is not None:
                tensors[f"{name}.{part}"] = value.detach().cpu().contiguous()
        tensors[f"{name}.weight"] = layer.effective_weight().cpu().contiguous()
        if layer.U is not None and not layer.weight.requires_grad:  # W never trained: it is the pre-trained one
            weight = layer.weight.t() if layer.transposed else layer.weight
            tensors[f"{name}.W"] = weight.detach().cpu().contiguous()
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))
