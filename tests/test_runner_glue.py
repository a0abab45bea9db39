"""GLUE runs: smoke runs end to end on CPU (one task per family), resume after a crash,
skip when done, redo when unreadable, records of other code, the sparsity of each evaluation."""
import json
import types

import pytest
import torch

import pst
from pst.repro.configs import GlueRunConfig
from pst.repro.experiments import memberships
from pst.repro.fingerprint import code_fingerprint
from pst.repro.profiles import smoke_synthetic_setting
from pst.repro.results import read_record, write_record
from pst.repro.runners import glue as glue_runner
from pst.repro.runners.glue import _evaluations, run_glue
from pst.repro.runners.lifecycle import training_log
from pst.repro.runstate import SCORES_SUFFIX, StaleRecordsError, run_paths

# Chance level of each synthetic task's main metric (balanced labels) plus a clear margin.
FAMILIES = {
    "sst2": ("accuracy", 0.5 + 0.15),      # single sentence
    "rte": ("accuracy", 0.5 + 0.1),        # sentence pair
    "stsb": ("pearson", 0.0 + 0.3),        # regression
    "mnli": ("accuracy", 1 / 3 + 0.15),    # three classes
}


def smoke_config(task, **overrides):
    """PST on a synthetic task with the smoke profile's settings for synthetic tasks."""
    learning_rate, epochs = smoke_synthetic_setting(task, "pst")
    values = dict(task=task, model="tiny:bert", method="pst", learning_rate=learning_rate, epochs=epochs,
                  batch_size=16, data_source="synthetic")
    return GlueRunConfig(**(values | overrides))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished SST-2 run, made here for the tests that need one (never left by another test)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("finished")
    config = smoke_config("sst2", epochs=3)
    return config, root, run_glue(config, root / "results", root / "work")


def _no_training(monkeypatch):
    """Make the first step of real work (getting the model) fail, so a run that starts is seen at once."""
    def refuse(*args, **kwargs):
        raise AssertionError("the run started although its record should have been used")

    monkeypatch.setattr(glue_runner, "resolve_model", refuse)


