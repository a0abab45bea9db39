"""Capturable steps: a schedule on the device, so the mask rebuild is the same kernels at every step.

A CUDA graph replays what it recorded, arguments included. These checks run on the CPU: the
ops of consecutive steps along the ramp (the rebuild included) are compared with their
shapes, dtypes and every non-tensor argument, and the masks with those of the eager path.
Capturing and replaying on a GPU is in tests/test_gpu.py.
"""
import sys
from pathlib import Path

import pytest
import torch

import pst
from pst import PSTConfig
from pst.device_schedule import DevicePrunes
from pst.masking import keep_mask, num_pruned
from pst.schedule import cubic_sparsity

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from op_count import OpCounter  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_a_count_on_the_device_gives_the_masks_of_a_count_on_the_host(dtype, pattern):
    torch.manual_seed(0)
    scores = torch.randn(3, 64).to(dtype)
    scores[:, ::3] = scores[:, :1]  # many ties at every threshold
    most = 32 if pattern else 64
    for prune in range(0, most + 1, 3):
        expected = keep_mask(scores, prune, pattern, strategy="topk")
        assert torch.equal(keep_mask(scores, torch.tensor(prune), pattern), expected), prune
        assert torch.equal(keep_mask(scores, prune, pattern, strategy="sort"), expected), prune
    counts = torch.tensor([0, 17, 29])  # one count per row
    per_row = keep_mask(scores, counts, pattern)
    for row, prune in enumerate(counts.tolist()):
        assert torch.equal(per_row[row], keep_mask(scores[row : row + 1], prune, pattern, strategy="kthvalue")[0])


def test_a_count_on_the_device_is_selected_by_sort_only():
    with pytest.raises(ValueError, match="'sort', not 'topk'"):
        keep_mask(torch.randn(2, 8), torch.tensor(3), strategy="topk")


def test_the_selection_issues_the_same_ops_for_every_count():
    scores = torch.randn(4, 256)
    sequences = []
    for prune in (0, 1, 100, 256):
        count = torch.tensor(prune)
        with OpCounter() as counter:
            keep_mask(scores, count)
        sequences.append(counter.sequence)
        assert counter.pst_syncs == 0
    assert all(sequence == sequences[0] for sequence in sequences[1:])
    with OpCounter() as one:  # the host's count: a different topk per count
        keep_mask(scores, 1, strategy="topk")
    with OpCounter() as other:
        keep_mask(scores, 100, strategy="topk")
    assert one.sequence != other.sequence


def test_the_device_table_is_the_schedule_step_by_step():
    def schedule(step):
        return cubic_sparsity(step, 40, 0.1, 0.3, 0.0, 0.87)

    prunes = DevicePrunes(schedule, 40, [1024, 4096, 1024], [torch.device("cpu")])
    for step in range(45):  # past the end it stays at the final sparsity
        for numel in (1024, 4096):
            assert prunes.count(numel, torch.device("cpu")).item() == num_pruned(schedule(min(step, 40)), numel)
        prunes.advance()
    prunes.set_step(12)
    assert prunes.count(4096, torch.device("cpu")).item() == num_pruned(schedule(12), 4096)
    with pytest.raises(KeyError, match="blocks of 100 entries"):
        prunes.count(100, torch.device("cpu"))


def _train(model, scheduler, batch, steps):
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    labels = batch["input_ids"] if model.config.model_type == "gpt2" else torch.tensor([0, 2])
    masks = []
    for step in range(steps):
        torch.manual_seed(step)  # the same dropout draws in both runs
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        masks.append({name: layer.mask() for name, layer in pst.sparse_layers(model)})
    return masks


@pytest.mark.parametrize("arch,pattern", [("bert", "unstructured"), ("gpt2", "unstructured"), ("bert", "2:4")])
def test_a_capturable_schedule_gives_the_masks_of_the_eager_one(tiny_model, token_batch, arch, pattern):
    final = 0.5 if pattern == "2:4" else 0.9
    runs = []
    for capturable in (False, True):
        model = pst.sparsify(tiny_model(arch), PSTConfig(sparsity=final, pattern=pattern)).train()
        scheduler = pst.SparsityScheduler(model, total_steps=8, capturable=capturable)
        runs.append(_train(model, scheduler, token_batch, steps=10))
    for eager, captured in zip(*runs):
        assert eager.keys() == captured.keys()
        for name in eager:
            assert torch.equal(eager[name], captured[name]), name
    assert pst.sparsity_report(model)[0]["sparsity"] == pytest.approx(final, abs=2e-3)


def test_consecutive_steps_along_the_ramp_issue_the_same_ops_rebuild_included(tiny_model, token_batch):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.9)).train()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    scheduler = pst.SparsityScheduler(model, total_steps=10, capturable=True)
    buffers = {name: layer._mask_bits.data_ptr() for name, layer in pst.sparse_layers(model)}
    sequences, sparsities = [], []
    for step in range(6):
        torch.manual_seed(0)  # the same dropout draws
        with OpCounter() as step_ops:
            model(**token_batch, labels=torch.tensor([0, 2])).loss.backward()
        optimizer.step()  # torch's, outside what pst controls
        optimizer.zero_grad()
        with OpCounter() as schedule_ops:
            scheduler.step()
        assert schedule_ops.pst_syncs == 0 and step_ops.pst_syncs == 0
        sequences.append(step_ops.sequence + schedule_ops.sequence)
        sparsities.append(scheduler.get_sparsity())
    assert len(set(sparsities[:5])) == 5  # every step of these moves the sparsity: warm-up, then the ramp
    assert all(sequence == sequences[0] for sequence in sequences[1:])
    assert buffers == {name: layer._mask_bits.data_ptr() for name, layer in pst.sparse_layers(model)}


def test_without_a_device_schedule_the_rebuild_differs_from_step_to_step(tiny_model, monkeypatch):
    """The check above can fail: the host's schedule selects with a topk whose k follows the ramp
    (on an accelerator; a CPU's selection reads its count into numpy, where no op records it)."""
    monkeypatch.setattr(pst.masking, "default_strategy", lambda device: "topk")
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.9))
    scheduler = pst.SparsityScheduler(model, total_steps=10)
    sequences = []
    for _ in range(3):
        pst.invalidate_masks(model)
        with OpCounter() as counter:
            scheduler.step()
        sequences.append(counter.sequence)
    assert sequences[1] != sequences[2]


def test_a_capturable_schedule_resumes_from_its_state(tiny_model):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.9))
    scheduler = pst.SparsityScheduler(model, total_steps=10, capturable=True)
    for _ in range(5):
        scheduler.step()
    state = scheduler.state_dict()
    assert "device_prunes" not in state
    resumed = pst.SparsityScheduler(model, total_steps=10, capturable=True)
    resumed.load_state_dict(state)
    layer = next(layer for _, layer in pst.sparse_layers(model))
    assert layer.device_prunes is resumed.device_prunes
    assert resumed.device_prunes.count(32 * 32, torch.device("cpu")).item() == num_pruned(
        scheduler.get_sparsity(), 32 * 32)


def test_capturable_refuses_keep_zeros_and_sharded_layers(tiny_model, monkeypatch):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.9, keep_zeros=True))
    with pytest.raises(ValueError, match="keep_zeros"):
        pst.SparsityScheduler(model, total_steps=10, capturable=True)
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.9))
    monkeypatch.setattr(pst.SparseLayer, "_weights_present", lambda self: False)
    with pytest.raises(ValueError, match="weights whole on this rank; FSDP shards them"):
        pst.SparsityScheduler(model, total_steps=10, capturable=True)
