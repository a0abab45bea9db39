"""Plans and run identity: each notebook's plan takes the notebook's parameters, runs are keyed
by configuration (a run several experiments share trains once), and the fate of each planned
run is decided the way the runners decide it."""
import ast
from pathlib import Path

import nbformat
import pytest

from pst.repro import profiles
from pst.repro.experiments import Experiment, memberships
from pst.repro.fingerprint import code_fingerprint, fingerprinted_files
from pst.repro.planning import assess
from pst.repro.report.records import KNOWN_EXPERIMENTS
from pst.repro.results import record_path, write_record
from pst.repro.runners import experiment as experiment_runner
from pst.repro.runners.lifecycle import reusable_record
from pst.repro.runstate import SCORES_SUFFIX, StaleRecordsError, run_paths
from pst.repro.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def _notebook_code(name: str) -> tuple[set[str], list[ast.Call]]:
    """The parameter names of a notebook and its calls of ``profiles.plan``."""
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    declared = {target.id for node in ast.parse(parameters.source).body if isinstance(node, ast.Assign)
                for target in node.targets}
    calls = [node for source in code for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "plan"]
    return declared, calls


@pytest.mark.parametrize("name", sorted(profiles.NOTEBOOK_PLANS))
def test_each_notebook_calls_its_plan_with_exactly_the_parameters_the_plan_takes(name):
    """So reproduce.py --dry-run (the notebook's defaults and -p, through the same function) cannot drift."""
    declared, calls = _notebook_code(name)
    (call,) = calls
    assert ast.literal_eval(call.args[0]) == name and call.args[1].id == "profile"
    keywords = {k.arg: k.value.id for k in call.keywords}
    assert keywords == {key: key for key in profiles.plan_parameters(name)}  # passed through unchanged
    assert set(profiles.plan_parameters(name)) <= declared


def test_notebooks_that_train_nothing_have_no_plan():
    assert profiles.plan("01_quickstart", "smoke") == {} and profiles.plan_parameters("09_report") == ()
    assert _notebook_code("01_quickstart")[1] == [] and _notebook_code("09_report")[1] == []


def test_a_plan_refuses_parameters_it_does_not_take():
    with pytest.raises(ValueError, match=r"takes no parameter\(s\) \['stepz'\]; it takes \['tasks', 'methods'\]"):
        profiles.plan("04_glue_bert", "smoke", stepz=3)
    with pytest.raises(ValueError, match="unknown profile"):
        profiles.plan("04_glue_bert", "huge")


def test_every_planned_experiment_has_a_place_in_the_report():
    names = {name for notebook in profiles.NOTEBOOK_PLANS for name in profiles.plan(notebook, "paper")}
    assert names == set(KNOWN_EXPERIMENTS)


@pytest.mark.parametrize(("profile", "planned", "distinct"), [("smoke", 52, 45), ("paper", 553, 529)])
def test_runs_shared_by_experiments_are_one_run(profile, planned, distinct):
    plans = [profiles.plan(name, profile) for name in profiles.NOTEBOOK_PLANS]
    runs = [config.run_id for plan in plans for experiment in plan.values() for config in experiment.runs]
    assert (len(runs), len(set(runs))) == (planned, distinct)
    glue_bert = {c.run_id for c in profiles.plan("04_glue_bert", profile)["glue-bert"].runs}
    ablations = profiles.plan("07_ablations", profile)
    full_score = {c.run_id for c in ablations["ablation-score"].runs if not c.pst}
    ranks_8_8 = {c.run_id for c in ablations["ablation-rank"].runs if not c.pst}
    assert full_score and full_score == ranks_8_8 and full_score <= glue_bert
    at_90 = {c.run_id for c in ablations["ablation-sparsity"].runs if c.sparsity == 0.9}
    assert {c.sparsity for c in ablations["ablation-sparsity"].runs} >= {0.5, 0.9}  # APT's two points
    assert at_90 and (profile == "paper" or at_90 <= glue_bert)
    analysis = profiles.plan("03_importance_scores", profile)["analysis"]
    assert analysis.save_scores and {c.run_id for c in analysis.runs} <= glue_bert


def test_the_code_fingerprint_covers_the_code_that_trains_and_nothing_else():
    files = {path.as_posix() for path in fingerprinted_files()}
    assert {"layers.py", "schedule.py", "repro/configs.py", "repro/glue_tasks.py", "repro/data/glue.py",
            "repro/metrics/glue.py", "repro/runners/glue.py", "repro/models.py"} <= files
    assert not {f for f in files if f.startswith(("repro/report/", "repro/profiles", "repro/planning"))}
    assert len(code_fingerprint()) == 16


# -- the fate of planned runs -------------------------------------------------------------------

def _record(results: Path, config, **fields) -> Path:
    path = record_path(results, config.run_id)
    write_record(path, {"run_id": config.run_id, "config": {}, "code_fingerprint": code_fingerprint(),
                        "finished_at": 100.0, "selected": {"value": 0.5}, **fields})
    return path


@pytest.fixture
def plans():
    names = ("03_importance_scores", "04_glue_bert", "07_ablations")
    return {name: profiles.plan(name, "smoke") for name in names}