def _fake_record(config, tmp_path, **fields):
    """A record with every field the runners check, without training."""
    paths = run_paths(config, tmp_path / "results", tmp_path / "work")
    record = {"run_id": config.run_id, "config": {}, "code_fingerprint": code_fingerprint(), "finished_at": 1.0,
              "selected": {"value": 0.5}, **fields}
    write_record(paths.record, record)
    return paths, record


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(FAMILIES))
def test_smoke_run_reaches_target_sparsity_and_learns(task, tmp_path):
    torch.set_num_threads(1)
    record = run_glue(smoke_config(task), tmp_path / "results", tmp_path / "work")
    metric, threshold = FAMILIES[task]
    assert record["main_metric"] == metric
    assert record["selected"]["target_reached"] and record["selected"]["sparsity"] == pytest.approx(0.9)
    assert all(s == pytest.approx(0.9, abs=1e-3) for s in record["measured_sparsity"].values())
    value = record["selected"]["value"]
    assert value > threshold, f"{task}: {metric} {value:.3f} is not clearly above chance"
    assert record["trainable_parameters"]["added"] > 0 and record["environment"]["torch"]
    assert record["code_fingerprint"] == code_fingerprint() and "experiment" not in record


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_record(finished, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    config, _, uninterrupted = finished

    class Crash(RuntimeError):
        pass

    class CrashingCallback(pst.SparsityCallback):
        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            if state.global_step == 40:  # in epoch 2, after the epoch-1 checkpoint
                raise Crash("simulated kill")

    monkeypatch.setattr(pst, "SparsityCallback", CrashingCallback)
    with pytest.raises(Crash):
        run_glue(config, tmp_path / "results", tmp_path / "work")
    paths = run_paths(config, tmp_path / "results", tmp_path / "work")
    assert not paths.record.exists() and paths.last_checkpoint() is not None
    monkeypatch.undo()
    resumed = run_glue(config, tmp_path / "results", tmp_path / "work")
    for key in ("evaluations", "selected", "measured_sparsity", "train_steps"):
        assert json.dumps(resumed[key], sort_keys=True) == json.dumps(uninterrupted[key], sort_keys=True), key
    assert not paths.checkpoints.exists()  # dropped once the record is written


@pytest.mark.slow
def test_finished_run_is_skipped_without_training(finished, monkeypatch):
    config, root, _ = finished
    paths = run_paths(config, root / "results", root / "work")
    before, stamp = read_record(paths.record), paths.record.stat().st_mtime_ns
    _no_training(monkeypatch)
    assert run_glue(config, root / "results", root / "work") == before
    assert paths.record.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_unreadable_record_is_moved_aside_and_the_run_redone(tmp_path, caplog):
    torch.set_num_threads(1)
    config = smoke_config("sst2", epochs=1)
    paths = run_paths(config, tmp_path / "results", tmp_path / "work")
    paths.record.parent.mkdir(parents=True)
    paths.record.write_text('{"run_id": "sst2-pst-')  # a run killed by a full disk
    record = run_glue(config, tmp_path / "results", tmp_path / "work")
    assert read_record(paths.record) == record and record["selected"]["value"] > 0
    (aside,) = paths.record.parent.glob(paths.record.name + ".corrupt-*")
    assert aside.read_text() == '{"run_id": "sst2-pst-'
    assert "is not valid JSON" in caplog.text and "moved aside" in caplog.text and "redone" in caplog.text


@pytest.mark.slow
def test_scores_are_saved_when_asked_and_a_record_without_them_is_redone(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    config = smoke_config("sst2", epochs=1, method="movement")
    paths, _ = _fake_record(config, tmp_path)  # done, but without the score file the analysis needs
    record = run_glue(config, tmp_path / "results", tmp_path / "work", save_scores=True)
    assert record["finished_at"] > 1.0 and paths.side_file(SCORES_SUFFIX).stat().st_size > 0
    _no_training(monkeypatch)
    assert run_glue(config, tmp_path / "results", tmp_path / "work", save_scores=True) == record


def test_record_of_other_code_is_refused_kept_or_redone_as_asked(tmp_path, monkeypatch, caplog):
    config = smoke_config("sst2")
    paths, stale = _fake_record(config, tmp_path, code_fingerprint="0123456789abcdef")
    _no_training(monkeypatch)
    with pytest.raises(StaleRecordsError, match="made by other code.*--rerun-stale.*--keep-stale-records"):
        run_glue(config, tmp_path / "results", tmp_path / "work")
    assert run_glue(config, tmp_path / "results", tmp_path / "work", stale_records="keep") == stale
    assert "keeping" in caplog.text and "0123456789abcdef" in caplog.text
    with pytest.raises(AssertionError, match="started"):  # rerun: the run starts (and is stopped here)
        run_glue(config, tmp_path / "results", tmp_path / "work", stale_records="rerun")
    assert read_record(paths.record) == stale  # nothing finished is lost before the new record exists


def test_force_redoes_records_finished_before_the_given_time(tmp_path, monkeypatch):
    config = smoke_config("sst2")
    _, record = _fake_record(config, tmp_path, finished_at=100.0)
    _no_training(monkeypatch)
    assert run_glue(config, tmp_path / "results", tmp_path / "work", force=50.0) == record
    with pytest.raises(AssertionError, match="started"):
        run_glue(config, tmp_path / "results", tmp_path / "work", force=150.0)


def test_unknown_task_method_and_pst_override_are_rejected_when_planned():
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        smoke_config("squad")
    with pytest.raises(ValueError, match="unknown method 'prune-it'"):
        smoke_config("sst2", method="prune-it")
    with pytest.raises(ValueError, match="unknown pst override.*'rank'"):
        smoke_config("sst2", pst={"rank": 4})


def test_overrides_equal_to_the_defaults_do_not_make_another_run():
    assert smoke_config("sst2", pst={"weight_rank": 8, "score_rank": 8}).run_id == smoke_config("sst2").run_id
    assert smoke_config("sst2", pst={"weight_rank": 4}).run_id != smoke_config("sst2").run_id


def _trainer_with(history):
    return types.SimpleNamespace(state=types.SimpleNamespace(log_history=history))


def test_each_evaluation_carries_the_sparsity_the_callback_logged():
    history = [
        {"loss": 0.7, "step": 10, "sparsity": 0.3},
        {"eval_validation_accuracy": 0.6, "eval_validation_loss": 0.6, "epoch": 1.0, "step": 10, "sparsity": 0.3},
        {"eval_validation_accuracy": 0.8, "epoch": 2.0, "step": 20, "sparsity": 0.9},
    ]
    evaluations = _evaluations(_trainer_with(history), ("validation",), prunes=True)
    assert [(e["step"], e["sparsity"], e["metrics"]) for e in evaluations] == [
        (10, 0.3, {"validation": {"accuracy": 0.6}}), (20, 0.9, {"validation": {"accuracy": 0.8}})]
    assert all(e["sparsity"] == 0.0 for e in _evaluations(_trainer_with(history), ("validation",), prunes=False))
    with pytest.raises(RuntimeError, match="no logged sparsity.*SparsityCallback"):
        _evaluations(_trainer_with([{"eval_validation_accuracy": 0.5, "step": 5}]), ("validation",), prunes=True)


def test_the_training_log_keeps_the_loss_entries_with_their_sparsity():
    history = [
        {"loss": 0.7, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 10, "sparsity": 0.3},
        {"eval_validation_accuracy": 0.6, "epoch": 1.0, "step": 20, "sparsity": 0.9},
        {"loss": 0.9, "learning_rate": 2e-3, "epoch": 0.05, "step": 1, "sparsity": 0.0},
        {"train_loss": 0.8, "train_runtime": 3.0, "epoch": 1.0, "step": 20},
    ]
    assert training_log(history, prunes=True) == [
        {"step": 1, "epoch": 0.05, "loss": 0.9, "sparsity": 0.0, "learning_rate": 2e-3},
        {"step": 10, "epoch": 0.5, "loss": 0.7, "sparsity": 0.3, "learning_rate": 1e-3}]
    assert [p["sparsity"] for p in training_log(history, prunes=False)] == [0.0, 0.0]
    with pytest.raises(RuntimeError, match="step 3 has no logged sparsity.*SparsityCallback"):
        training_log([{"loss": 0.5, "step": 3}], prunes=True)


@pytest.mark.slow
def test_the_record_holds_a_training_log_to_draw_curves(finished):
    _, _, record = finished
    log = record["training_log"]
    steps = [point["step"] for point in log]
    assert steps[0] == 1 and steps == sorted(steps) and steps[-1] <= record["train_steps"]
    assert 15 <= len(log) <= 25, f"{len(log)} points over {record['train_steps']} steps"
    assert all(set(p) == {"step", "epoch", "loss", "sparsity", "learning_rate"} for p in log)
    assert log[0]["sparsity"] == 0.0 and log[-1]["sparsity"] == pytest.approx(0.9)
    assert all(a["sparsity"] <= b["sparsity"] for a, b in zip(log, log[1:]))  # the cubic schedule only rises
    assert all(p["loss"] > 0 and p["learning_rate"] > 0 for p in log)
    per_epoch = record["train_steps"] // 3
    assert [e["step"] for e in record["evaluations"]] == [per_epoch, 2 * per_epoch, 3 * per_epoch]  # one per epoch


@pytest.mark.slow
def test_command_line_runs_one_config_and_rejects_bad_files(tmp_path, capsys):
    from pst.repro.runners.__main__ import main

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"task": "sst2", "model": "tiny:bert", "method": "pst", "learning_rate": 3e-3,
                                  "epochs": 1, "batch_size": 16, "data_source": "synthetic"}))
    main(["glue", str(config), "--out", str(tmp_path / "cli"), "--experiment", "cli"])
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    assert run_id.startswith("sst2-pst") and (tmp_path / "cli" / "results" / "runs" / f"{run_id}.json").is_file()
    assert memberships(tmp_path / "cli" / "results") == {"cli": [run_id]}
    config.write_text(json.dumps({"task": "sst2", "no_such_field": 1}))
    with pytest.raises(SystemExit):
        main(["glue", str(config)])
    assert "does not hold the fields of a GlueRunConfig" in capsys.readouterr().err


