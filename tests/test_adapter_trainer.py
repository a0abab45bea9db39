"""Adapters from Trainer checkpoints: written by the callback, or taken out of model.safetensors; resume still works."""
import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

import pst
from pst import PSTConfig
from pst.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tiny_decoders import causal_lm, token_batch

CONFIG = PSTConfig(sparsity=0.8, warmup_fraction=0.25, cooldown_fraction=0.25)


def _dataset(n=8):
    batch = token_batch(batch=n, length=8, seed=1)
    return [{"input_ids": ids, "attention_mask": mask, "labels": ids}
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def _trainer(model, output_dir, max_steps=4, **overrides):
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, save_strategy="steps", save_steps=2,
        per_device_train_batch_size=2, learning_rate=1e-2, use_cpu=True, report_to=[], logging_steps=1,
        disable_tqdm=True, seed=0, data_seed=0, **overrides,
    )
    callbacks = [pst.SparsityCallback(), pst.AdapterCheckpointCallback()]
    return Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=callbacks)


def _logits(model):
    with torch.no_grad():
        return model.eval()(**token_batch()).logits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Trainer run of 4 steps on a tiny LLaMA, checkpoints at steps 2 and 4, and its base on disk."""
    root = tmp_path_factory.mktemp("trainer")
    causal_lm("llama").save_pretrained(root / "base")
    model = pst.sparsify(AutoModelForCausalLM.from_pretrained(root / "base"), CONFIG)
    _trainer(model, root / "run").train()
    return root, model


def test_callback_writes_an_adapter_into_every_checkpoint(trained):
    root, _ = trained
    for step in (2, 4):
        folder = root / "run" / f"checkpoint-{step}"
        assert (folder / ADAPTER_WEIGHTS).is_file() and (folder / ADAPTER_CONFIG).is_file()
        assert (folder / "model.safetensors").is_file()  # the Trainer's own checkpoint is untouched
    assert json.loads((root / "run" / "checkpoint-2" / ADAPTER_CONFIG).read_text())["sparsity"] == pytest.approx(0.7)


def test_adapter_from_the_last_checkpoint_reproduces_the_trained_model(trained):
    root, model = trained
    restored = pst.load_adapter(AutoModelForCausalLM.from_pretrained(root / "base"), root / "run" / "checkpoint-4")
    assert torch.equal(_logits(restored), _logits(model))
    assert {layer.sparsity for _, layer in pst.sparse_layers(restored)} == {0.8}


def test_checkpoint_without_adapter_files_loads_from_model_safetensors(trained, tmp_path):
    root, _ = trained
    plain = tmp_path / "checkpoint-2"
    shutil.copytree(root / "run" / "checkpoint-2", plain)
    (plain / ADAPTER_WEIGHTS).unlink()
    (plain / ADAPTER_CONFIG).unlink()
    with pytest.raises(ValueError, match=r"Trainer checkpoint without a pst adapter.*config=PSTConfig"):
        pst.load_adapter(AutoModelForCausalLM.from_pretrained(root / "base"), plain)
    from_checkpoint = pst.load_adapter(AutoModelForCausalLM.from_pretrained(root / "base"), plain, config=CONFIG)
    from_adapter = pst.load_adapter(AutoModelForCausalLM.from_pretrained(root / "base"), root / "run" / "checkpoint-2")
    # The sparsity comes from the schedule position in trainer_state.json: step 2 of 4.
    sparsities = {layer.sparsity for _, layer in pst.sparse_layers(from_checkpoint)}
    assert sparsities == {layer.sparsity for _, layer in pst.sparse_layers(from_adapter)}
    assert len(sparsities) == 1 and sparsities.pop() == pytest.approx(0.7)
    assert torch.equal(_logits(from_checkpoint), _logits(from_adapter))
    with pytest.raises(ValueError, match="'dense' fine-tunes every pre-trained weight"):
        pst.load_adapter(AutoModelForCausalLM.from_pretrained(root / "base"), plain, config=PSTConfig(method="dense"))


def test_resuming_the_trainer_from_a_checkpoint_still_works(trained, tmp_path):
    root, model = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run" / "checkpoint-2", run / "checkpoint-2")
    resumed = pst.sparsify(AutoModelForCausalLM.from_pretrained(root / "base"), CONFIG)
    trainer = _trainer(resumed, run)
    trainer.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert trainer.state.global_step == 4 and (run / "checkpoint-4" / ADAPTER_CONFIG).is_file()
    assert {layer.sparsity for _, layer in pst.sparse_layers(resumed)} == {0.8}
    torch.testing.assert_close(_logits(resumed), _logits(model), rtol=1e-4, atol=1e-4)


def test_bf16_mixed_precision_trainer_run_round_trips(trained, tmp_path):
    root, _ = trained
    model = pst.sparsify(AutoModelForCausalLM.from_pretrained(root / "base"), CONFIG)
    trainer = _trainer(model, tmp_path / "run", max_steps=2, bf16=True)
    trainer.train()
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 weights, bf16 products
    restored = pst.load_adapter(AutoModelForCausalLM.from_pretrained(root / "base"), tmp_path / "run" / "checkpoint-2")
    assert {layer.sparsity for _, layer in pst.sparse_layers(restored)} == {0.8}
    # The Trainer leaves its autocast wrapped around model.forward (accelerate's mixed precision):
    # the trained model computes in bf16 from now on, so the restored one is compared in bf16 too,
    # and both agree exactly in fp32 once the wrapper is taken off.
    assert hasattr(model.forward, "__wrapped__")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(_logits(restored), _logits(model))
    unwrapped = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    assert not hasattr(unwrapped.forward, "__wrapped__")
    assert torch.equal(_logits(restored), _logits(unwrapped))
