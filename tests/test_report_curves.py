"""Training curves from hand-made records: a line per method, the selected evaluation, the
sparsity schedule, and clear errors for records without the points."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_report import glue_record, nlg_record

from pst.repro import report
from pst.repro.results import record_path, write_record

SCHEDULE = [(1, 0.0), (10, 0.0), (20, 0.5), (30, 0.9), (40, 0.9)]


def _evaluation(step: int, accuracy: float, sparsity: float) -> dict:
    return {"step": step, "epoch": step / 10, "sparsity": sparsity, "metrics": {"validation": {"accuracy": accuracy}}}


def with_curves(results: Path, record: dict, evaluations: list[dict] | None, log: list[tuple] | None,
                selected: int | None = None) -> dict:
    """``record`` rewritten with these evaluations (the one at step ``selected`` kept) and training log."""
    record = dict(record)
    for field, points in (("evaluations", evaluations), ("training_log", log)):
        record.pop(field, None)
        if points is not None:
            record[field] = points
    if log is not None:
        prunes = record["method"] != "dense"
        record["training_log"] = [{"step": s, "epoch": s / 10, "loss": 2.0 - s / 40, "learning_rate": 1e-3,
                                   "sparsity": p if prunes else 0.0} for s, p in log]
    if evaluations and selected is not None:
        chosen = next(e for e in evaluations if e["step"] == selected)
        record["selected"] = {**chosen, "target_reached": True, "metric": "accuracy",
                              "value": chosen["metrics"]["validation"]["accuracy"]}
    write_record(record_path(results, record["run_id"]), record)
    return record


def _panels(figure) -> list:
    return [ax for ax in figure.axes if ax.get_title()]


def _method_lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()
            if not line.get_label().startswith("_") and line.get_gid() != "majority"}


@pytest.fixture
def curve_results(tmp_path: Path) -> Path:
    """glue-bert on SST-2: PST (two learning rates), MaP and dense, each with three evaluations."""
    results = tmp_path / "results"
    for method, lr, values, selected in (("pst", 1e-3, (0.6, 0.7, 0.8), 40), ("pst", 3e-3, (0.5, 0.55, 0.6), 40),
                                         ("magnitude", 1e-3, (0.65, 0.75, 0.72), 30),
                                         ("dense", 3e-4, (0.9, 0.92, 0.91), 20)):
        record = glue_record(results, "glue-bert", "sst2", method, 0.0, lr=lr)
        sparsity = (0.0, 0.9, 0.9) if method != "dense" else (0.0, 0.0, 0.0)
        evaluations = [_evaluation(s, v, p) for s, v, p in zip((20, 30, 40), values, sparsity)]
        with_curves(results, record, evaluations, SCHEDULE, selected)
    return results


def test_glue_curves_draw_the_kept_run_per_method_with_its_selected_evaluation(curve_results: Path) -> None:
    figure = report.glue_curves(curve_results, "glue-bert")
    (ax,) = _panels(figure)
    assert ax.get_title() == "SST-2" and ax.get_xlabel() == "optimizer step" and "SST-2 (acc)" in ax.get_ylabel()
    lines = _method_lines(ax)
    assert list(lines) == ["PST", "MaP", "Dense fine-tuning"]  # METHODS order, one line each
    assert list(lines["PST"].get_xdata()) == [20, 30, 40]
    assert list(lines["PST"].get_ydata()) == pytest.approx([60.0, 70.0, 80.0])  # the better learning rate, percent
    assert lines["MaP"].get_color() == report.method_style("magnitude")["color"]
    selected = {line.get_gid(): line.get_xdata()[0] for line in ax.get_lines() if (line.get_gid() or "").startswith("selected:")}
    assert selected == {"selected:pst": 40, "selected:magnitude": 30, "selected:dense": 20}
    (twin,) = [other for other in figure.axes if other is not ax and other.bbox.bounds == ax.bbox.bounds]
    schedule = [line for line in twin.get_lines() if line.get_gid() == "schedule"]
    assert len(schedule) == 1  # PST and MaP share one schedule; dense does not prune
    assert list(schedule[0].get_xdata()) == [s for s, _ in SCHEDULE]
    assert list(schedule[0].get_ydata()) == pytest.approx([100 * p for _, p in SCHEDULE])
    assert twin.get_ylim()[0] < 0 and twin.get_ylim()[1] > 100  # 0 and 100 off the frame


def test_glue_curves_fall_back_to_the_evaluations_sparsity_and_pick_tasks(curve_results: Path, tmp_path: Path) -> None:
    record = glue_record(curve_results, "glue-bert", "mrpc", "pst", 0.8)
    with_curves(curve_results, record, [_evaluation(5, 0.7, 0.5), _evaluation(10, 0.8, 0.9)], None)
    figure = report.glue_curves(curve_results, "glue-bert")
    assert [ax.get_title() for ax in _panels(figure)] == ["SST-2", "MRPC"]  # the paper's task order
    only = report.glue_curves(curve_results, "glue-bert", tasks="mrpc")  # one task may be a plain name
    (ax,) = _panels(only)
    (twin,) = [other for other in only.axes if other is not ax]
    assert list(twin.get_lines()[0].get_ydata()) == pytest.approx([50.0, 90.0])
    with pytest.raises(ValueError, match=r"no records of task\(s\) \['rte'\].*\['sst2', 'mrpc'\]"):
        report.glue_curves(curve_results, "glue-bert", tasks=["rte"])
    with pytest.raises(ValueError, match="no records of experiment 'glue-roberta'"):
        report.glue_curves(curve_results, "glue-roberta")
    report.save_figure(figure, tmp_path / "curves")
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")


def test_curves_name_the_run_whose_record_lacks_the_points(curve_results: Path) -> None:
    record = glue_record(curve_results, "glue-bert", "rte", "movement", 0.7)
    with_curves(curve_results, record, [], None)
    with pytest.raises(report.MissingCurveError, match=f"run '{record['run_id']}' has no 'evaluations'"):
        report.glue_curves(curve_results, "glue-bert")
    with pytest.raises(report.MissingCurveError, match=f"run '{record['run_id']}' has no 'training_log'.*rerun"):
        report.training_loss_curves(curve_results, "glue-bert", tasks=["rte"])


def test_training_loss_curves_for_nlg(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for method, bleu in (("pst", 60.0), ("movement", 55.0)):
        with_curves(results, nlg_record(results, "e2e", method, bleu), None, SCHEDULE)
    with_curves(results, nlg_record(results, "dart", "pst", 30.0), None, SCHEDULE[:3])
    figure = report.training_loss_curves(results, "nlg-gpt2")
    panels = _panels(figure)
    assert [ax.get_title() for ax in panels] == ["E2E", "DART"]
    lines = _method_lines(panels[0])
    assert list(lines) == ["PST", "MvP"] and panels[0].get_ylabel() == "training loss"
    assert list(lines["MvP"].get_ydata()) == pytest.approx([2.0 - s / 40 for s, _ in SCHEDULE])
    assert list(_method_lines(panels[1])["PST"].get_xdata()) == [1, 10, 20]


def test_build_report_draws_the_curves_and_leaves_out_what_records_cannot_show(curve_results: Path, tmp_path: Path,
                                                                                caplog) -> None:
    old = nlg_record(curve_results, "e2e", "pst", 60.0)  # made before the runners kept a training log
    caplog.set_level(logging.WARNING)
    written = report.build_report(curve_results, tmp_path / "out")
    assert {"figures/curves_glue_bert", "tables/nlg_gpt2"} <= set(written)
    assert "figures/curves_nlg_gpt2" not in written
    assert f"figure curves_nlg_gpt2 left out: run '{old['run_id']}' has no 'training_log'" in caplog.text
    with_curves(curve_results, old, None, SCHEDULE)
    assert "figures/curves_nlg_gpt2" in report.build_report(curve_results, tmp_path / "out")


def test_curves_have_one_legend_for_the_figure(curve_results: Path) -> None:
    record = glue_record(curve_results, "glue-bert", "mrpc", "pst", 0.8)
    with_curves(curve_results, record, [_evaluation(5, 0.7, 0.5), _evaluation(10, 0.8, 0.9)], None)
    figure = report.glue_curves(curve_results, "glue-bert")
    assert all(ax.get_legend() is None for ax in figure.axes)
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ["PST", "MaP", "Dense fine-tuning", "sparsity schedule (right axis)", "majority class"]


def test_glue_curves_draw_the_majority_class(curve_results: Path) -> None:
    figure = report.glue_curves(curve_results, "glue-bert")
    (ax,) = _panels(figure)
    (majority,) = [line for line in ax.get_lines() if line.get_gid() == "majority"]
    assert 0 < majority.get_ydata()[0] < 100
    assert "majority class" in [text.get_text() for text in figure.legends[0].get_texts()]
