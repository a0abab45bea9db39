"""reproduce.py: the CLI, a plan that says what will happen (and then happens), refused
parameters, unreadable and stale records, failure reporting, and the whole smoke reproduction."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from pst.repro import profiles
from pst.repro.experiments import memberships
from pst.repro.fingerprint import code_fingerprint
from pst.repro.results import record_path, write_record
from pst.repro.runstate import run_paths, run_state

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import reproduce  # noqa: E402


def run_cli(*args, timeout=1800):
    return subprocess.run([sys.executable, str(ROOT / "reproduce.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture
def cli(capsys):
    """reproduce.py's main in this process (the fast way): returns exit status, stdout, stderr."""
    def run(*args):
        try:
            status = reproduce.main(list(args))
        except SystemExit as exit_:  # argparse's refusals
            status = exit_.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, captured.out, captured.err)

    return run


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
        declared = reproduce.notebook_parameters(name)
        assert {"profile", "out_dir", "shard", "force"} <= set(declared), name
        assert declared["profile"] == '"smoke"'
        uses_records = name in profiles.NOTEBOOK_PLANS or name == "09_report"
        assert ("stale_records" in declared) == uses_records and set(declared) >= set(profiles.plan_parameters(name))


def plan_line(output: str, notebook: str) -> tuple[int, int, int]:
    """(runs, done, to do) of one notebook in a printed plan."""
    match = re.search(rf"{notebook}\s+(\d+) runs,\s+(\d+) done,\s+(\d+) to do", output)
    assert match, output
    return tuple(int(group) for group in match.groups())


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    result = run_cli("--all", "--dry-run", "--profile", "paper", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert plan_line(result.stdout, "04_glue_bert") == (216, 4, 212)  # 4 trained by the analysis notebook before
    assert plan_line(result.stdout, "07_ablations") == (100, 12, 88)  # 12 shared with glue-bert
    assert "distinct runs: 529 (24 asked for by more than one experiment); to train: 529" in result.stdout
    assert "GPU-hours" in result.stdout and code_fingerprint() in result.stdout
    assert not list(tmp_path.iterdir())


def test_dry_run_applies_the_parameters(tmp_path, cli):
    """-p reaches the same profile function the notebook calls: RTE only is 3 x 4 x 2 + 3 dense runs."""
    result = cli("--only", "04_glue_bert", "--profile", "paper", "-p", "tasks=['rte']", "--dry-run",
                     "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert plan_line(result.stdout, "04_glue_bert") == (27, 0, 27)
    listed = cli("--only", "04_glue_bert", "--profile", "paper", "-p", "tasks=['rte']", "-p",
                     "methods=['pst']", "--dry-run", "-v", "--out", str(tmp_path))
    expected = [c.run_id for c in profiles.plan("04_glue_bert", "paper", tasks=["rte"], methods=["pst"])["glue-bert"].runs]
    assert re.findall(r"redo\s+glue-bert\s+(\S+)", listed.stdout) == expected


@pytest.mark.parametrize(("args", "message"), [
    (["--only", "no_such_notebook"], "unknown notebook"),
    (["--all", "--shard", "4/4"], "shard"),
    (["--all", "-p", "novalue"], "key=value"),
    (["--only", "01_quickstart", "-p", "stepz=3"],
     "unknown parameter 'stepz': no selected notebook takes it. Their parameters: 01_quickstart: model, steps, sparsity"),
    (["--only", "04_glue_bert", "-p", "profile=paper"], "parameter 'profile' is set with --profile"),
    (["--only", "04_glue_bert", "-p", "tasks=['squad']", "--dry-run"], "unknown GLUE task 'squad'"),
    (["--only", "04_glue_bert", "-p", "methods=5"], "error: 04_glue_bert: 'int' object is not iterable"),
    (["--all", "--rerun-stale", "--keep-stale-records"], "not allowed with"),
    (["--all", "--jobs", "0"], "--jobs must be at least 1"),
])
def test_bad_arguments_are_refused_before_anything_runs(args, message, tmp_path, cli):
    result = cli(*args, "--out", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


def test_a_parameter_goes_to_the_notebooks_that_take_it():
    args = reproduce.parse_args(["--only", "04_glue_bert", "06_nlg_gpt2", "-p", "methods=['pst']", "-p",
                                 "datasets=['e2e']"])
    common = reproduce.common_parameters(args, started=0.0)
    assert reproduce.parameters_for("04_glue_bert", args, common)["methods"] == ["pst"]
    assert "datasets" not in reproduce.parameters_for("04_glue_bert", args, common)
    assert reproduce.parameters_for("06_nlg_gpt2", args, common)["datasets"] == ["e2e"]
    forced = reproduce.parse_args(["--only", "04_glue_bert", "--force", "--rerun-stale"])
    assert reproduce.common_parameters(forced, started=123.0) | {"out_dir": "."} == {
        "profile": "smoke", "out_dir": ".", "shard": None, "force": 123.0, "stale_records": "rerun"}


# -- records that are unreadable or made by other code -------------------------------------------

def _planned_sst2_pst():
    return profiles.plan("04_glue_bert", "smoke", tasks=["sst2"], methods=["pst"])["glue-bert"].runs[0]


def _write_fake_record(out: Path, config, **fields) -> Path:
    path = record_path(out / "results", config.run_id)
    write_record(path, {"run_id": config.run_id, "config": {}, "code_fingerprint": code_fingerprint(),
                        "finished_at": 1.0, "selected": {"value": 0.5}, **fields})
    return path


def test_an_unreadable_record_is_planned_as_to_do_and_left_in_place_by_the_dry_run(tmp_path, cli):
    path = record_path(tmp_path / "results", _planned_sst2_pst().run_id)
    path.parent.mkdir(parents=True)
    path.write_text('{"run_id": ')
    result = cli("--only", "04_glue_bert", "-p", "tasks=['sst2']", "-p", "methods=['pst']", "--dry-run",
                     "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert plan_line(result.stdout, "04_glue_bert") == (1, 0, 1)
    assert "1 unreadable: moved aside and redone" in result.stdout and path.read_text() == '{"run_id": '


STALE_ARGS = ("--only", "04_glue_bert", "09_report", "-p", "tasks=['sst2']", "-p", "methods=['pst']")


def test_records_of_other_code_stop_everything_and_name_the_two_ways_on(tmp_path, cli):
    _write_fake_record(tmp_path, _planned_sst2_pst(), code_fingerprint="0123456789abcdef")
    for extra in (["--dry-run"], []):
        result = cli(*STALE_ARGS, *extra, "--out", str(tmp_path))
        assert result.returncode == reproduce.EXIT_STALE, result.stderr
        assert "1 made by other code: refused" in result.stdout
        assert "1 planned record(s) were made by other code (04_glue_bert: 1)" in result.stderr
        assert "0123456789abcdef" in result.stderr and "Nothing was run" in result.stderr
        assert "--rerun-stale" in result.stderr and "--keep-stale-records" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no notebook ran: no executed/, no tables/
    assert memberships(tmp_path / "results") == {}


def test_records_of_other_code_are_kept_or_rerun_when_asked(tmp_path, cli):
    config = _planned_sst2_pst()
    _write_fake_record(tmp_path, config, code_fingerprint="0123456789abcdef")
    kept = cli(*STALE_ARGS, "--dry-run", "--keep-stale-records", "--out", str(tmp_path))
    assert kept.returncode == 0 and plan_line(kept.stdout, "04_glue_bert") == (1, 1, 0)
    assert "1 kept although made by other code" in kept.stdout
    rerun = cli(*STALE_ARGS, "--dry-run", "--rerun-stale", "--out", str(tmp_path))
    assert rerun.returncode == 0 and plan_line(rerun.stdout, "04_glue_bert") == (1, 0, 1)
    assert "1 made by other code" in rerun.stdout
    forced = cli(*STALE_ARGS[:-4], "-p", "tasks=['sst2']", "--dry-run", "--force", "--out", str(tmp_path))
    assert forced.returncode == 0 and plan_line(forced.stdout, "04_glue_bert")[2] == 4  # every run redone


def test_a_notebook_with_a_run_to_redo_is_not_skipped(tmp_path, monkeypatch):
    """The notebook-level skip needs an earlier success with the same notebook, parameters, code,
    and nothing left to train: a record lost since then (moved aside, deleted) brings it back."""
    executed = []
    monkeypatch.setattr(reproduce, "execute", lambda name, *rest: executed.append(name))
    args = ["--only", "04_glue_bert", "-p", "tasks=['sst2']", "-p", "methods=['pst']", "--out", str(tmp_path)]
    config = _planned_sst2_pst()
    path = _write_fake_record(tmp_path, config)
    assert reproduce.main(args) == 0 and executed == ["04_glue_bert"]  # first time: no earlier success
    assert reproduce.main(args) == 0 and executed == ["04_glue_bert"]  # done, same everything: skipped
    path.unlink()
    assert reproduce.main(args) == 0 and executed == ["04_glue_bert"] * 2


def test_parameters_are_parsed_as_literals():
    assert reproduce.parse_parameter("tasks=['rte']") == ("tasks", ["rte"])
    assert reproduce.parse_parameter("model=bert-base-uncased") == ("model", "bert-base-uncased")


def test_notebooks_sharing_a_run_form_one_group_in_order_and_the_report_comes_last():
    from types import SimpleNamespace

    runs = {"a": {"r1"}, "b": {"r2"}, "c": {"r3"}, "d": {"r1", "r3"}, "e": set(), "09_report": set()}
    planned = [SimpleNamespace(notebook=name, run_id=run) for name, ids in runs.items() for run in ids]
    assert reproduce.notebook_groups(list(runs), planned) == [["a", "c", "d"], ["b"], ["e"], ["09_report"]]


def test_the_smoke_plan_runs_the_bert_notebooks_in_one_group(tmp_path):
    """04 trains the runs that 03 analyses and 07 ablates; the rest can run beside them."""
    from pst.repro.planning import assess

    plans = {name: profiles.plan(name, "smoke") for name in reproduce.NOTEBOOKS}
    planned = assess(plans, tmp_path, None, False, "refuse")
    groups = reproduce.notebook_groups(list(reproduce.NOTEBOOKS), planned)
    assert ["03_importance_scores", "04_glue_bert", "07_ablations"] in groups
    assert groups[-1] == ["09_report"] and sorted(sum(groups, [])) == sorted(reproduce.NOTEBOOKS)


def test_smoke_kernels_train_with_one_thread_whatever_the_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert reproduce.kernel_threads("smoke", 1) == reproduce.kernel_threads("smoke", 2) == {"OMP_NUM_THREADS": "1"}
    assert reproduce.kernel_threads("paper", 1) == {}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    assert reproduce.kernel_threads("smoke", 2) == {}


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
    "glue_bert": ["PST", "PST at 90%, reported by APT (ICML 2024, Table 7)", "MaP", "MvP", "Dense fine-tuning"],
    "glue_bert_noise": ["MNLI", "QNLI", "SST-2", "STS-B"],
    "published_glue_bert": ["MaP at 90%", "MvP at 50%", "PST at 90%"],
    "glue_roberta": ["PST", "MaP", "MvP", "Dense fine-tuning"],
    "nlg_gpt2": ["PST", "MaP", "MvP"],
    "ablation_score": None, "ablation_rank": None, "ablation_sparsity": None,
    "criteria": ["MaP", "MvP", "PST"], "parameter_counts": None, "score_structure_sst2": None,
    "pst_score_terms_sst2": None,
    "record_status": ["glue-bert", "ablation-score", "analysis"],
}
EXPECTED_FIGURES = ["ablation_sparsity", "score_spectra_sst2", "score_explained_share_sst2", "score_heatmaps_sst2",
                    "pst_score_terms_sst2", "curves_glue_bert", "curves_glue_roberta", "curves_nlg_gpt2"]


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
def test_smoke_runs_shared_by_experiments_trained_once(smoke_output):
    out, result = smoke_output
    members = memberships(out / "results")
    shared = set(members["glue-bert"]) & set(members["ablation-score"]) & set(members["ablation-rank"])
    assert len(shared) == 1 and set(members["analysis"]) <= set(members["glue-bert"])
    records = sorted((out / "results" / "runs").glob("*.json"))
    assert len(records) == len({run for runs in members.values() for run in runs}) == 45
    assert "to train: 45" in result.stdout


@pytest.mark.slow
def test_second_run_skips_finished_work(smoke_output):
    out, _ = smoke_output
    records = {p: p.stat().st_mtime_ns for p in (out / "results" / "runs").glob("*.json")}
    assert len(records) >= 40
    result = run_cli("--all", "--profile", "smoke", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "to train: 0" in result.stdout
    assert result.stderr.count("nothing to train: skipped") == len(reproduce.NOTEBOOKS) - 1
    assert {p: p.stat().st_mtime_ns for p in (out / "results" / "runs").glob("*.json")} == records


@pytest.mark.slow
def test_the_dry_run_plan_is_what_the_real_run_executes(tmp_path):
    """With -p: the runs the dry run lists are exactly those the notebook then trains and notes."""
    args = ("--only", "04_glue_bert", "-p", "tasks=['rte']", "-p", "methods=['magnitude', 'dense']",
            "--out", str(tmp_path))
    dry = run_cli(*args, "--dry-run", "-v")
    assert dry.returncode == 0, dry.stderr
    planned = re.findall(r"redo\s+glue-bert\s+(\S+)", dry.stdout)
    assert len(planned) == 2 and not list(tmp_path.iterdir())
    real = run_cli(*args, timeout=900)
    assert real.returncode == 0, real.stdout[-3000:] + real.stderr[-3000:]
    assert memberships(tmp_path / "results") == {"glue-bert": sorted(planned)}
    for config in profiles.plan("04_glue_bert", "smoke", tasks=["rte"], methods=["magnitude", "dense"])["glue-bert"].runs:
        assert run_state(run_paths(config, tmp_path / "results", tmp_path / "work")).status == "done"
    again = run_cli(*args, "--dry-run")
    assert plan_line(again.stdout, "04_glue_bert") == (2, 2, 0)
