"""PST sharded as users shard a decoder (FSDP2 per decoder layer + root, resharding after forward or
keeping units gathered with explicit prefetch, with matrices worked by row chunks, with masks
kept as thresholds too; FSDP1 with use_orig_params),
2 processes on CPU (gloo), fp64: exact counts, identical masks on every rank and equal to one
process training the same global batch, the report, the adapter and the full state dict."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "distributed"))
from launcher import HERE, torchrun  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["fsdp2", "fsdp2-prefetch", "fsdp1", "fsdp2-chunks", "fsdp2-threshold"])
def sharded_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    torchrun([str(HERE / "fsdp_worker.py"), request.param, str(out)], cwd=out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return request.param, ranks


def test_every_rank_has_the_same_masks_at_every_step(sharded_run):
    _, (rank0, rank1) = sharded_run
    assert len(rank0["masks"]) == 6
    assert rank0["masks"] == rank1["masks"]


def test_masks_equal_one_process_training_the_same_global_batch(sharded_run):
    _, (rank0, _) = sharded_run
    for step, (sharded, single) in enumerate(zip(rank0["masks"], rank0["reference_masks"]), start=1):
        assert sharded == single, f"step {step}"
    assert rank0["reference_logits_max_diff"] < 1e-10


def test_exact_pruned_counts_at_every_step(sharded_run):
    _, (rank0, _) = sharded_run
    assert rank0["sparsities"][-1] == 0.9
    for masks, sparsity in zip(rank0["masks"], rank0["sparsities"]):
        for name, (_, zeros) in masks.items():
            n, k = rank0["shapes"][name]
            assert zeros == math.floor(sparsity * n * k), name


def test_sparsity_report_of_the_sharded_model_counts_every_matrix(sharded_run):
    _, (rank0, rank1) = sharded_run
    assert rank0["report"] == rank1["report"]
    assert {row["name"] for row in rank0["report"]} == set(rank0["shapes"])  # clean names, no FSDP prefixes
    for row in rank0["report"]:
        n, k = rank0["shapes"][row["name"]]
        assert row["shape"] == [n, k] and row["zeros"] == math.floor(0.9 * n * k)


def test_masks_are_rebuilt_at_every_step_despite_resharding(sharded_run):
    """Each unit is all-gathered again for every micro-batch; the mask must still follow each step."""
    _, (rank0, _) = sharded_run
    assert all(set(step) == set(rank0["shapes"]) and min(step.values()) >= 1 for step in rank0["rebuilds"])


def test_adapter_saved_from_the_shards_reloads_with_identical_logits(sharded_run):
    _, (rank0, _) = sharded_run
    assert rank0["adapter_logits_equal"], rank0["adapter_logits_max_diff"]


def test_full_state_dict_reloads_without_the_schedule_and_keeps_the_sparsity(sharded_run):
    kind, (rank0, _) = sharded_run
    if kind == "fsdp1":
        pytest.skip("FSDP1's full state dict segfaults on CPU in torch 2.13 (also without PST)")
    assert rank0["state_dict_sparsities"] == [0.9]
    assert rank0["state_dict_logits_equal"]


def test_fsdp1_inner_module_is_refused_with_the_fix(sharded_run):
    kind, (rank0, rank1) = sharded_run
    if kind != "fsdp1":
        pytest.skip("FSDP1 only: its root unit holds parameters the inner module cannot gather")
    for rank in (rank0, rank1):
        assert "pass the object FSDP(...) returned" in rank["inner_refusal"]


def test_the_threshold_run_keeps_no_bits(sharded_run):
    kind, (rank0, rank1) = sharded_run
    threshold = kind.endswith("-threshold")
    for rank in (rank0, rank1):
        assert rank["mask_storages"] == (["threshold"] if threshold else ["bits"])
        assert rank["bits_held"] is not threshold
