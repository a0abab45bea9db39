"""WebNLG (and DART) metrics as an ``evaluate`` module that loads offline by local path.

``evaluate.load(pst.repro.metrics.nlg.WEBNLG_MODULE_PATH)``; the arithmetic lives in
``pst.repro.metrics.nlg.webnlg_scores`` (WebNLG GenerationEval's eval.py), so both routes agree exactly.
"""

import datasets
import evaluate

from pst.repro.metrics.nlg import webnlg_scores

_CITATION = """\
@inproceedings{gardent2017webnlg,
  title={The {WebNLG} Challenge: Generating Text from {RDF} Data},
  author={Gardent, Claire and Shimorina, Anastasia and Narayan, Shashi and Perez-Beltrachini, Laura},
  booktitle={Proceedings of the 10th International Conference on Natural Language Generation},
  pages={124--133},
  year={2017}
}
"""

_DESCRIPTION = """\
BLEU (multi-bleu-detok), METEOR 1.5 (-norm, all references) and TER (best reference per item,
averaged) as WebNLG GenerationEval's eval.py computes them, all in percent (eval.py prints
METEOR and TER as fractions). METEOR is None when Java is not installed.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts (str), one per input.
    references: list of lists of reference texts, any number (>= 1) per input.
Returns: {"BLEU", "METEOR", "TER"}.
Example:
    >>> metric = evaluate.load(WEBNLG_MODULE_PATH)
    >>> metric.compute(predictions=["Alan Bean is a test pilot."], references=[["Alan Bean was a test pilot."]])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PstWebnlg(evaluate.Metric):
    """Corpus-level WebNLG metrics; thin wrapper over ``webnlg_scores``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://github.com/WebNLG/GenerationEval"],
        )

    def _compute(self, predictions, references):
        return webnlg_scores(list(predictions), [list(refs) for refs in references])
