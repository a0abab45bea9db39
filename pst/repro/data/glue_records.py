"""The GLUE record format every source yields (hub, local files, bundled subsets, synthetic):
the task's text columns as strings and ``label`` as a ``ClassLabel`` (float32 for STS-B).

Its own module so that the loaders (:mod:`pst.repro.data.glue`) and the synthetic generator
(:mod:`pst.repro.data.synthetic.glue`) share it without importing each other.
"""
from __future__ import annotations

from typing import Any

import datasets

from ..glue_tasks import get_task

LABEL_COLUMN = "label"


def glue_features(task: str) -> datasets.Features:
    """The features every source is cast to: string texts, ClassLabel (or float32 for STS-B)."""
    spec = get_task(task)
    features: dict[str, Any] = {key: datasets.Value("string") for key in spec.text_keys}
    features[LABEL_COLUMN] = (datasets.Value("float32") if spec.is_regression
                              else datasets.ClassLabel(names=list(spec.label_names)))
    return datasets.Features(features)
