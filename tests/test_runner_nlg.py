"""Smoke NLG runs on CPU: train a tiny GPT-2 with PST, decode with beam search, score, record."""
import math

import pytest
import torch

from pst.repro import profiles
from pst.repro.models import TINY_VOCAB_SIZE
from pst.repro.results import read_jsonl
from pst.repro.runners.nlg import PREDICTIONS_SUFFIX, run_nlg
from pst.repro.runstate import run_paths

pytestmark = pytest.mark.slow

EXPECTED_METRICS = {"e2e": {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}, "dart": {"BLEU", "METEOR", "TER"},
                    "webnlg": {"BLEU", "METEOR", "TER"}}


@pytest.mark.parametrize("dataset", ["e2e", "dart", "webnlg"])
def test_smoke_run_trains_decodes_scores_and_records(dataset, tmp_path):
    torch.set_num_threads(1)
    (run,) = profiles.nlg_runs("smoke", datasets=[dataset], methods=["pst"])
    record = run_nlg(run, tmp_path / "results", tmp_path / "work")
    paths = run_paths(run, tmp_path / "results", tmp_path / "work")
    assert paths.record.is_file() and not paths.checkpoints.exists()
    assert all(s == pytest.approx(0.9, abs=1e-3) for s in record["measured_sparsity"].values())
    assert len(record["measured_sparsity"]) == 2 * 4  # every Conv1D of the two blocks
    subsets = {"all", "seen", "unseen"} if dataset == "webnlg" else {"all"}
    assert set(record["metrics"]) == subsets
    for scores in record["metrics"].values():
        assert set(scores) == EXPECTED_METRICS[dataset]
        assert all(v is None or math.isfinite(v) for v in scores.values())
    outputs = read_jsonl(paths.side_file(PREDICTIONS_SUFFIX))
    assert {row["subset"] for row in outputs} == subsets
    assert all(isinstance(row["prediction"], str) and row["references"] for row in outputs)
    assert record["train_loss"] < math.log(TINY_VOCAB_SIZE)  # it learned: better than a uniform guess
    log = record["training_log"]  # the loss curve: ~20 points from step 1, sparsity rising to the target
    assert log[0]["step"] == 1 and 10 <= len(log) <= 25 and log[-1]["step"] <= record["train_steps"]
    assert log[0]["sparsity"] == 0.0 and log[-1]["sparsity"] == pytest.approx(0.9)
