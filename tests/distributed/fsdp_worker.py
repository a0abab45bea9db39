"""One sharded PST training, run by ``tests/test_distributed_fsdp.py`` under torchrun (gloo, CPU):

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/fsdp_worker.py \
        {fsdp2,fsdp2-prefetch,fsdp1,fsdp2-chunks,fsdp2-threshold} OUT

A tiny fp64 LLaMA, PST at 90% reached at step 5 of 6, sharded as users shard a decoder (one
unit per decoder layer and the root), two micro-batches per rank and step. ``-chunks``: every matrix
built, differentiated and selected in chunks of 8 rows (the path an LLM's matrices take on a
CPU); ``-threshold``: so too, with masks kept as thresholds (``mask_storage="threshold"``). Each rank writes
``OUT/rank<r>.json``: the hash and zero count of every mask after every step (gathered), the
mask rebuilds per layer and step, the sparsity report. Rank 0 also trains the same global
batch in one process (the reference) and checks the adapter and the full state dict against
the sharded model's logits.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/tiny_decoders.py

import pst  # noqa: E402
from pst import distributed  # noqa: E402
from tiny_decoders import causal_lm, perturb, token_batch  # noqa: E402

STEPS, MICRO, PER_RANK, SPARSITY, LR = 6, 2, 4, 0.9, 1e-2
CONFIG = pst.PSTConfig(sparsity=SPARSITY)


def build() -> torch.nn.Module:
    model = causal_lm("llama", seed=0).to(torch.float64)
    torch.manual_seed(1)  # U and A are drawn at sparsify
    pst.sparsify(model, CONFIG)
    perturb(model)
    return model.train()


def global_batch() -> dict:
    batch = token_batch(batch=PER_RANK * 2, length=10, seed=3)
    batch["labels"] = batch["input_ids"].clone()
    return batch


def rows(batch: dict, start: int, size: int) -> dict:
    return {key: value[start:start + size] for key, value in batch.items()}


def mask_hashes(model) -> dict:
    """Hash and zero count of every layer's mask, from whole (gathered) weights."""
    with distributed.gathered(model) as whole:
        out = {}
        for name, layer in pst.sparse_layers(whole):
            mask = (layer.effective_weight() != 0).numpy()
            out[distributed.clean_name(name)] = [hashlib.sha256(mask.tobytes()).hexdigest()[:16], int((~mask).sum())]
        return out


def train(model, micro_batches, scheduler, optimizer, after_step) -> list[dict]:
    history = []
    for _ in range(STEPS):
        for micro in micro_batches:
            (model(**micro).loss / len(micro_batches)).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        history.append(after_step())
    return history


def shard(model, kind: str):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    if kind.startswith("fsdp2"):
        from torch.distributed.fsdp import fully_shard

        # fsdp2-prefetch: units stay gathered between forward and backward and the next block is
        # all-gathered while this one computes, so a peer's weights can be whole before its unit runs.
        keep = kind == "fsdp2-prefetch"
        blocks = [fully_shard(layer, reshard_after_forward=not keep) for layer in model.model.layers]
        if keep:
            for block, following in zip(blocks, blocks[1:]):
                block.set_modules_to_forward_prefetch([following])
            for block, preceding in zip(blocks[1:], blocks):
                block.set_modules_to_backward_prefetch([preceding])
        return fully_shard(model, reshard_after_forward=not keep)
    from functools import partial

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FSDP(model, auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}), use_orig_params=True,
                device_id=torch.device("cpu"))


def counting_rebuilds() -> Counter:
    """Count mask rebuilds per layer (``_block_prunes`` runs once per stale layer of a rebuild)."""
    counts: Counter = Counter()
    original = pst.layers.SparseLayer._block_prunes

    def block_prunes(layer):
        counts[id(layer)] += 1
        return original(layer)

    pst.layers.SparseLayer._block_prunes = block_prunes
    return counts


