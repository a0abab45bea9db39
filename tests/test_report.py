"""The report: grid selection, table layouts, paper rows, files and figures, all from fake records."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pst.repro import report
from pst.repro.experiments import member_path
from pst.repro.fingerprint import code_fingerprint
from pst.repro.profiles import SCORE_VARIANTS
from pst.repro.results import record_path, run_id, write_record

DASH = report.MISSING

# Dev splits and metric names as the GLUE runner records them.
_GLUE_METRICS = {
    "mnli": {"validation_matched": ("accuracy",), "validation_mismatched": ("accuracy",)},
    "qqp": {"validation": ("accuracy", "f1")},
    "qnli": {"validation": ("accuracy",)},
    "sst2": {"validation": ("accuracy",)},
    "cola": {"validation": ("matthews_correlation",)},
    "stsb": {"validation": ("pearson", "spearmanr")},
    "mrpc": {"validation": ("accuracy", "f1")},
    "rte": {"validation": ("accuracy",)},
}
_MAIN = {"mnli": ("validation_matched", "accuracy"), "qqp": ("validation", "f1"), "qnli": ("validation", "accuracy"),
         "sst2": ("validation", "accuracy"), "cola": ("validation", "matthews_correlation"),
         "stsb": ("validation", "pearson"), "mrpc": ("validation", "f1"), "rte": ("validation", "accuracy")}


def _pst_config(method: str, sparsity: float, overrides: dict) -> dict:
    config = {"alpha1": 1.0, "alpha2": 1.0, "beta": 1.0, "cooldown_fraction": 0.3, "fused_modules": None,
              "head_modules": None, "initial_sparsity": 0.0, "warmup_fraction": 0.1, "method": method,
              "score_low_rank": True, "score_magnitude": True, "score_rank": 8, "score_structured": True,
              "sparsity": sparsity, "target_modules": None, "train_head": True, "weight_rank": 8}
    return {**config, **overrides}


def add_member(results: Path, experiment: str, rid: str) -> None:
    """What an experiment writes for each of its runs before they train (pst.repro.experiments)."""
    path = member_path(results, experiment, rid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")


def glue_record(results: Path, experiment: str, task: str, method: str, value: float, lr: float = 1e-4,
                epochs: int = 20, sparsity: float = 0.9, pst: dict | None = None, added: int = 30464,
                source: str = "synthetic") -> dict:
    """A GLUE record with the runner's structure; every metric is ``value`` plus a fixed offset."""
    pst = dict(pst or {})
    config = {"batch_size": 32, "data_dir": None, "data_source": source, "epochs": epochs,
              "eval_batch_size": 128, "learning_rate": lr, "max_length": 128,
              "method": method, "model": "tiny:bert", "pst": pst, "seed": 0,
              "sparsity": sparsity, "synthetic_sizes": None, "task": task, "warmup_steps": 0, "weight_decay": 0.0}
    metrics = {split: {name: value + 0.01 * i for i, name in enumerate(names)}
               for split, names in _GLUE_METRICS[task].items()}
    if task == "mnli":
        metrics["validation_mismatched"]["accuracy"] = value - 0.02
    split, main = _MAIN[task]
    selected_sparsity = sparsity if method != "dense" else 0.0
    evaluation = {"epoch": float(epochs), "metrics": metrics, "sparsity": selected_sparsity, "step": 100}
    rid = run_id(config)
    record = {
        "code_fingerprint": code_fingerprint(), "config": config, "environment": {"pst": "0.1.0"},
        "evaluations": [evaluation], "finished_at": 1.0,
        "main_metric": main, "mean_sparsity": selected_sparsity - 0.0001 if method != "dense" else 0.0,
        "measured_sparsity": {}, "method": method, "model_name": "tiny:bert",
        "pst_config": _pst_config(method, sparsity, pst), "run_id": rid, "seed": 0,
        "selected": {**evaluation, "target_reached": True, "metric": main, "value": metrics[split][main]},
        "task": task, "train_steps": 100,
        "trainable_parameters": {"added": added, "head": 130, "percent": 17.7, "total": 172162, "trainable": 30594},
        "wall_time_s": 1.0,
    }
    write_record(record_path(results, rid), record)
    add_member(results, experiment, rid)
    return record


