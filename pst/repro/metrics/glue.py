"""GLUE metrics exactly as the benchmark defines them, as plain functions and as an offline evaluate module.

accuracy: MNLI (matched and mismatched), QNLI, SST-2, RTE; accuracy and F1 of the positive
class: MRPC, QQP; Matthews correlation: CoLA; Pearson and Spearman correlation: STS-B.
The formulas and key names are those of the hub's ``glue`` metric (scikit-learn and scipy
do the arithmetic), which cannot be used offline because ``evaluate.load("glue")`` fetches
its code from the hub; ``GLUE_MODULE_PATH`` is our local equivalent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from pst.repro.glue_tasks import GLUE_TASKS, get_task

logger = logging.getLogger(__name__)

GLUE_MODULE_PATH = str(Path(__file__).resolve().parent / "evaluate_modules" / "pst_glue")

# MNLI is scored separately on its two dev sets; both use plain accuracy.
MNLI_CONFIGS = {"validation_matched": "mnli_matched", "validation_mismatched": "mnli_mismatched"}
METRIC_CONFIGS: tuple[str, ...] = (*GLUE_TASKS, *MNLI_CONFIGS.values())

# The task's model-selection metric (docs/method.md: accuracy; F1 for MRPC/QQP; MCC for CoLA; Pearson for STS-B).
MAIN_METRIC: dict[str, str] = {
    **{name: task.main_metric for name, task in GLUE_TASKS.items()},
    **{config: GLUE_TASKS["mnli"].main_metric for config in MNLI_CONFIGS.values()},
}

#: How each metric of ``GlueTask.metrics`` is computed (the hub ``glue`` metric's formulas).
_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda preds, refs: float((preds == refs).mean()),
    "f1": lambda preds, refs: float(f1_score(y_true=refs, y_pred=preds)),
    "matthews_correlation": lambda preds, refs: float(matthews_corrcoef(refs, preds)),
    "pearson": lambda preds, refs: float(pearsonr(preds, refs)[0]),
    "spearmanr": lambda preds, refs: float(spearmanr(preds, refs)[0]),
}


def _base_task(config: str) -> str:
    """``mnli_matched`` / ``mnli_mismatched`` -> ``mnli``; unknown names fail with the accepted ones."""
    if config not in METRIC_CONFIGS:
        raise ValueError(f"unknown GLUE metric config {config!r}; expected one of {list(METRIC_CONFIGS)}")
    return "mnli" if config.startswith("mnli") else config


def metric_config(task: str, split: str) -> str:
    """The metric config for one dev split: ``mnli_matched``/``mnli_mismatched`` for MNLI, else the task."""
    spec = get_task(task)
    if split not in spec.eval_splits:
        raise ValueError(f"{split!r} is not a dev split of {task}; expected one of {list(spec.eval_splits)}")
    return MNLI_CONFIGS[split] if task == "mnli" else task


def glue_metrics(task: str, predictions: Sequence | np.ndarray, references: Sequence | np.ndarray) -> dict[str, float]:
    """Score predictions (class ids, or scores for STS-B) against references.

    ``task`` is a GLUE task name or ``mnli_matched`` / ``mnli_mismatched``. Returns the hub's
    key names: ``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``, ``spearmanr``.
    """
    spec = get_task(_base_task(task))
    preds, refs = _as_arrays(task, predictions, references, spec.is_regression)
    scores = {metric: _METRICS[metric](preds, refs) for metric in spec.metrics}
    if spec.is_regression and any(math.isnan(v) for v in scores.values()):
        # Constant predictions leave both correlations undefined: NaN, as in the hub metric.
        logger.warning("%s correlation is undefined (NaN): predictions or references are constant", task)
    return scores


def _as_arrays(task: str, predictions: Any, references: Any, is_regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """1-D arrays of equal, non-zero length; catches logits passed where class ids belong."""
    preds, refs = np.asarray(predictions), np.asarray(references)
    if preds.ndim != 1 or refs.ndim != 1:
        raise ValueError(f"{task}: predictions and references must be 1-D, got shapes {preds.shape} and "
                         f"{refs.shape}; turn logits into predictions with logits_to_predictions()")
    if len(preds) != len(refs):
        raise ValueError(f"{task}: {len(preds)} predictions but {len(refs)} references")
    if len(preds) == 0:
        raise ValueError(f"{task}: no predictions to score")
    if is_regression:
        return preds.astype(np.float64), refs.astype(np.float64)
    for name, values in (("predictions", preds), ("references", refs)):
        if not np.all(np.equal(np.mod(values, 1), 0)):
            raise ValueError(f"{task}: {name} must be class ids (integers), got e.g. {values[:3].tolist()}")
    return preds.astype(np.int64), refs.astype(np.int64)


def logits_to_predictions(task: str, logits: Any) -> np.ndarray:
    """Model outputs -> what ``glue_metrics`` scores: argmax over classes, or the single score for STS-B.

    Accepts a tuple as the Trainer's ``EvalPrediction.predictions`` may be (logits first).
    """
    if isinstance(logits, (tuple, list)) and logits and not np.isscalar(logits[0]):
        logits = logits[0]
    array = np.asarray(logits)
    if get_task(_base_task(task)).is_regression:
        if array.ndim == 2 and array.shape[1] == 1:
            return array[:, 0].astype(np.float64)
        if array.ndim == 1:
            return array.astype(np.float64)
        raise ValueError(f"{task}: regression outputs must have shape (n,) or (n, 1), got {array.shape}")
    if array.ndim != 2:
        raise ValueError(f"{task}: classification logits must have shape (n, num_labels), got {array.shape}")
    return array.argmax(axis=-1)


def make_compute_metrics(task: str) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer`` (takes an ``EvalPrediction``)."""
    _base_task(task)

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        logits, labels = eval_prediction.predictions, eval_prediction.label_ids
        return glue_metrics(task, logits_to_predictions(task, logits), labels)

    return compute_metrics
