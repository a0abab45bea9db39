"""reproduce.py: the CLI, failure reporting, and the whole smoke reproduction with its artifacts."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import reproduce  # noqa: E402


def run_cli(*args, timeout=1800):
    return subprocess.run([sys.executable, str(ROOT / "reproduce.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_list_names_every_notebook():
    result = run_cli("--list")
    assert result.returncode == 0
    assert result.stdout.split() == list(reproduce.NOTEBOOKS)
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(reproduce.NOTEBOOKS)


def test_every_notebook_has_one_parameters_cell_with_the_common_parameters():
    for name in reproduce.NOTEBOOKS:
        notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        for parameter in ("profile", "out_dir", "shard", "force"):
            assert f"{parameter} =" in tagged[0].source, (name, parameter)
        assert 'profile = "smoke"' in tagged[0].source


def test_dry_run_prints_the_plan(tmp_path):
    result = run_cli("--all", "--dry-run", "--profile", "paper", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "03_glue_bert" in result.stdout and "GPU-hours" in result.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("args", "message"), [(["--only", "no_such_notebook"], "unknown notebook"),
                                               (["--all", "--shard", "4/4"], "shard"),
                                               (["--all", "-p", "novalue"], "key=value")])
def test_bad_arguments_are_rejected(args, message):
    result = run_cli(*args)
    assert result.returncode == 2 and message in result.stderr


def test_parameters_are_parsed_as_literals():
    assert reproduce.parse_parameter("tasks=['rte']") == ("tasks", ["rte"])
    assert reproduce.parse_parameter("model=bert-base-uncased") == ("model", "bert-base-uncased")


def _notebook(path, code):
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('profile = "smoke"\nout_dir = "."\nshard = None\nforce = False')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(code)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


def test_a_failing_notebook_is_reported_and_the_others_still_run(tmp_path, monkeypatch, caplog):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "a_fails.ipynb", "raise ValueError('broken on purpose')")
    _notebook(notebooks / "b_works.ipynb", "from pathlib import Path\nPath(out_dir, 'b.txt').write_text('ok')")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", notebooks)
    monkeypatch.setattr(reproduce, "NOTEBOOKS", ("a_fails", "b_works"))
    status = reproduce.main(["--all", "--out", str(tmp_path / "out")])
    assert status == 1
    # Cell [3] of the executed notebook: papermill inserts the injected-parameters cell.
    assert "a_fails: failed in cell [3]: ValueError: broken on purpose" in caplog.text
    assert (tmp_path / "out" / "b.txt").read_text() == "ok"
    state = json.loads((tmp_path / "out" / "executed" / "state.json").read_text())
    assert state["a_fails"]["ok"] is False and state["b_works"]["ok"] is True


# -- the whole smoke reproduction ----------------------------------------------------------------

EXPECTED_TABLES = {
    "glue_bert": ["PST", "PST (paper)", "MaP", "MvP", "Dense fine-tuning"],
    "glue_roberta": ["PST", "MaP", "MvP", "Dense fine-tuning"],
    "nlg_gpt2": ["PST", "MaP", "MvP"],
    "ablation_score": None, "ablation_rank": None, "ablation_sparsity": None,
    "criteria": ["MaP", "MvP", "PST"], "parameter_counts": None, "score_structure_sst2": None,
}
EXPECTED_FIGURES = ["ablation_sparsity", "score_spectra_sst2", "score_explained_share_sst2", "score_heatmaps_sst2"]


@pytest.fixture(scope="module")
def smoke_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    result = run_cli("--all", "--profile", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_TABLES))
def test_smoke_tables(smoke_output, name):
    import pandas as pd

    out, _ = smoke_output
    for suffix in (".md", ".tex", ".csv"):
        assert (out / "tables" / f"{name}{suffix}").stat().st_size > 0, f"{name}{suffix}"
    table = pd.read_csv(out / "tables" / f"{name}.csv")
    assert len(table) > 0
    first = table.columns[0]
    if EXPECTED_TABLES[name]:
        assert set(EXPECTED_TABLES[name]) <= set(table[first].astype(str))
    ours = table[~table[first].astype(str).str.contains("paper")]
    numbers = pd.to_numeric(ours.drop(columns=[first]).stack(), errors="coerce").dropna()
    assert len(numbers) > 0 and numbers.map(float).map(lambda v: v == v and abs(v) != float("inf")).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED_FIGURES)
def test_smoke_figures(smoke_output, name):
    out, _ = smoke_output
    with Image.open(out / "figures" / f"{name}.png") as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100
    assert (out / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_smoke_executed_notebooks_are_kept(smoke_output):
    out, _ = smoke_output
    for name in reproduce.NOTEBOOKS:
        executed = nbformat.read(out / "executed" / f"{name}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells), name


@pytest.mark.slow
def test_second_run_skips_finished_work(smoke_output):
    out, _ = smoke_output
    records = {p: p.stat().st_mtime for p in (out / "results").rglob("*.json")}
    assert len(records) >= 40
    result = run_cli("--all", "--profile", "smoke", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("finished earlier with the same parameters, skipped") == len(reproduce.NOTEBOOKS) - 1
    assert {p: p.stat().st_mtime for p in (out / "results").rglob("*.json")} == records
