"""Table 1 of the paper and the parameter counts, computed from the code on meta-device models."""
from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...methods import get_method

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)
from .columns import METHOD_ORDER, MISSING, frame, method_name
from .paper import paper_results
from .records import get


def _build_model(model: str):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaModel

    if model == "BERT-base":
        return BertModel(BertConfig())
    if model == "RoBERTa-base":
        return RobertaModel(RobertaConfig(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5))
    if model == "GPT-2 medium":
        return GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16))
    raise ValueError(f"unknown model shape {model!r}; expected one of {list(PARAMETER_COUNT_MODELS)}")


PARAMETER_COUNT_MODELS = ("BERT-base", "RoBERTa-base", "GPT-2 medium")


@functools.lru_cache(maxsize=None)
def parameter_counts(model: str, method: str) -> dict[str, int]:
    """Counts of ``method`` on ``model``'s shapes, as :func:`pst.trainable_parameters` gives them.

    Built on the meta device (no memory, no download), head excluded (``head_modules=[]``).
    Keys: trainable, total, added, sparsified_weights (weights of the sparsified matrices).
    """
    import torch

    from ...config import PSTConfig
    from ...surgery import sparse_layers, sparsify, trainable_parameters

    with torch.device("meta"):
        net = sparsify(_build_model(model), PSTConfig(method=method, head_modules=[]))
    counts = trainable_parameters(net)
    sparsified = sum(layer.weight.numel() for _, layer in sparse_layers(net))
    if not sparsified and method != "dense":
        raise ValueError(f"{method} sparsified nothing on {model}")
    if method == "dense":  # dense wraps nothing: count the matrices the others sparsify
        sparsified = parameter_counts(model, "pst")["sparsified_weights"]
    return {"trainable": counts.trainable, "total": counts.total, "added": counts.added,
            "sparsified_weights": sparsified}


def criteria_table() -> "pd.DataFrame":
    """Table 1 of the paper computed from the code: criterion, data, extra trainable parameters.

    Rows MaP, MvP, PST; counts on BERT-base shapes (meta device, task head excluded). Columns:

    * "Extra trainable params": parameters the method adds (0; the 85M score matrix; U, V, A, B, R, C);
    * "Extra ÷ sparsified weights (×)": that count divided by the number of weights in the
      sparsified matrices (the 72 encoder matrices, 84,934,656, biases excluded);
    * "Trainable ÷ MvP trainable (%)": the method's trainable parameters divided by MvP's
      (all 109,482,240 pre-trained parameters plus its 84,934,656 scores);
    * "Paper: extra (×)", "Paper: trainable": the paper's Table 1 entry and the abstract's
      headline, from ``paper_results.json`` ("—" where it says nothing).
    """
    paper = paper_results()["table1"]["methods"]
    movement = parameter_counts("BERT-base", "movement")
    rows = {}
    for method in ("magnitude", "movement", "pst"):
        spec, counts = get_method(method), parameter_counts("BERT-base", method)
        rows[method_name(method)] = {
            "Criterion (score)": spec.criterion,
            "Needs data": "yes" if spec.needs_data else "no",
            "Extra trainable params": counts["added"],
            "Extra ÷ sparsified weights (×)": counts["added"] / counts["sparsified_weights"],
            "Trainable ÷ MvP trainable (%)": 100.0 * counts["trainable"] / movement["trainable"],
            "Paper: extra (×)": get(paper, f"{method}.extra_trainable") or MISSING,
            "Paper: trainable": get(paper, f"{method}.trainable_share") or MISSING,
        }
    note = ("Counts on BERT-base shapes (meta device, task head excluded) from pst.trainable_parameters. "
            "'Extra ÷ sparsified weights' = parameters the method adds / weights of the 72 sparsified encoder "
            f"matrices ({movement['sparsified_weights']:,}). 'Trainable ÷ MvP trainable' = the method's trainable "
            f"parameters / MvP's ({movement['trainable']:,}: every pre-trained parameter plus the scores). "
            "Paper columns: Table 1 and the abstract, as summarised in docs/method.md.")
    return frame(rows, "Method", {"Extra ÷ sparsified weights (×)": 4, "Trainable ÷ MvP trainable (%)": 2}, note)


def parameter_counts_table(models: Sequence[str] = PARAMETER_COUNT_MODELS,
                           methods: Sequence[str] = METHOD_ORDER) -> "pd.DataFrame":
    """Trainable, total and percent for each method on BERT-base, RoBERTa-base and GPT-2 medium shapes.

    Counted as :func:`pst.trainable_parameters` does, task head excluded; "Total" includes the
    parameters the method adds, and "Trainable (%)" = 100 x Trainable / Total.
    """
    import pandas as pd

    rows = []
    for model in models:
        for method in methods:
            counts = parameter_counts(model, method)
            rows.append({"Model": model, "Method": method_name(method), "Added": counts["added"],
                         "Trainable": counts["trainable"], "Total": counts["total"],
                         "Trainable (%)": 100.0 * counts["trainable"] / counts["total"]})
    frame = pd.DataFrame(rows).astype(object)
    frame["Trainable (%)"] = frame["Trainable (%)"].map(lambda v: round(v, 3))
    frame.attrs["decimals"] = {"Trainable (%)": 3}
    frame.attrs["note"] = ("Meta-device models with the pre-trained models' shapes, task head excluded "
                           "(GPT-2's tied LM head counted once). Ranks r1 = r2 = 8.")
    return frame
