"""A few inputs of each task an experiment runs: what a reader should see before any number."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .columns import task_name, task_sort_key


def glue_examples(configs: Iterable[Any], per_task: int = 2) -> "Any":
    """``per_task`` training examples of each GLUE task among ``configs`` (run configs), from
    the data source each run reads (bundled real subset, synthetic, hub): task, data, text, label."""
    import pandas as pd

    from ..data.glue import load_glue

    sources = {config.task: config.data_source for config in configs}
    rows = []
    for task in sorted(sources, key=task_sort_key):
        train = load_glue(task, sources[task])["train"]
        for example in train.select(range(min(per_task, len(train)))):
            text = " ‖ ".join(str(v) for k, v in example.items() if k != "label")
            rows.append({"Task": task_name(task), "Data": sources[task], "Input (pairs joined by ‖)": text,
                         "Label": f"{example['label']:.2f}" if isinstance(example["label"], float) else str(example["label"])})
    return pd.DataFrame(rows)
