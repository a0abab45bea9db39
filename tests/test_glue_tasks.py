"""The GLUE task table: one light module that the loader, the metrics, the profiles and the report read."""
import subprocess
import sys
from pathlib import Path

import pytest

from pst.repro import profiles
from pst.repro.data import glue as data_glue
from pst.repro.glue_tasks import GLUE_TASKS, get_task
from pst.repro.metrics import glue as metrics_glue
from pst.repro.report import columns

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_imports_no_datasets():
    code = "import sys, pst.repro.glue_tasks; print('datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_every_reader_uses_the_one_table():
    assert data_glue.GLUE_TASKS is GLUE_TASKS and data_glue.get_task is get_task
    assert profiles.GLUE_TASKS == ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte")
    assert columns.GLUE_ORDER == profiles.GLUE_TASKS
    assert {name: spec.main_metric for name, spec in GLUE_TASKS.items()}.items() <= metrics_glue.MAIN_METRIC.items()


def test_report_columns_follow_the_tasks_splits_and_metrics():
    assert [c.label for c in columns.GLUE_COLUMNS] == [
        "MNLI-m (acc)", "MNLI-mm (acc)", "QQP (acc)", "QQP (F1)", "QNLI (acc)", "SST-2 (acc)", "CoLA (MCC)",
        "STS-B (Pearson)", "STS-B (Spearman)", "MRPC (acc)", "MRPC (F1)", "RTE (acc)"]
    assert [c.paper_key for c in columns.GLUE_COLUMNS[:3]] == ["accuracy_matched", "accuracy_mismatched", "accuracy"]
    assert columns.main_label("mnli") == "MNLI-m (acc)" and columns.main_label("stsb") == "STS-B (Pearson)"
    assert columns.task_name("sst2") == "SST-2" and columns.task_name("webnlg") == "WebNLG"


def test_metrics_report_exactly_the_tasks_metrics():
    for name, spec in GLUE_TASKS.items():
        references = [0.1, 0.5, 0.9, 0.3] if spec.is_regression else [0, 1, 1, 0]
        assert tuple(metrics_glue.glue_metrics(name, references, references)) == spec.metrics


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'.*'mnli'"):
        get_task("squad")