def nlg_record(results: Path, task: str, method: str, bleu: float, lr: float = 1e-4, meteor: float | None = 40.0,
               ) -> dict:
    config = {"batch_size": 8, "epochs": 5, "learning_rate": lr, "method": method,
              "model": "tiny:gpt2", "pst": {}, "seed": 0, "sparsity": 0.9, "task": task}
    if task == "e2e":
        metrics = {"all": {"BLEU": bleu, "NIST": 8.123, "METEOR": meteor, "ROUGE_L": 70.0, "CIDEr": 2.456}}
    else:
        subsets = ("all", "seen", "unseen") if task == "webnlg" else ("all",)
        metrics = {s: {"BLEU": bleu - i, "METEOR": meteor, "TER": 45.0 + i} for i, s in enumerate(subsets)}
    rid = run_id(config)
    record = {"code_fingerprint": code_fingerprint(), "config": config, "mean_sparsity": 0.8999, "method": method,
              "metrics": metrics, "model_name": "tiny:gpt2", "pst_config": _pst_config(method, 0.9, {}),
              "predictions_file": rid + ".predictions.jsonl", "run_id": rid, "seed": 0, "task": task,
              "trainable_parameters": {"added": 1, "head": 0, "percent": 1.0, "total": 2, "trainable": 1}}
    write_record(record_path(results, rid), record)
    # The runner writes decoded outputs next to the record: the report must ignore them.
    record_path(results, rid).with_name(record["predictions_file"]).write_text('{"subset": "all"}\n')
    add_member(results, "nlg-gpt2", rid)
    return record


@pytest.fixture
def glue_results(tmp_path: Path) -> Path:
    """glue-bert: four tasks x four methods, each with a 2 x 2 grid (the best at lr 1e-4, 40 epochs)."""
    results = tmp_path / "results"
    base = {"pst": 0.80, "magnitude": 0.75, "movement": 0.78, "dense": 0.85}
    for task in ("sst2", "mrpc", "mnli", "stsb"):
        for method, value in base.items():
            for lr in (5e-5, 1e-4):
                for epochs in (20, 40):
                    best = lr == 1e-4 and epochs == 40
                    glue_record(results, "glue-bert", task, method, value if best else value - 0.1 - lr, lr, epochs)
    return results


# --------------------------------------------------------------------------- grid selection


def test_best_runs_picks_the_best_learning_rate_and_epochs(glue_results: Path) -> None:
    records = [r for r in report.read_results(glue_results) if "glue-bert" in r["experiments"]]
    assert len(records) == 64
    best = report.best_runs(records)
    assert len(best) == 16
    for (task, method), record in best.items():
        assert (record["config"]["learning_rate"], record["config"]["epochs"]) == (1e-4, 40), (task, method)


def test_nan_never_wins_and_nlg_selects_by_bleu(tmp_path: Path) -> None:
    results = tmp_path / "results"
    nan_run = glue_record(results, "glue-bert", "stsb", "pst", math.nan, lr=1e-4)
    low_run = glue_record(results, "glue-bert", "stsb", "pst", 0.1, lr=3e-5)
    best = report.best_runs([nan_run, low_run])
    assert best[("stsb", "pst")]["config"]["learning_rate"] == 3e-5
    assert report.best_runs([nan_run])[("stsb", "pst")] is nan_run  # a group of NaN runs still has a record

    worse, better = nlg_record(results, "e2e", "pst", 60.0, lr=1e-4), nlg_record(results, "e2e", "pst", 65.0, lr=2e-4)
    assert report.best_runs([worse, better])[("e2e", "pst")] is better
    by_lr = report.best_runs([worse, better], by=("task", "config.learning_rate"))
    assert set(by_lr) == {("e2e", 1e-4), ("e2e", 2e-4)}


# --------------------------------------------------------------------------- GLUE


APT = "reported by APT (ICML 2024, Table 7)"