#: Majority class of the bundled QNLI dev split (not_entailment: 450 of 873 ~ 51.5%) and chance
#: correlation for STS-B, each with a margin the smoke profile's PST setting clears.
REAL_FLOORS = {"qnli": ("accuracy", 450 / 873 + 0.015), "stsb": ("pearson", 0.0 + 0.1)}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(REAL_FLOORS))
def test_smoke_pst_learns_real_text_above_the_majority_class(task, tmp_path):
    from pst.repro import profiles

    torch.set_num_threads(1)
    (config,) = profiles.glue_runs("smoke", "bert", tasks=[task], methods=["pst"])
    assert config.data_source == "bundled"
    record = run_glue(config, tmp_path / "results", tmp_path / "work")
    metric, floor = REAL_FLOORS[task]
    assert record["main_metric"] == metric and record["selected"]["target_reached"]
    assert record["selected"]["value"] > floor, f"{task}: {metric} {record['selected']['value']:.3f} <= {floor:.3f}"


def test_precision_is_checked_and_the_paper_profile_asks_for_bf16():
    from pst.repro import profiles

    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], got 'fp16'"):
        smoke_config("sst2", precision="fp16")
    assert smoke_config("sst2").run_id != smoke_config("sst2", precision="bf16").run_id
    assert {run.precision for run in profiles.glue_runs("paper", "bert", tasks=["rte"])} == {"bf16"}
    assert {run.precision for run in profiles.nlg_runs("paper")} == {"bf16"}
    assert {run.precision for run in profiles.glue_runs("smoke", "bert")} == {"fp32"}


