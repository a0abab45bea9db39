"""Smoke GLUE runs end to end on CPU: one task per family, resume after a crash, skip-if-done."""
import json

import pytest
import torch

import pst
from pst.repro.results import read_record
from pst.repro.configs import GlueRunConfig
from pst.repro.runners.glue import run_glue
from pst.repro.runners.lifecycle import run_paths

pytestmark = pytest.mark.slow

# Chance level of each synthetic task's main metric (balanced labels) plus a clear margin.
FAMILIES = {
    "sst2": ("accuracy", 0.5 + 0.15),      # single sentence
    "rte": ("accuracy", 0.5 + 0.1),        # sentence pair
    "stsb": ("pearson", 0.0 + 0.3),        # regression
    "mnli": ("accuracy", 1 / 3 + 0.15),    # three classes
}


def smoke_config(task, **overrides):
    values = dict(experiment="test", task=task, model="tiny:bert", method="pst", learning_rate=3e-3, epochs=4,
                  batch_size=16, data_source="synthetic")
    return GlueRunConfig(**(values | overrides))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("glue")


@pytest.mark.parametrize("task", sorted(FAMILIES))
def test_smoke_run_reaches_target_sparsity_and_learns(task, workdir):
    torch.set_num_threads(1)
    record = run_glue(smoke_config(task), workdir / "results", workdir / "work")
    metric, threshold = FAMILIES[task]
    assert record["main_metric"] == metric
    assert record["selected"]["target_reached"] and record["selected"]["sparsity"] == pytest.approx(0.9)
    assert all(s == pytest.approx(0.9, abs=1e-3) for s in record["measured_sparsity"].values())
    value = record["selected"]["value"]
    assert value > threshold, f"{task}: {metric} {value:.3f} is not clearly above chance"
    assert record["trainable_parameters"]["added"] > 0 and record["environment"]["torch"]


def test_interrupted_run_resumes_to_the_same_record(workdir, monkeypatch):
    torch.set_num_threads(1)
    config = smoke_config("sst2", epochs=3, experiment="resume")
    uninterrupted = run_glue(config, workdir / "a" / "results", workdir / "a" / "work")

    class Crash(RuntimeError):
        pass

    class CrashingCallback(pst.SparsityCallback):
        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            if state.global_step == 40:  # in epoch 2, after the epoch-1 checkpoint
                raise Crash("simulated kill")

    monkeypatch.setattr(pst, "SparsityCallback", CrashingCallback)
    with pytest.raises(Crash):
        run_glue(config, workdir / "b" / "results", workdir / "b" / "work")
    paths = run_paths(config, workdir / "b" / "results", workdir / "b" / "work")
    assert not paths.record.exists() and paths.last_checkpoint() is not None
    monkeypatch.undo()
    resumed = run_glue(config, workdir / "b" / "results", workdir / "b" / "work")
    for key in ("evaluations", "selected", "measured_sparsity", "train_steps"):
        assert json.dumps(resumed[key], sort_keys=True) == json.dumps(uninterrupted[key], sort_keys=True), key
    assert not paths.checkpoints.exists()  # dropped once the record is written


def test_finished_run_is_skipped(workdir):
    config = smoke_config("sst2", epochs=3, experiment="resume")
    paths = run_paths(config, workdir / "a" / "results", workdir / "a" / "work")
    before = read_record(paths.record)
    again = run_glue(config, workdir / "a" / "results", workdir / "a" / "work")
    assert again == before and paths.record.stat().st_mtime == pytest.approx(paths.record.stat().st_mtime)


def test_unknown_task_and_method_are_rejected(workdir):
    with pytest.raises(ValueError, match="task"):
        run_glue(smoke_config("squad"), workdir / "results", workdir / "work")
    with pytest.raises(ValueError, match="unknown method"):
        run_glue(smoke_config("sst2", method="prune-it"), workdir / "results", workdir / "work")


def test_command_line_runs_one_config_and_rejects_bad_files(workdir, capsys):
    from pst.repro.runners.__main__ import main

    config = workdir / "run.json"
    config.write_text(json.dumps({"experiment": "cli", "task": "sst2", "model": "tiny:bert", "method": "pst",
                                  "learning_rate": 3e-3, "epochs": 1, "batch_size": 16, "data_source": "synthetic"}))
    main(["glue", str(config), "--out", str(workdir / "cli")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"].startswith("cli/sst2-pst")
    assert list((workdir / "cli" / "results" / "cli").glob("*.json"))
    config.write_text(json.dumps({"experiment": "cli", "no_such_field": 1}))
    with pytest.raises(SystemExit):
        main(["glue", str(config)])
    assert "does not hold the fields of a GlueRunConfig" in capsys.readouterr().err


#: Majority class of the bundled QNLI dev split (not_entailment: 450 of 873 ~ 51.5%) and chance
#: correlation for STS-B, each with a margin the smoke profile's PST setting clears.
REAL_FLOORS = {"qnli": ("accuracy", 450 / 873 + 0.015), "stsb": ("pearson", 0.0 + 0.1)}


@pytest.mark.parametrize("task", sorted(REAL_FLOORS))
def test_smoke_pst_learns_real_text_above_the_majority_class(task, workdir):
    from pst.repro import profiles

    torch.set_num_threads(1)
    (config,) = profiles.glue_runs("smoke", "bert", tasks=[task], methods=["pst"], experiment="test-real")
    assert config.data_source == "bundled"
    record = run_glue(config, workdir / "results", workdir / "work")
    metric, floor = REAL_FLOORS[task]
    assert record["main_metric"] == metric and record["selected"]["target_reached"]
    assert record["selected"]["value"] > floor, f"{task}: {metric} {record['selected']['value']:.3f} <= {floor:.3f}"
