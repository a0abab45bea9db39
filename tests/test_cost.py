"""The paper profile's cost: steps from the train sizes, step times measured by the benchmark or assumed."""
import json

import pytest

from pst.repro import cost, profiles
from pst.repro.glue_tasks import GLUE_TASKS


def _benchmark_json(path, shape, precision, batch, seconds, device="NVIDIA H200"):
    results = {method: {"method": method, "step_s": step, "device_name": device} for method, step in seconds.items()}
    path.write_text(json.dumps({"settings": {"shape": shape, "precision": precision, "batch": batch},
                                "results": results}))
    return path


def test_without_measurements_the_cost_uses_the_assumed_rates():
    (run,) = profiles.glue_runs("paper", "bert", tasks=["rte"], methods=["pst"])[:1]
    steps = run.epochs * GLUE_TASKS["rte"].train_size / run.batch_size
    estimate = cost.estimate([run])
    assert estimate.hours == pytest.approx(steps / cost.ASSUMED_STEPS_PER_SECOND["bert-base"] / 3600)
    assert (estimate.measured_runs, estimate.assumed_runs) == (0, 1) and "assumed rates" in str(estimate)


def test_measured_step_times_are_scaled_to_the_batch_and_name_the_card(tmp_path):
    glue = _benchmark_json(tmp_path / "bert.json", "bert-base", "bf16", 32, {"pst": 0.030, "dense": 0.020})
    nlg = _benchmark_json(tmp_path / "gpt2.json", "gpt2-medium", "bf16", 8, {"pst": 0.100})
    times = cost.StepTimes.read([glue, nlg])
    bert = profiles.glue_runs("paper", "bert", tasks=["rte"], methods=["pst"])[0]
    roberta = profiles.glue_runs("paper", "roberta", tasks=["rte"], methods=["pst"])[0]  # batch 16
    dense = profiles.glue_runs("paper", "bert", tasks=["rte"], methods=["dense"])[0]
    movement = profiles.glue_runs("paper", "bert", tasks=["rte"], methods=["movement"])[0]  # not measured: PST's
    e2e = profiles.nlg_runs("paper", datasets=["e2e"], methods=["pst"])[0]
    runs_and_step_times = [(bert, 0.030), (roberta, 0.030 / 2), (dense, 0.020), (movement, 0.030), (e2e, 0.100)]
    expected = sum(cost._steps_and_shape(run)[0] * seconds for run, seconds in runs_and_step_times) / 3600
    estimate = cost.estimate([bert, roberta, dense, movement, e2e], times)
    assert estimate.hours == pytest.approx(expected)
    assert (estimate.measured_runs, estimate.assumed_runs) == (5, 0) and "NVIDIA H200" in str(estimate)


def test_runs_of_an_unmeasured_precision_fall_back_to_assumed_rates(tmp_path):
    times = cost.StepTimes.read([_benchmark_json(tmp_path / "b.json", "bert-base", "fp32", 32, {"pst": 0.05})])
    run = profiles.glue_runs("paper", "bert", tasks=["rte"], methods=["pst"])[0]  # bf16: nothing measured
    estimate = cost.estimate([run], times)
    assert (estimate.measured_runs, estimate.assumed_runs) == (0, 1)
    assert estimate.hours == pytest.approx(cost.estimate([run]).hours)


def test_bad_step_time_files_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {}}))
    with pytest.raises(ValueError, match="is not the --json output of benchmarks/train_step.py"):
        cost.StepTimes.read([bad])
    a = _benchmark_json(tmp_path / "a.json", "bert-base", "bf16", 32, {"pst": 0.03}, device="NVIDIA H100")
    b = _benchmark_json(tmp_path / "b.json", "gpt2-medium", "bf16", 8, {"pst": 0.1}, device="NVIDIA H200")
    with pytest.raises(ValueError, match="must come from one device"):
        cost.StepTimes.read([a, b])
