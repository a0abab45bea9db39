"""GLUE metrics against hand-computed values, and the offline evaluate module against the function."""

from __future__ import annotations

import math

import evaluate
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import EvalPrediction

from pst.repro.data.glue import GLUE_TASKS
from pst.repro.metrics.glue import (
    GLUE_MODULE_PATH,
    MAIN_METRIC,
    METRIC_CONFIGS,
    glue_metrics,
    logits_to_predictions,
    make_compute_metrics,
    metric_config,
)

# One binary confusion matrix used for F1 and MCC: TP=3, FP=1, FN=1, TN=2.
BIN_PREDS = [1, 1, 1, 0, 0, 0, 1]
BIN_REFS = [1, 0, 1, 1, 0, 0, 1]
TP, FP, FN, TN = 3, 1, 1, 2


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "mnli", "mnli_matched", "mnli_mismatched"])
def test_accuracy_tasks_report_only_accuracy(task: str) -> None:
    preds, refs = [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]  # 3 of 5 right
    assert glue_metrics(task, preds, refs) == {"accuracy": pytest.approx(3 / 5)}


def test_mnli_three_classes() -> None:
    preds, refs = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]  # 4 of 6 right
    assert glue_metrics("mnli_mismatched", preds, refs)["accuracy"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_and_f1(task: str) -> None:
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    expected_f1 = 2 * precision * recall / (precision + recall)  # = 0.75
    result = glue_metrics(task, BIN_PREDS, BIN_REFS)
    assert result == {"accuracy": pytest.approx((TP + TN) / 7), "f1": pytest.approx(expected_f1)}
    assert expected_f1 == pytest.approx(0.75)


def test_f1_is_of_the_positive_class() -> None:
    # Swapping the class names changes F1 (positive class = 1), not accuracy.
    flipped = glue_metrics("mrpc", [1 - p for p in BIN_PREDS], [1 - r for r in BIN_REFS])
    assert flipped["f1"] == pytest.approx(2 * TN / (2 * TN + FN + FP))  # TN now plays TP: 4/6
    assert flipped["accuracy"] == pytest.approx(5 / 7)


def test_matthews_correlation_by_formula() -> None:
    expected = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert expected == pytest.approx(5 / 12)
    assert glue_metrics("cola", BIN_PREDS, BIN_REFS) == {"matthews_correlation": pytest.approx(expected)}


def test_matthews_correlation_of_constant_predictions_is_zero() -> None:
    assert glue_metrics("cola", [1, 1, 1, 1], [1, 0, 1, 0]) == {"matthews_correlation": 0.0}


def test_pearson_and_spearman_by_hand() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 5.0, 4.0, 9.0]
    # Deviations from the means (2.5 and 5): dx = -1.5 -.5 .5 1.5, dy = -3 0 -1 4.
    pearson = (4.5 + 0 - 0.5 + 6) / math.sqrt(5 * 26)
    # Ranks of y: 1 3 2 4 against 1 2 3 4 -> d^2 sums to 2; rho = 1 - 6*2 / (4*(16-1)).
    spearman = 1 - 6 * 2 / (4 * 15)
    assert glue_metrics("stsb", x, y) == {"pearson": pytest.approx(pearson), "spearmanr": pytest.approx(spearman)}
    assert spearman == pytest.approx(0.8)


def test_stsb_constant_predictions_give_nan_like_the_hub() -> None:
    with pytest.warns(Warning):
        result = glue_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(result["pearson"]) and math.isnan(result["spearmanr"])


@pytest.mark.filterwarnings("ignore:A single label was found")
@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=40))
def test_mcc_matches_confusion_matrix_formula(pairs: list[tuple[int, int]]) -> None:
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    tp = sum(p == r == 1 for p, r in pairs)
    tn = sum(p == r == 0 for p, r in pairs)
    fp = sum(p == 1 and r == 0 for p, r in pairs)
    fn = sum(p == 0 and r == 1 for p, r in pairs)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    expected = 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator
    assert glue_metrics("cola", preds, refs)["matthews_correlation"] == pytest.approx(expected)


