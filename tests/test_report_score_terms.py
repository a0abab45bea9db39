"""The report's PST score analysis: written from the analysis runs' score files, once, with
the movement run of the same task as a reference, and skipped (with a warning) for old files."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_report import glue_record

import pst
from pst import PSTConfig
from pst.repro import report
from pst.repro.results import record_path
from pst.repro.runners.glue import _save_scores


def _scores(results: Path, record: dict, model, method: str, seed: int) -> Path:
    """A score file as a run of ``method`` saves it, its learned factors random."""
    pst.sparsify(model, PSTConfig(method=method))
    generator = torch.Generator().manual_seed(seed)
    for _, layer in pst.sparse_layers(model):
        with torch.no_grad():
            for part in ("B", "V", "R", "C", "scores"):
                if getattr(layer, part) is not None:
                    getattr(layer, part).normal_(std=0.02, generator=generator)
    pst.set_sparsity(model, 0.9)
    path = record_path(results, record["run_id"])
    path = path.with_name(path.name.removesuffix(".json") + ".scores.safetensors")
    _save_scores(model, path)
    return path


def test_report_writes_pst_score_terms_once_with_the_movement_reference(tmp_path: Path, tiny_model) -> None:
    results, out = tmp_path / "results", tmp_path / "out"
    pst_run = glue_record(results, "analysis", "sst2", "pst", 0.72)
    _scores(results, pst_run, tiny_model("bert"), "pst", seed=1)  # the same pre-trained W for both methods
    written = report.score_structure_outputs(results, out)
    assert {"tables/pst_score_terms_sst2", "figures/pst_score_terms_sst2"} <= set(written)
    table = pd.read_csv(written["tables/pst_score_terms_sst2"][2])
    assert len(table) == 12 and "spearman_pst_mvp" not in table.columns  # no movement run yet
    shares = table[["share_magnitude", "share_low_rank", "share_structured", "share_covariance"]].sum(axis=1)
    assert shares.tolist() == pytest.approx([1.0] * 12)
    assert table["kept_outside_map_w"].between(0, 1).all() and (table["kept_outside_map_w"] > 0).any()

    movement = glue_record(results, "analysis", "sst2", "movement", 0.7)
    _scores(results, movement, tiny_model("bert"), "movement", seed=2)
    written = report.build_report(results, out)
    assert {"tables/score_structure_sst2", "tables/pst_score_terms_sst2", "figures/pst_score_terms_sst2"} <= set(written)
    table = pd.read_csv(written["tables/pst_score_terms_sst2"][2])
    assert table["spearman_pst_mvp"].between(-1, 1).all() and table["spearman_mvp_abs_w"].between(-1, 1).all()

    before = {p: p.stat().st_mtime_ns for p in written["tables/pst_score_terms_sst2"]}
    again = report.score_structure_outputs(results, out)  # the notebook after the report: nothing to redo
    assert again["tables/pst_score_terms_sst2"] == written["tables/pst_score_terms_sst2"]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_score_file_from_before_w_u_v_were_saved_is_skipped_with_a_warning(tmp_path: Path, caplog,
                                                                              tiny_model) -> None:
    from safetensors.torch import load_file, save_file

    results = tmp_path / "results"
    pst_run = glue_record(results, "analysis", "sst2", "pst", 0.72)
    path = _scores(results, pst_run, tiny_model("bert"), "pst", seed=1)
    save_file({k: v for k, v in load_file(str(path)).items() if not k.endswith((".W", ".U", ".V"))}, str(path))
    caplog.set_level(logging.WARNING)
    written = report.score_structure_outputs(results, tmp_path / "out")
    assert "tables/pst_score_terms_sst2" not in written
    assert f"analysis run {pst_run['run_id']}" in caplog.text and "rerun the analysis experiment" in caplog.text
