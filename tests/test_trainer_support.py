"""What the README says about training loops other than transformers.Trainer: a hand-written
accelerate loop with SparsityScheduler works, and peft cannot host PST without patching its enum."""
import math

import pytest
import torch

import pst
from tiny_decoders import causal_lm, token_batch


def test_an_accelerate_loop_with_the_scheduler_reaches_the_target():
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model = pst.sparsify(causal_lm("llama"), pst.PSTConfig(sparsity=0.7, warmup_fraction=0.2, cooldown_fraction=0.2))
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    batch = token_batch(batch=4, length=8, seed=1)
    loader = torch.utils.data.DataLoader(
        [{"input_ids": ids, "labels": ids} for ids in batch["input_ids"]] * 4, batch_size=4
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = pst.SparsityScheduler(accelerator.unwrap_model(model), total_steps=len(loader))
    losses = []
    for inputs in loader:
        loss = model(**inputs).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert [row["sparsity"] for row in pst.sparsity_report(model)] == pytest.approx([0.7] * 14, abs=1e-3)


def test_peft_cannot_register_a_third_party_method_without_patching_its_enum():
    """If this starts failing, peft has opened get_peft_model to outside methods: update the README."""
    peft = pytest.importorskip("peft")
    with pytest.raises(ValueError, match="add an entry to peft.utils.peft_types.PeftType"):
        peft.utils.register_peft_method(name="pst", config_cls=peft.LoraConfig, model_cls=peft.LoraModel)
