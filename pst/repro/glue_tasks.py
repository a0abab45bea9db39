"""The facts of the eight GLUE tasks, in one place that imports nothing heavy.

The data loader, the metrics, the profiles (tasks and their cost) and the report (column
names and order) all read this table, so a task is described once.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlueTask:
    """What the rest of the package needs to know about one GLUE task."""

    name: str  # the hub's config name: "sst2"
    display_name: str  # how papers write it: "SST-2"
    text_keys: tuple[str, ...]  # the hub's text columns (one sentence, or a pair)
    label_names: tuple[str, ...]  # the hub's class names in id order; () for regression (STS-B)
    metrics: tuple[str, ...]  # what the benchmark reports on a dev split, in the paper's order
    main_metric: str  # the model-selection metric (docs/method.md)
    train_size: int  # training examples, for the cost estimate of the paper profile
    eval_splits: tuple[str, ...] = ("validation",)  # the primary dev split first
    eval_split_names: tuple[str, ...] = ()  # display name per dev split; () means (display_name,)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def splits(self) -> tuple[str, ...]:
        """All splits a loaded task holds: train first, then the dev splits."""
        return ("train", *self.eval_splits)

    @property
    def is_pair(self) -> bool:
        return len(self.text_keys) == 2

    def split_name(self, split: str) -> str:
        """Display name of one dev split: "MNLI-m" for MNLI's matched split, else the task's."""
        names = self.eval_split_names or (self.display_name,) * len(self.eval_splits)
        return dict(zip(self.eval_splits, names))[split]


_PAIR = ("sentence1", "sentence2")
_ACC, _ACC_F1 = ("accuracy",), ("accuracy", "f1")

#: The paper's column order. Label names and their order are nyu-mll/glue's, so label ids
#: agree across data sources; sizes are the hub's train splits.
GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), _ACC,
                 "accuracy", 392_702, eval_splits=("validation_matched", "validation_mismatched"),
                 eval_split_names=("MNLI-m", "MNLI-mm")),
        GlueTask("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), _ACC_F1, "f1", 363_846),
        GlueTask("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), _ACC, "accuracy",
                 104_743),
        GlueTask("sst2", "SST-2", ("sentence",), ("negative", "positive"), _ACC, "accuracy", 67_349),
        GlueTask("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
                 "matthews_correlation", 8_551),
        GlueTask("stsb", "STS-B", _PAIR, (), ("pearson", "spearmanr"), "pearson", 5_749),
        GlueTask("mrpc", "MRPC", _PAIR, ("not_equivalent", "equivalent"), _ACC_F1, "f1", 3_668),
        GlueTask("rte", "RTE", _PAIR, ("entailment", "not_entailment"), _ACC, "accuracy", 2_490),
    )
}


def get_task(task: str) -> GlueTask:
    """Look a task up by name, failing with the list of valid names."""
    try:
        return GLUE_TASKS[task]
    except KeyError:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}") from None
