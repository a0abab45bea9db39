"""PST through the Trainer under DDP (torchrun and accelerate launch, 2 gloo processes on CPU): the same
masks on both ranks at every step, bit-identical to one process accumulating the same two micro-batches, exact counts,
and an adapter saved on rank 0 that reloads with the trained model's logits."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "distributed"))
from launcher import HERE, accelerate_launch, torchrun  # noqa: E402

pytestmark = pytest.mark.slow
WORKER = str(HERE / "trainer_worker.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    subprocess.run([sys.executable, WORKER, "reference", str(out)], check=True, capture_output=True, cwd=out)
    return json.loads((out / "reference-rank0.json").read_text())


@pytest.fixture(scope="module", params=["torchrun", "accelerate"])
def runs(request, reference, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    launch = torchrun if request.param == "torchrun" else accelerate_launch
    launch([WORKER, "ddp", str(out)], cwd=out)
    read = lambda name: json.loads((out / f"{name}.json").read_text())  # noqa: E731
    return reference, read("ddp-rank0"), read("ddp-rank1")


def test_ddp_ran_on_two_processes(runs):
    reference, rank0, rank1 = runs
    assert (reference["world_size"], rank0["world_size"]) == (1, 2)
    assert rank0["wrapper"] == "DistributedDataParallel"


def test_both_ranks_have_the_same_masks_at_every_step(runs):
    _, rank0, rank1 = runs
    assert len(rank0["masks"]) == 8 and rank0["masks"] == rank1["masks"]


def test_ddp_is_bit_identical_to_one_process_accumulating_the_same_micro_batches(runs):
    reference, rank0, _ = runs
    assert rank0["masks"] == reference["masks"]
    assert rank0["losses"] == reference["losses"]  # exact floats, and each with the sparsity it ran at


def test_exact_counts_at_every_step_and_in_the_report(runs):
    _, rank0, _ = runs
    # After step t the masks have the sparsity that step t + 1's forward (its logged loss) ran at.
    sparsities = [sparsity for _, _, sparsity in rank0["losses"]][1:] + [0.9]
    shapes = {row["name"]: row["shape"] for row in rank0["report"]}
    for masks, sparsity in zip(rank0["masks"], sparsities):
        for name, (_, zeros) in masks.items():
            n, k = shapes[name]
            assert zeros == math.floor(sparsity * n * k), (name, sparsity)
    assert all(row["zeros"] == math.floor(0.9 * row["numel"]) for row in rank0["report"])


def test_adapter_saved_under_ddp_reloads_with_the_trained_logits(runs):
    _, rank0, _ = runs
    assert rank0["adapter_logits_max_diff"] == 0.0