def test_glue_table_layout_values_and_published_rows(glue_results: Path) -> None:
    table = report.glue_table(glue_results, "glue-bert")
    published = [f"{m} at {s}%, {APT}" for m in ("PST", "MaP", "MvP") for s in (90, 50)]
    assert list(table.index) == ["PST", *published[0:2], "MaP", *published[2:4], "MvP", *published[4:6],
                                 "Dense fine-tuning", "Dense fine-tuning (paper)"]
    assert list(table.columns) == ["Sparsity (%)", "MNLI-m (acc)", "MNLI-mm (acc)", "SST-2 (acc)", "STS-B (Pearson)",
                                   "STS-B (Spearman)", "MRPC (acc)", "MRPC (F1)", "Avg (main metrics)"]
    ours = table.loc[["PST", "MaP", "MvP", "Dense fine-tuning"]]
    assert (table.loc["Dense fine-tuning (paper)"] == DASH).all()  # no sourced number: never invented
    values = ours.drop(columns="Sparsity (%)").to_numpy(dtype=float)
    assert ((values > 1) & (values <= 100)).all()  # percentages, finite
    assert table.loc["PST", "SST-2 (acc)"] == 80.0
    assert table.loc["PST", "MNLI-mm (acc)"] == 78.0
    assert table.loc["PST", "MRPC (F1)"] == 81.0 and table.loc["PST", "MRPC (acc)"] == 80.0
    assert table.loc["MaP", "STS-B (Spearman)"] == 76.0
    # average of the main metrics: MNLI-m 80, SST-2 80, STS-B Pearson 80, MRPC F1 81
    assert table.loc["PST", "Avg (main metrics)"] == round((80 + 80 + 80 + 81) / 4, 1)
    assert table.loc["PST", "Sparsity (%)"] == 90.0 and table.loc["Dense fine-tuning", "Sparsity (%)"] == 0.0
    # APT's one number per task sits in the task's main-metric column; its 8-task average is not
    # shown beside a table of four tasks
    apt = table.loc[f"PST at 90%, {APT}"]
    assert (apt["Sparsity (%)"], apt["MNLI-m (acc)"], apt["SST-2 (acc)"], apt["STS-B (Pearson)"], apt["MRPC (F1)"]) == (
        90.0, 79.6, 89.0, 81.3, 83.6)
    assert apt["MNLI-mm (acc)"] == apt["STS-B (Spearman)"] == apt["MRPC (acc)"] == apt["Avg (main metrics)"] == DASH
    assert table.loc[f"MaP at 50%, {APT}", "SST-2 (acc)"] == 91.0
    assert "APT" in table.attrs["note"] or "reported by" in table.attrs["note"]


def test_published_table_is_apt_table_7_with_its_source() -> None:
    table = report.published_table("glue-bert")
    assert list(table.columns) == ["MNLI", "QQP", "QNLI", "SST-2", "CoLA", "STS-B", "MRPC", "RTE", "Avg"]
    assert list(table.loc["PST at 90%"]) == [79.6, 86.1, 86.6, 89.0, 38.0, 81.3, 83.6, 63.2, 75.9]
    assert list(table.loc["MvP at 50%"]) == [82.3, 87.3, 90.8, 90.8, 57.7, 89.4, 91.1, 67.2, 82.1]
    for row in table.itertuples(index=False):  # the reported average is the mean of the eight tasks
        assert abs(sum(row[:8]) / 8 - row[8]) <= 0.1  # each printed to one decimal
    note = table.attrs["note"]
    assert "APT" in note and "ICML 2024" in note and "Table 7" in note and "not the PST paper's own" in note
    assert "MNLI -> MNLI-m (acc)" in note and "STS-B -> STS-B (Pearson)" in note
    assert report.published("glue-roberta") is None and report.published("nlg-gpt2") is None


def test_glue_table_never_averages_synthetic_and_real_tasks(tmp_path: Path) -> None:
    results = tmp_path / "results"
    glue_record(results, "glue-roberta", "sst2", "pst", 0.9)  # synthetic
    glue_record(results, "glue-roberta", "stsb", "pst", 0.3, source="bundled")
    table = report.glue_table(results, "glue-roberta")
    assert "Avg (main metrics)" not in table.columns
    assert table.loc["PST", "SST-2 (acc)"] == 90.0 and table.loc["PST", "STS-B (Pearson)"] == 30.0


