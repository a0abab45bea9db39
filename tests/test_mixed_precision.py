"""Mixed precision on CPU: autocast bf16/fp16, gradient scaling, wholly-bf16 models, the Trainer."""
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import pst
from pst import PSTConfig

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def build(tiny_model, arch, method="pst", sparsity=0.5):
    model = tiny_llama() if arch == "llama" else tiny_model(arch)
    targets = LLAMA_TARGETS if arch == "llama" else None
    pst.sparsify(model, PSTConfig(method=method, target_modules=targets))
    pst.set_sparsity(model, sparsity)
    with torch.no_grad():  # non-zero V, B, R, C: every term of the score and of the gradient matters
        for _, layer in pst.sparse_layers(model):
            for p in (layer.V, layer.B, layer.R, layer.C, layer.scores):
                if p is not None:
                    p.normal_(std=0.05)
    return model


def loss_of(model, arch, batch):
    labels = torch.tensor([0, 2]) if arch == "bert" else batch["input_ids"]
    return model(**batch, labels=labels).loss


def relative_error(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize(("arch", "method"), [("bert", "pst"), ("bert", "magnitude"), ("bert", "movement"),
                                              ("bert", "lora"), ("gpt2", "pst"), ("llama", "pst")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_and_backward_are_close_to_fp32(tiny_model, token_batch, arch, method, dtype):
    model = build(tiny_model, arch, method)
    loss = loss_of(model, arch, token_batch)
    loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype):
        mixed = loss_of(model, arch, token_batch)
    (mixed * 1024).backward()  # scaled, as GradScaler does, so that fp16 gradients do not underflow
    assert mixed.item() == pytest.approx(loss.item(), rel=2e-2)
    assert reference and set(reference) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert p.grad.dtype == torch.float32, name
            if reference[name].norm() > 1e-6:  # not the key biases, whose gradient is 0 up to rounding
                assert relative_error(p.grad / 1024, reference[name]) < 0.1, name


def test_masks_under_autocast_come_from_fp32_scores(tiny_model, token_batch):
    model = build(tiny_model, "bert")
    expected = {name: layer.effective_weight() != 0 for name, layer in pst.sparse_layers(model)}
    pst.invalidate_masks(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_of(model, "bert", token_batch)
    for name, layer in pst.sparse_layers(model):
        assert layer._mask_key is not None, name  # rebuilt under autocast, not by mask() below
        assert torch.equal(layer.mask(), expected[name]), name


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_model_held_wholly_in_bf16_trains_with_exact_zero_counts(tiny_model, token_batch, arch):
    model = tiny_llama() if arch == "llama" else tiny_model(arch)
    model.to(torch.bfloat16).train()
    pst.sparsify(model, PSTConfig(target_modules=LLAMA_TARGETS if arch == "llama" else None))
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for sparsity in (0.3, 0.6, 0.9):
        pst.set_sparsity(model, sparsity)
        loss = model(**token_batch, labels=token_batch["input_ids"]).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    for name, layer in pst.sparse_layers(model):
        assert layer.U.dtype == torch.bfloat16
        effective = layer.effective_weight()
        for block in effective.chunk(layer.blocks):
            assert int((block == 0).sum()) == math.floor(0.9 * block.numel() + 1e-6), name


def test_fp16_autocast_with_gradient_scaling_trains(tiny_model, token_batch):
    model = build(tiny_model, "bert").train()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = model.bert.encoder.layer[0].attention.self.query.V.detach().clone()
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_of(model, "bert", token_batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert torch.isfinite(loss) and scaler.get_scale() > 0
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.query.V, before)


def test_trainer_in_bf16_reaches_the_target_sparsity(tiny_model, token_dataset, tmp_path):
    # Trainer(fp16=True) on CPU trains in fp32 (accelerate autocasts fp16 only on GPUs): the
    # fp16 path is covered by the autocast + GradScaler test above.
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.6))
    output_dtypes = set()
    model.bert.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda module, args, output: output_dtypes.add(output.dtype))
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2, report_to=[],
        save_strategy="no", logging_steps=4, use_cpu=True, disable_tqdm=True, gradient_accumulation_steps=2,
        bf16=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=token_dataset, callbacks=[pst.SparsityCallback()])
    trainer.train()
    assert output_dtypes == {torch.bfloat16}
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    assert all(row["sparsity"] == pytest.approx(0.6, abs=1e-3) for row in pst.sparsity_report(model))