def test_a_shared_run_is_planned_to_train_once(plans, tmp_path):
    planned = assess(plans, tmp_path)
    trained = [p.run_id for p in planned if p.action == "redo"]
    assert len(trained) == len(set(trained)) == len({p.run_id for p in planned})
    later = [p for p in planned if p.status == "earlier"]
    assert later and all(p.action == "reuse" for p in later)
    assert {p.notebook for p in later} == {"04_glue_bert", "07_ablations"}


def test_record_states_decide_the_plan_as_they_decide_the_runners(plans, tmp_path):
    glue_bert = plans["04_glue_bert"]["glue-bert"].runs
    done, broken, stale = glue_bert[3], glue_bert[4], glue_bert[5]
    analysis = plans["03_importance_scores"]["analysis"].runs[0]
    _record(tmp_path, done)
    record_path(tmp_path, broken.run_id).write_text("{")
    _record(tmp_path, stale, code_fingerprint="0ld")
    _record(tmp_path, analysis)  # done, but the analysis needs its score file

    def fate(policy="refuse", force=False):
        return {p.run_id: (p.status, p.action) for p in assess(plans, tmp_path, None, force, policy)
                if p.status != "earlier"}

    states = fate()
    assert states[done.run_id] == ("done", "reuse") and states[broken.run_id] == ("unreadable", "redo")
    assert states[stale.run_id] == ("other-code", "refuse") and states[analysis.run_id] == ("incomplete", "redo")
    assert fate("keep")[stale.run_id] == ("other-code", "reuse")
    assert fate("rerun")[stale.run_id] == ("other-code", "redo")
    assert fate(force=50.0)[done.run_id] == ("done", "reuse")  # finished after the given time
    assert fate(force=150.0)[done.run_id] == ("done", "redo")
    assert record_path(tmp_path, broken.run_id).read_text() == "{"  # assessing touches nothing


def test_a_shard_plans_only_its_runs_and_the_shards_cover_the_plan(plans, tmp_path):
    everything = {p.run_id for p in assess(plans, tmp_path)}
    shards = [{p.run_id for p in assess(plans, tmp_path, f"{i}/3")} for i in range(3)]
    assert set().union(*shards) == everything and sum(map(len, shards)) == len(everything)


# -- running experiments ----------------------------------------------------------------------

@pytest.fixture
def fake_training(monkeypatch):
    """Runners that decide like the real ones (reusable_record) but 'train' by writing a record."""
    trained = []

    def run(config, workspace, experiment, force, stale_records):
        paths = run_paths(config, workspace.results, workspace.work)
        record = reusable_record(paths, force, stale_records, experiment.needs)
        if record is None:
            trained.append(config.run_id)
            _record(workspace.results, config, finished_at=200.0)
            if experiment.save_scores:
                paths.side_file(SCORES_SUFFIX).write_bytes(b"scores")
        return record

    monkeypatch.setitem(experiment_runner.RUNNERS, "glue", run)
    return trained


def test_a_run_shared_by_experiments_trains_once_and_belongs_to_each(fake_training, tmp_path):
    workspace = Workspace.at(tmp_path)
    plan = profiles.plan("07_ablations", "smoke")
    glue_bert = profiles.plan("04_glue_bert", "smoke", tasks=["stsb"], methods=["pst"])["glue-bert"]
    for experiment in (glue_bert, *plan.values()):
        experiment_runner.run_experiment(experiment, workspace)
    shared = glue_bert.runs[0].run_id
    assert fake_training.count(shared) == 1 and len(fake_training) == len(set(fake_training))
    members = memberships(workspace.results)
    assert [name for name, runs in members.items() if shared in runs] == [
        "ablation-rank", "ablation-score", "ablation-sparsity", "glue-bert"]


def test_force_in_a_session_redoes_a_shared_run_once(fake_training, tmp_path, monkeypatch):
    workspace = Workspace.at(tmp_path)
    plan = profiles.plan("07_ablations", "smoke")
    for experiment in plan.values():
        for config in experiment.runs:
            _record(workspace.results, config, finished_at=1.0)  # finished before this session
    monkeypatch.setattr(experiment_runner, "SESSION_START", 100.0)
    for experiment in plan.values():
        experiment_runner.run_experiment(experiment, workspace, force=True)
    assert sorted(fake_training) == sorted({c.run_id for e in plan.values() for c in e.runs})


def test_records_of_other_code_stop_the_experiment_before_anything_trains(fake_training, tmp_path):
    workspace = Workspace.at(tmp_path)
    experiment = profiles.plan("04_glue_bert", "smoke", tasks=["sst2"])["glue-bert"]
    _record(workspace.results, experiment.runs[-1], code_fingerprint="0ld")
    with pytest.raises(StaleRecordsError, match=r"1 record\(s\) of experiment glue-bert were made by other code"):
        experiment_runner.run_experiment(experiment, workspace)
    assert fake_training == [] and memberships(workspace.results) == {}
    experiment_runner.run_experiment(experiment, workspace, stale_records="keep")
    assert experiment.runs[-1].run_id not in fake_training and len(fake_training) == len(experiment.runs) - 1


def test_an_experiment_name_must_be_a_safe_folder_name():
    with pytest.raises(ValueError, match="experiment name '../x'"):
        Experiment("../x", ())