def main(kind: str, out: Path) -> None:
    global CONFIG
    if kind.endswith(("-chunks", "-threshold")):
        kind, _, variant = kind.partition("-")
        pst.layers._ROW_CHUNK_ENTRIES = 8
        if variant == "threshold":
            CONFIG = pst.PSTConfig(sparsity=SPARSITY, mask_storage="threshold")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = global_batch()
    model = build()
    names = {id(layer): name for name, layer in pst.sparse_layers(model)}
    wrapped = shard(model, kind)
    scheduler = pst.SparsityScheduler(wrapped, total_steps=STEPS)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=LR)
    mine = rows(batch, rank * PER_RANK, PER_RANK)
    micro = [rows(mine, m * PER_RANK // MICRO, PER_RANK // MICRO) for m in range(MICRO)]
    rebuilds = counting_rebuilds()
    per_step_rebuilds = []

    def after_step():
        per_step_rebuilds.append({names[i]: n for i, n in rebuilds.items()})
        rebuilds.clear()
        hashes = mask_hashes(wrapped)
        rebuilds.clear()  # the gathered inspection rebuilds too: not training's
        return hashes

    history = train(wrapped, micro, scheduler, optimizer, after_step)
    refusal = None
    if kind == "fsdp1":  # the module inside the root: the root's own parameters would stay sharded
        try:
            pst.sparsity_report(model)
        except ValueError as error:
            refusal = str(error)
    report = pst.sparsity_report(wrapped)
    wrapped.eval()
    probe = token_batch(batch=2, length=10, seed=9)
    with torch.no_grad():
        sharded_logits = wrapped(**probe).logits
    pst.save_adapter(wrapped, out / "adapter")
    full_state = full_state_dict(wrapped) if kind.startswith("fsdp2") else None
    result = {"rank": rank, "world": world, "masks": history, "inner_refusal": refusal, "rebuilds": per_step_rebuilds, "report": report,
              "shapes": {distributed.clean_name(name): [layer.out_features, layer.in_features]
                         for name, layer in pst.sparse_layers(model)},
              "sparsities": [scheduler.get_sparsity(step) for step in range(1, STEPS + 1)],
              "mask_storages": sorted({layer.mask_storage for _, layer in pst.sparse_layers(model)}),
              "bits_held": any(layer._mask_bits is not None for _, layer in pst.sparse_layers(model))}
    if rank == 0:
        result |= check_on_rank0(out, sharded_logits, full_state, batch, probe)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def full_state_dict(model) -> dict:
    """The whole model's state dict on every rank (FSDP1's segfaults on CPU in torch 2.13, even for a
    model without PST: not used there)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def check_on_rank0(out: Path, sharded_logits, full_state, batch, probe) -> dict:
    """The adapter and the full state dict reload onto one unsharded model; the same global batch
    trained in one process gives the same masks."""
    fresh = causal_lm("llama", seed=0).to(torch.float64).eval()
    pst.load_adapter(fresh, out / "adapter")
    with torch.no_grad():
        adapter_logits = fresh(**probe).logits
    state = {}
    if full_state is not None:  # a full state dict reloaded with no schedule: the sparsity travels in it
        reloaded = pst.sparsify(causal_lm("llama", seed=0).to(torch.float64), CONFIG).eval()
        reloaded.load_state_dict(full_state, strict=True)
        with torch.no_grad():
            state = {"state_dict_logits_equal": bool(torch.equal(reloaded(**probe).logits, sharded_logits)),
                     "state_dict_sparsities": sorted({layer.sparsity for _, layer in pst.sparse_layers(reloaded)})}

    reference = build()
    scheduler = pst.SparsityScheduler(reference, total_steps=STEPS)
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(reference), lr=LR)
    size = batch["input_ids"].shape[0] // (2 * MICRO)
    micro = [rows(batch, start, size) for start in range(0, batch["input_ids"].shape[0], size)]
    reference_history = train(reference, micro, scheduler, optimizer, lambda: mask_hashes(reference))
    reference.eval()
    with torch.no_grad():
        reference_logits = reference(**probe).logits
    return {
        "reference_masks": reference_history,
        "adapter_logits_equal": bool(torch.equal(adapter_logits, sharded_logits)),
        "adapter_logits_max_diff": float((adapter_logits - sharded_logits).abs().max()),
        **state,
        "reference_logits_max_diff": float((reference_logits - sharded_logits).abs().max()),
    }


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