def test_main_metric_table() -> None:
    assert MAIN_METRIC == {
        "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "sst2": "accuracy",
        "mrpc": "f1", "qqp": "f1", "cola": "matthews_correlation", "stsb": "pearson",
        "mnli_matched": "accuracy", "mnli_mismatched": "accuracy",
    }
    for name, task in GLUE_TASKS.items():
        assert task.main_metric == MAIN_METRIC[name]


@pytest.mark.parametrize("config", METRIC_CONFIGS)
def test_every_config_reports_its_main_metric(config: str) -> None:
    refs = [0.5, 1.0, 4.0, 3.0] if config == "stsb" else [0, 1, 1, 0]
    assert MAIN_METRIC[config] in glue_metrics(config, refs[::-1], refs)


def test_metric_config_per_dev_split() -> None:
    assert metric_config("mnli", "validation_matched") == "mnli_matched"
    assert metric_config("mnli", "validation_mismatched") == "mnli_mismatched"
    assert metric_config("rte", "validation") == "rte"
    with pytest.raises(ValueError, match="validation_matched"):
        metric_config("mnli", "validation")


def test_unknown_task_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"'wnli'.*mnli_mismatched"):
        glue_metrics("wnli", [0], [0])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="logits_to_predictions"):
        glue_metrics("sst2", np.zeros((3, 2)), [0, 1, 0])
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        glue_metrics("sst2", [0, 1, 0], [0, 1])
    with pytest.raises(ValueError, match="class ids"):
        glue_metrics("sst2", [0.2, 0.9], [0, 1])
    with pytest.raises(ValueError, match="no predictions"):
        glue_metrics("cola", [], [])


def test_logits_to_predictions() -> None:
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    assert logits_to_predictions("sst2", logits).tolist() == [1, 0, 1]
    assert logits_to_predictions("mnli_matched", (np.eye(3)[[2, 0, 1]], "hidden")).tolist() == [2, 0, 1]
    scores = logits_to_predictions("stsb", np.array([[1.5], [4.0]]))
    assert scores.shape == (2,) and scores.tolist() == [1.5, 4.0]
    with pytest.raises(ValueError, match=r"\(n, 1\)"):
        logits_to_predictions("stsb", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_labels"):
        logits_to_predictions("rte", np.zeros(4))


def test_compute_metrics_for_the_trainer() -> None:
    compute = make_compute_metrics("mrpc")
    logits = np.array([[0.0, 1.0] if p else [1.0, 0.0] for p in BIN_PREDS])
    result = compute(EvalPrediction(predictions=logits, label_ids=np.array(BIN_REFS)))
    assert result == glue_metrics("mrpc", BIN_PREDS, BIN_REFS)


@pytest.fixture(scope="module")
def random_inputs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for config in METRIC_CONFIGS:
        if config == "stsb":
            refs = rng.uniform(0, 5, 50)
            out[config] = (refs + rng.normal(0, 1, 50), refs)
        else:
            k = 3 if config.startswith("mnli") else 2
            out[config] = (rng.integers(0, k, 50), rng.integers(0, k, 50))
    return out


@pytest.mark.parametrize("config", METRIC_CONFIGS)
def test_evaluate_module_by_path_equals_the_function(config: str, random_inputs) -> None:
    preds, refs = random_inputs[config]
    metric = evaluate.load(GLUE_MODULE_PATH, config)
    from_module = metric.compute(predictions=preds, references=refs)
    expected = glue_metrics(config, preds, refs)
    assert from_module.keys() == expected.keys()
    for key, value in expected.items():
        assert from_module[key] == pytest.approx(value, rel=1e-12)


def test_evaluate_module_accumulates_batches() -> None:
    metric = evaluate.load(GLUE_MODULE_PATH, "cola")
    metric.add_batch(predictions=BIN_PREDS[:3], references=BIN_REFS[:3])
    metric.add_batch(predictions=BIN_PREDS[3:], references=BIN_REFS[3:])
    assert metric.compute()["matthews_correlation"] == pytest.approx(5 / 12)


def test_evaluate_module_refuses_unknown_config() -> None:
    with pytest.raises(ValueError, match="'wnli'"):
        evaluate.load(GLUE_MODULE_PATH, "wnli")