def test_glue_table_missing_run_shows_dash_and_no_average(tmp_path: Path) -> None:
    results = tmp_path / "results"
    glue_record(results, "glue-roberta", "rte", "pst", 0.7)
    glue_record(results, "glue-roberta", "cola", "pst", 0.5)
    glue_record(results, "glue-roberta", "rte", "magnitude", 0.6)
    glue_record(results, "glue-roberta", "rte", "lora", 0.65)
    table = report.glue_table(results, "glue-roberta", paper=False)
    assert list(table.index) == ["PST", "MaP", "LoRA"]
    assert list(table.columns) == ["Sparsity (%)", "CoLA (MCC)", "RTE (acc)", "Avg (main metrics)"]
    assert table.loc["MaP", "CoLA (MCC)"] == DASH and table.loc["MaP", "Avg (main metrics)"] == DASH
    assert table.loc["PST", "Avg (main metrics)"] == 60.0
    with pytest.raises(ValueError, match="glue-bert"):
        report.glue_table(results, "glue-bert")


def test_selection_table_reports_the_chosen_settings(glue_results: Path) -> None:
    table = report.selection_table(glue_results, "glue-bert")
    assert len(table) == 16
    assert set(table["Learning rate"]) == {1e-4} and set(table["Epochs"]) == {40}
    assert set(table["Runs in grid"]) == {4}
    assert list(table["Task"][:4]) == ["MNLI"] * 4 and list(table["Method"][:4]) == ["PST", "MaP", "MvP",
                                                                                      "Dense fine-tuning"]


# --------------------------------------------------------------------------- NLG