@pytest.mark.slow
def test_a_bf16_run_trains_in_bf16_mixed_precision_and_says_so(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    seen = set()
    original = pst.SparseLayer.forward

    def spy(self, x):  # the autocast state the sparse layers run under, training and evaluating
        seen.add((self.training, torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
        return original(self, x)

    monkeypatch.setattr(pst.SparseLayer, "forward", spy)
    record = run_glue(smoke_config("sst2", epochs=1, precision="bf16"), tmp_path / "results", tmp_path / "work")
    assert record["precision"] == "bf16" and record["config"]["precision"] == "bf16"
    assert (True, torch.bfloat16) in seen and (True, False) not in seen
    assert all(value == pytest.approx(0.9, abs=1e-3) for value in record["measured_sparsity"].values())


def test_resume_point_drops_only_real_checkpoints_of_other_code(tmp_path, caplog):
    from pst.repro.runners.lifecycle import CHECKPOINT_FINGERPRINT, resume_point

    paths = run_paths(smoke_config("sst2"), tmp_path / "results", tmp_path / "work")
    paths.checkpoints.mkdir(parents=True)  # what the Trainer makes before training: not a checkpoint of other code
    with caplog.at_level("WARNING"):
        assert resume_point(paths) is None
    assert "other code" not in caplog.text
    assert (paths.checkpoints / CHECKPOINT_FINGERPRINT).read_text().strip() == code_fingerprint()

    (paths.checkpoints / "checkpoint-5").mkdir()
    assert resume_point(paths) == str(paths.checkpoints / "checkpoint-5")  # ours: resumed

    (paths.checkpoints / CHECKPOINT_FINGERPRINT).write_text("0123456789abcdef\n")
    with caplog.at_level("WARNING"):
        assert resume_point(paths) is None
    assert "were made by other code" in caplog.text and not (paths.checkpoints / "checkpoint-5").exists()
