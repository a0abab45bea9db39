"""GLUE metric as an ``evaluate`` module that loads offline by local path.

``evaluate.load("glue", "mrpc")`` downloads its script from the hub; this module is its
local twin: ``evaluate.load(pst.repro.metrics.glue.GLUE_MODULE_PATH, "mrpc")``. The arithmetic
lives in ``pst.repro.metrics.glue.glue_metrics`` so both routes give identical numbers. One
deliberate difference: STS-B values stay float64 here (the hub module casts them to float32,
and datasets' numpy formatter would too, so inputs reach ``_compute`` as Python lists).
"""

import datasets
import evaluate

from pst.repro.metrics.glue import METRIC_CONFIGS, glue_metrics

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""

_DESCRIPTION = """\
GLUE dev-set metrics: accuracy (mnli, mnli_matched, mnli_mismatched, qnli, sst2, rte),
accuracy and F1 (mrpc, qqp), Matthews correlation (cola), Pearson and Spearman (stsb).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (int), or predicted scores (float) for stsb.
    references: gold class ids, or gold scores for stsb.
Returns: a dict with the hub glue metric's keys for the config
    ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr").
Example:
    >>> metric = evaluate.load(GLUE_MODULE_PATH, "mrpc")
    >>> metric.compute(predictions=[1, 0, 1], references=[1, 0, 0])
    {'accuracy': 0.6666666666666666, 'f1': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PstGlue(evaluate.Metric):
    """One config per GLUE task (plus mnli_matched / mnli_mismatched), like the hub's glue metric."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in METRIC_CONFIGS:
            raise ValueError(f"unknown pst_glue config {self.config_name!r}; expected one of {list(METRIC_CONFIGS)}")
        value = datasets.Value("float64" if self.config_name == "stsb" else "int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": value, "references": value}),
            reference_urls=["https://gluebenchmark.com/"],
        )

    def _compute(self, predictions, references):
        return glue_metrics(self.config_name, predictions, references)
