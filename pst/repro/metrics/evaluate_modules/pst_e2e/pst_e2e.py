"""E2E NLG challenge metrics as an ``evaluate`` module that loads offline by local path.

``evaluate.load(pst.repro.metrics.nlg.E2E_MODULE_PATH)``; the arithmetic lives in
``pst.repro.metrics.nlg.e2e_scores`` (the E2E script's Python mode), so both routes agree exactly.
"""

import datasets
import evaluate

from pst.repro.metrics.nlg import e2e_scores

_CITATION = """\
@article{dusek2020evaluating,
  title={Evaluating the state-of-the-art of End-to-End Natural Language Generation: The {E2E NLG} challenge},
  author={Du{\\v{s}}ek, Ond{\\v{r}}ej and Novikova, Jekaterina and Rieser, Verena},
  journal={Computer Speech \\& Language},
  volume={59},
  pages={123--156},
  year={2020}
}
"""

_DESCRIPTION = """\
BLEU, NIST, METEOR, ROUGE-L and CIDEr as e2e-metrics' measure_scores.py (Python mode) computes
them. BLEU, METEOR and ROUGE_L in percent (the script prints fractions), NIST and CIDEr raw.
METEOR is None when Java is not installed.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts (str), one per input.
    references: list of lists of reference texts, any number (>= 1) per input.
Returns: {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}.
Example:
    >>> metric = evaluate.load(E2E_MODULE_PATH)
    >>> metric.compute(predictions=["a cheap pub"], references=[["a cheap pub", "an inexpensive pub"]])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PstE2e(evaluate.Metric):
    """Corpus-level E2E metrics; thin wrapper over ``e2e_scores``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://github.com/tuetschek/e2e-metrics"],
        )

    def _compute(self, predictions, references):
        return e2e_scores(list(predictions), [list(refs) for refs in references])