def test_nlg_table_layout(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for method, bleu in (("pst", 68.0), ("magnitude", 60.0), ("movement", 66.0)):
        nlg_record(results, "e2e", method, bleu, meteor=None if method == "movement" else 46.1)
        nlg_record(results, "dart", method, bleu - 20)
        nlg_record(results, "webnlg", method, bleu - 10)
    table = report.nlg_table(results)
    assert list(table.index) == ["PST", "PST (paper)", "MaP", "MaP (paper)", "MvP", "MvP (paper)"]
    webnlg = [f"WebNLG {m} ({s})" for m in ("BLEU", "METEOR", "TER") for s in ("seen", "unseen", "all")]
    assert list(table.columns) == ["Sparsity (%)", "E2E BLEU", "E2E NIST", "E2E METEOR", "E2E ROUGE-L", "E2E CIDEr",
                                   "DART BLEU", "DART METEOR", "DART TER", *webnlg]
    assert table.loc["PST", "E2E BLEU"] == 68.0 and table.loc["PST", "E2E NIST"] == 8.12
    assert table.loc["PST", "WebNLG BLEU (seen)"] == 57.0 and table.loc["PST", "WebNLG TER (unseen)"] == 47.0
    assert table.loc["MvP", "E2E METEOR"] == DASH  # METEOR not measured (no Java): shown as missing
    assert "Java" in table.attrs["note"]
    assert (table.loc[["PST (paper)", "MaP (paper)", "MvP (paper)"]] == DASH).all().all()


# --------------------------------------------------------------------------- computed from the code


def test_criteria_table_matches_table_1() -> None:
    table = report.criteria_table()
    assert list(table.index) == ["MaP", "MvP", "PST"]
    assert table.loc["MaP", "Extra trainable params"] == 0
    assert table.loc["MaP", "Extra ÷ sparsified weights (×)"] == 0
    assert table.loc["MvP", "Extra ÷ sparsified weights (×)"] == 1.0
    assert table.loc["MvP", "Extra trainable params"] == 84_934_656
    assert table.loc["PST", "Extra trainable params"] == 2_820_096
    assert table.loc["PST", "Extra ÷ sparsified weights (×)"] == round(2_820_096 / 84_934_656, 4)
    assert table.loc["PST", "Trainable ÷ MvP trainable (%)"] == 1.45  # docs/method.md: about 1.45%
    assert list(table["Needs data"]) == ["no", "yes", "yes"]
    assert list(table["Paper: extra (×)"]) == ["0×", "1×", "0.01–0.02×"]


def test_parameter_counts_table() -> None:
    table = report.parameter_counts_table()
    assert len(table) == 3 * 5
    rows = table.set_index(["Model", "Method"])
    assert rows.loc[("BERT-base", "PST"), "Added"] == 2_820_096
    assert rows.loc[("BERT-base", "PST"), "Trainable"] == 2_820_096  # head excluded: only what PST adds
    # GPT-2 medium: 24 blocks; q, k, v (1024 x 1024 each), attention out, FFN 1024->4096 and back; 17 (n + k) each
    assert rows.loc[("GPT-2 medium", "PST"), "Added"] == 24 * 17 * (3 * 2048 + 2048 + 2 * 5120)
    assert rows.loc[("GPT-2 medium", "Dense fine-tuning"), "Total"] == 354_823_168
    for (model, method), row in rows.iterrows():
        assert 0 < row["Trainable"] <= row["Total"]
        assert row["Trainable (%)"] == round(100 * row["Trainable"] / row["Total"], 3)
        if method in ("MaP", "MvP", "Dense fine-tuning"):
            assert row["Trainable"] == row["Total"] and row["Trainable (%)"] == 100.0
    assert rows.loc[("RoBERTa-base", "PST"), "Added"] == rows.loc[("BERT-base", "PST"), "Added"]


# --------------------------------------------------------------------------- ablations


def _ablation_results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for task in ("sst2", "mrpc"):
        for i, (name, overrides) in enumerate(SCORE_VARIANTS.items()):
            glue_record(results, "ablation-score", task, "pst", 0.6 + 0.02 * i, pst=overrides)
        for r1, r2 in ((2, 8), (8, 2), (8, 8)):
            glue_record(results, "ablation-rank", task, "pst", 0.7 + 0.01 * r1 + 0.001 * r2,
                        pst={"weight_rank": r1, "score_rank": r2}, added=1000 * r1 + r2)
        for sparsity in (0.5, 0.8, 0.95):
            for j, method in enumerate(("pst", "magnitude", "movement")):
                glue_record(results, "ablation-sparsity", task, method, 0.9 - 0.3 * sparsity - 0.01 * j,
                            sparsity=sparsity)
    return results


def test_ablation_tables(tmp_path: Path) -> None:
    results = _ablation_results(tmp_path)
    score = report.score_ablation_table(results)
    assert list(score.index) == list(SCORE_VARIANTS)
    assert list(score.columns) == ["SST-2 (acc)", "MRPC (F1)", "Avg (main metrics)"]
    assert score.loc["|W'| + AB + R + C", "SST-2 (acc)"] == 68.0 and score.loc["|W'|", "MRPC (F1)"] == 61.0

    rank = report.rank_ablation_table(results)
    assert list(rank.index) == ["r1=2, r2=8", "r1=8, r2=2", "r1=8, r2=8"]
    assert list(rank.columns) == ["SST-2 (acc)", "MRPC (F1)", "Avg (main metrics)", "Added parameters"]
    assert rank.loc["r1=8, r2=2", "SST-2 (acc)"] == 78.2 and rank.loc["r1=2, r2=8", "Added parameters"] == 2008

    sparsity = report.sparsity_table(results)
    assert list(sparsity.index) == ["50%", "80%", "95%"]
    assert list(sparsity.columns) == [f"{t} {m}" for t in ("SST-2 (acc)", "MRPC (F1)") for m in ("PST", "MaP", "MvP")]
    assert sparsity.loc["80%", "SST-2 (acc) MaP"] == round(100 * (0.9 - 0.24 - 0.01), 1)


def test_a_single_task_ablation_shows_its_standard_error_not_an_average(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for variant, value in (("|W'|", 0.7), ("|W'| + AB + R + C", 0.8)):
        glue_record(results, "ablation-score", "sst2", "pst", value, pst=SCORE_VARIANTS[variant])
    table = report.score_ablation_table(results)
    assert list(table.columns) == ["SST-2 (acc)", "± SE"]
    assert table.loc["|W'|", "± SE"] == pytest.approx(100 * math.sqrt(0.7 * 0.3 / 128), abs=0.1)


def test_sparsity_figure_is_a_valid_image(tmp_path: Path) -> None:
    results = _ablation_results(tmp_path)
    figure = report.sparsity_figure(results, tmp_path / "figs" / "sweep")
    axes = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["SST-2 (acc)", "MRPC (F1)"]
    assert len(axes[0].containers) == 3 and axes[0].get_xlabel() == "target sparsity (%)"  # error bars, one per method
    assert axes[0].get_ylim() == (0.0, 100.0)  # the whole scale: one dev example is not magnified
    assert all(ax.get_legend() is None for ax in figure.axes) and len(figure.legends) == 1
    with Image.open(tmp_path / "figs" / "sweep.png") as image:
        image.verify()
    with Image.open(tmp_path / "figs" / "sweep.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert (tmp_path / "figs" / "sweep.pdf").read_bytes().startswith(b"%PDF")


# --------------------------------------------------------------------------- files


def test_save_table_writes_md_tex_csv(glue_results: Path, tmp_path: Path) -> None:
    table = report.glue_table(glue_results, "glue-bert")
    paths = report.save_table(table, tmp_path / "out" / "glue")
    assert [p.name for p in paths] == ["glue.md", "glue.tex", "glue.csv"]
    assert all(p.stat().st_size > 0 for p in paths)
    markdown = paths[0].read_text(encoding="utf-8")
    assert "| Dense fine-tuning (paper)" in markdown and DASH in markdown and "80.0" in markdown
    assert "reported by APT (ICML 2024, Table 7)" in markdown
    latex = paths[1].read_text(encoding="utf-8")
    assert "\\begin{tabular}" in latex and "Sparsity (\\%)" in latex
    back = pd.read_csv(paths[2], index_col=0)
    assert back.shape == table.shape and list(back.columns) == list(table.columns)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind

    criteria = report.save_table(report.criteria_table(), tmp_path / "out" / "criteria")
    assert "\\|W'\\|" in criteria[0].read_text(encoding="utf-8")  # pipes escaped inside Markdown cells
    assert "\\textbar{}W" in criteria[1].read_text(encoding="utf-8")


def test_paper_results_file_has_structure_and_no_invented_numbers() -> None:
    data = json.loads(report.PAPER_RESULTS_PATH.read_text(encoding="utf-8"))
    report.check_paper_results(data)
    assert data["note"]
    for experiment in ("glue-bert", "glue-roberta", "nlg-gpt2"):
        methods = data["experiments"][experiment]["methods"]
        assert {"pst", "magnitude", "movement"} <= set(methods)
        columns = report.GLUE_COLUMNS if experiment.startswith("glue") else report.NLG_COLUMNS
        for method, entry in methods.items():
            assert entry["source"]
            for column in columns:  # every cell a table can show has its place in the file
                assert column.paper_key in entry["values"][column.task], (experiment, method, column.label)
            assert all(v is None for metrics in entry["values"].values() for v in metrics.values())
    with pytest.raises(ValueError, match="number or null"):
        report.check_paper_results({"note": "n", "experiments": {"e": {"methods": {"pst": {
            "source": "s", "values": {"rte": {"accuracy": "71"}}}}}}})


# --------------------------------------------------------------------------- everything


def test_build_report_with_some_experiments(glue_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = report.build_report(glue_results, out)
    assert set(written) == {"tables/criteria", "tables/parameter_counts", "tables/record_status",
                            "tables/published_glue_bert", "tables/glue_bert", "tables/glue_bert_selection",
                            "tables/glue_bert_noise", "figures/curves_glue_bert"}
    for paths in written.values():
        assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert not (out / "tables" / "glue_roberta.md").exists()


def test_build_report_with_every_experiment(tmp_path: Path) -> None:
    results = _ablation_results(tmp_path)
    glue_record(results, "glue-bert", "rte", "pst", 0.7)
    glue_record(results, "glue-roberta", "rte", "pst", 0.7)
    glue_record(results, "analysis", "sst2", "movement", 0.7)  # no score file: its structure outputs are skipped
    nlg_record(results, "e2e", "pst", 60.0)
    glue_record(results, "someone-elses-experiment", "rte", "pst", 0.7)
    out = tmp_path / "out"
    written = report.build_report(results, out)
    expected = {"criteria", "parameter_counts", "record_status", "published_glue_bert", "glue_bert", "glue_bert_selection",
                "glue_bert_noise", "glue_roberta", "glue_roberta_selection", "glue_roberta_noise", "nlg_gpt2", "nlg_gpt2_selection", "analysis_runs", "ablation_score",
                "ablation_rank", "ablation_sparsity"}
    figures = {"ablation_sparsity", "curves_glue_bert", "curves_glue_roberta"}  # NLG: a record without training log
    assert set(written) == {f"tables/{name}" for name in expected} | {f"figures/{name}" for name in figures}
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{f}.{e}" for f in figures for e in ("pdf", "png"))
    with Image.open(out / "figures" / "ablation_sparsity.png") as image:
        image.verify()
    assert len(list((out / "tables").glob("*.md"))) == len(expected)


def test_build_report_includes_the_score_structure_of_analysis_runs(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    results = tmp_path / "results"
    movement = glue_record(results, "analysis", "sst2", "movement", 0.7)
    glue_record(results, "analysis", "sst2", "pst", 0.72)
    generator = torch.Generator().manual_seed(0)
    layers = [f"bert.encoder.layer.{i}.{part}" for i in range(2) for part in ("intermediate.dense", "output.dense")]
    tensors = {f"{name}.scores": torch.randn(32, 16, generator=generator) for name in layers}
    path = record_path(results, movement["run_id"])
    save_file(tensors, str(path.with_name(path.name.removesuffix(".json") + ".scores.safetensors")))
    written = report.build_report(results, tmp_path / "out")
    assert {"tables/analysis_runs", "tables/score_structure_sst2", "figures/score_spectra_sst2",
            "figures/score_explained_share_sst2", "figures/score_heatmaps_sst2"} <= set(written)
    structure = pd.read_csv(written["tables/score_structure_sst2"][2])
    assert len(structure) == len(layers) and structure["both"].between(0, 1).all()
    runs = report.glue_table(results, "analysis", paper=False)
    assert list(runs.index) == ["PST", "MvP"]


def test_the_report_reads_what_experiments_refer_to_and_says_what_it_leaves_out(tmp_path: Path, caplog) -> None:
    """A shared record counts in every experiment that refers to it; a missing, unreadable or
    other-code record is left out of the tables, logged and counted, never dropped silently."""
    results = tmp_path / "results"
    shared = glue_record(results, "glue-bert", "rte", "pst", 0.7)
    add_member(results, "ablation-score", shared["run_id"])
    magnitude = glue_record(results, "glue-bert", "rte", "magnitude", 0.6)
    stale = glue_record(results, "glue-bert", "rte", "movement", 0.65)
    write_record(record_path(results, stale["run_id"]), {**stale, "code_fingerprint": "0ld"})
    broken = glue_record(results, "glue-bert", "rte", "dense", 0.9)
    record_path(results, broken["run_id"]).write_text('{"run_id": "trunc')  # a disk filled up mid-write
    add_member(results, "glue-bert", "rte-pst-never-ran")

    records = report.read_results(results)
    assert {r["run_id"]: r["experiments"] for r in records} == {
        shared["run_id"]: ["ablation-score", "glue-bert"], magnitude["run_id"]: ["glue-bert"]}
    assert "1 of 5 runs left out of its tables (no record yet)" in caplog.text
    assert "(unreadable record" in caplog.text and "(made by other code" in caplog.text

    status = report.record_status_table(results)
    assert status.loc["glue-bert"].to_dict() == {"Runs": 5, "Done": 2, "No record yet": 1, "Unreadable": 1,
                                                 "Made by other code": 1, "In tables": 2}
    assert status.loc["ablation-score", "Done"] == 1
    assert list(report.glue_table(results, "glue-bert", paper=False).index) == ["PST", "MaP"]
    kept = report.glue_table(report.read_results(results, keep_stale=True), "glue-bert", paper=False)
    assert list(kept.index) == ["PST", "MaP", "MvP"]
    assert report.record_status_table(results, keep_stale=True).loc["glue-bert", "In tables"] == 3


def test_standard_errors_come_from_the_dev_set_and_decide_what_may_be_ranked(tmp_path: Path) -> None:
    results = tmp_path / "results"
    pst = glue_record(results, "glue-bert", "sst2", "pst", 0.80)
    close = glue_record(results, "glue-bert", "sst2", "magnitude", 0.78)
    far = glue_record(results, "glue-bert", "sst2", "movement", 0.50)
    n = report.dev_size(pst)
    assert n > 0
    p = (0.8 * n + 1) / (n + 2)  # Laplace's rule: 100% right is not certain
    assert report.standard_error(pst) == pytest.approx(100 * math.sqrt(p * (1 - p) / n))
    assert not report.separated(pst, close) and report.separated(pst, far)
    stsb = glue_record(results, "glue-bert", "stsb", "pst", 0.5)
    assert report.standard_error(stsb) == pytest.approx(100 * 0.75 / math.sqrt(report.dev_size(stsb) - 3))
    table = report.noise_table(results, "glue-bert")
    assert table.loc["SST-2", "Best, and the methods it is separated from"] == "PST; MvP"
    assert table.loc["SST-2", "PST"] == f"80.0 ± {report.standard_error(pst):.1f}"


def test_the_reading_ranks_only_what_the_noise_separates_and_names_plateaus(tmp_path: Path) -> None:
    results = tmp_path / "results"
    glue_record(results, "glue-bert", "sst2", "pst", 0.80)
    glue_record(results, "glue-bert", "sst2", "magnitude", 0.79)
    glue_record(results, "glue-bert", "rte", "pst", 0.95)
    held = glue_record(results, "glue-bert", "rte", "magnitude", 0.50)
    held["evaluations"] = [{**held["evaluations"][0], "step": step} for step in (10, 20, 30)]
    write_record(record_path(results, held["run_id"]), held)
    reading = report.glue_reading(results, "glue-bert")
    sst2, rte = reading.splitlines()
    assert sst2.startswith("- **SST-2** (synthetic, 128 dev examples; majority class")
    assert "cannot be ranked" in sst2 and "PST 80.0 ±" in sst2
    assert "PST is ahead of every other method by more than two standard errors" in rte
    assert "At the majority class (within two standard errors): MaP" in rte
    assert "Plateau: the kept value of MaP (50.0%" in rte and "is held at 3 of its evaluations" in rte


def test_the_ablation_reading_says_when_its_spread_is_noise(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for variant, value in (("|W'|", 0.78), ("|W'| + AB + R + C", 0.80)):
        glue_record(results, "ablation-score", "sst2", "pst", value, pst=SCORE_VARIANTS[variant])
    reading = report.ablation_reading(report.score_ablation_table(results))
    assert reading.startswith("SST-2 (acc): from 78.0 (|W'|) to 80.0 (|W'| + AB + R + C), a spread of 2.0 points")
    assert "no row of this table can be ranked" in reading
    glue_record(results, "ablation-score", "sst2", "pst", 0.40, pst=SCORE_VARIANTS["|W'| + AB"])
    assert "differ by more than the dev sample alone explains" in report.ablation_reading(report.score_ablation_table(results))


def test_a_table_without_an_average_says_why_in_its_note(tmp_path: Path) -> None:
    results = tmp_path / "results"
    glue_record(results, "glue-roberta", "sst2", "pst", 0.9)
    glue_record(results, "glue-roberta", "stsb", "pst", 0.3, source="bundled")
    note = report.glue_table(results, "glue-roberta").attrs["note"]
    assert "No average: the tasks mix synthetic and real data" in note and "Avg (main metrics)" not in note
