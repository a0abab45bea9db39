"""save_adapter / load_adapter: only what PST trained, restored onto a fresh base with identical logits and masks."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BertConfig, BertForSequenceClassification, GPT2LMHeadModel

import pst
from pst import PSTConfig
from pst.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tiny_decoders import causal_lm, perturb, sequence_classifier, token_batch


def _trained(model, config=None, sparsity=0.7):
    """Sparsify and make the PST tensors look trained (non-zero V, B, R, C)."""
    pst.sparsify(model, config or PSTConfig(sparsity=sparsity))
    perturb(model)
    pst.set_sparsity(model, sparsity)
    return model


def _logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


def _assert_same_masks(a, b):
    layers_a, layers_b = dict(pst.sparse_layers(a)), dict(pst.sparse_layers(b))
    assert layers_a.keys() == layers_b.keys()
    for name, layer in layers_a.items():
        assert layer.sparsity == layers_b[name].sparsity, name
        wa, wb = layer.effective_weight(), layers_b[name].effective_weight()
        assert torch.equal(wa == 0, wb == 0) and torch.equal(wa, wb), name


@pytest.fixture
def llama_base(tmp_path):
    """A 'pre-trained' tiny LLaMA on disk, as a hub model would be."""
    causal_lm("llama").save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_round_trip_restores_identical_logits_and_masks(llama_base, tmp_path):
    model = _trained(AutoModelForCausalLM.from_pretrained(llama_base))
    batch = token_batch()
    pst.save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    restored = pst.load_adapter(AutoModelForCausalLM.from_pretrained(llama_base), tmp_path / "adapter")
    assert torch.equal(_logits(restored, batch), _logits(model, batch))
    _assert_same_masks(restored, model)
    assert restored.pst_config == model.pst_config
    # Restored like a fresh sparsify: the same parameters train.
    assert {n for n, p in restored.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }


def test_adapter_holds_only_what_pst_trained(llama_base, tmp_path):
    model = _trained(AutoModelForCausalLM.from_pretrained(llama_base))
    pst.save_adapter(model, tmp_path)
    stored = load_file(tmp_path / ADAPTER_WEIGHTS)
    assert {name.rsplit(".", 1)[1] for name in stored} == set("UVABRC")
    assert sum(t.numel() for t in stored.values()) == pst.trainable_parameters(model).added
    description = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert description["format"] == "pst-adapter" and description["format_version"] == 1
    assert description["model_type"] == "llama" and description["sparsity"] == 0.7
    assert description["layers"]["model.layers.0.self_attn.k_proj"] == {"shape": [32, 64], "blocks": 1, "sparsity": 0.7}
    assert PSTConfig.from_dict(description["pst_config"]) == model.pst_config


def test_trained_head_is_saved_and_restored(tmp_path):
    sequence_classifier("qwen2").save_pretrained(tmp_path / "base")
    from transformers import AutoModelForSequenceClassification as Auto

    model = _trained(Auto.from_pretrained(tmp_path / "base"))
    with torch.no_grad():
        model.score.weight.normal_()  # as after training; a fresh base has another random head
    pst.save_adapter(model, tmp_path / "adapter")
    assert {"score.weight"} <= set(load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    restored = pst.load_adapter(Auto.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    assert torch.equal(_logits(restored, token_batch()), _logits(model, token_batch()))
    frozen_head = _trained(Auto.from_pretrained(tmp_path / "base"), PSTConfig(train_head=False))
    assert "score.weight" not in pst.adapter_state_dict(frozen_head)


@pytest.mark.parametrize("method", ["pst", "lora"])
def test_fused_gpt2_and_lora_round_trip(method, tmp_path):
    torch.manual_seed(0)
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "base")
    model = _trained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), PSTConfig(method=method, sparsity=0.5), 0.5)
    pst.save_adapter(model, tmp_path / "adapter")
    restored = pst.load_adapter(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    batch = {"input_ids": token_batch()["input_ids"] % 100}
    assert torch.equal(_logits(restored, batch), _logits(model, batch))
    assert dict(pst.sparse_layers(restored))["transformer.h.0.attn.c_attn"].V.shape == (3, 8, 32)
    _assert_same_masks(restored, model)


def test_model_held_in_bf16_round_trips_in_bf16(llama_base, tmp_path):
    model = _trained(AutoModelForCausalLM.from_pretrained(llama_base, dtype=torch.bfloat16))
    pst.save_adapter(model, tmp_path / "adapter")
    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS).values())
    restored = pst.load_adapter(AutoModelForCausalLM.from_pretrained(llama_base, dtype=torch.bfloat16), tmp_path / "adapter")
    assert all(p.dtype == torch.bfloat16 for p in restored.parameters())
    batch = token_batch()
    logits = _logits(restored, batch)
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, _logits(model, batch))
    _assert_same_masks(restored, model)


def test_fp32_adapter_loads_into_the_base_models_dtype(llama_base, tmp_path):
    pst.save_adapter(_trained(AutoModelForCausalLM.from_pretrained(llama_base)), tmp_path / "adapter")
    restored = pst.load_adapter(AutoModelForCausalLM.from_pretrained(llama_base, dtype=torch.bfloat16), tmp_path / "adapter")
    assert all(p.dtype == torch.bfloat16 for _, layer in pst.sparse_layers(restored) for p in layer.method_parameters())


def test_adapter_of_a_bert_base_width_model_is_under_5_percent_of_the_checkpoint(tmp_path):
    # BERT-base width (768, 3072, 12 heads), 2 layers; a small vocabulary, so the full checkpoint
    # is mostly encoder, as in BERT-base, where the 23 M embedding parameters are a fifth of 110 M.
    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=1000, num_hidden_layers=2, num_labels=2))
    base.save_pretrained(tmp_path / "full")
    model = pst.sparsify(base, PSTConfig())
    pst.save_adapter(model, tmp_path / "adapter")
    per_layer = 4 * 17 * (768 + 768) + 2 * 17 * (768 + 3072)
    assert pst.trainable_parameters(model).trainable == 2 * per_layer + 768 * 2 + 2
    full = (tmp_path / "full" / "model.safetensors").stat().st_size
    adapter = sum(f.stat().st_size for f in (tmp_path / "adapter").iterdir())
    assert adapter <= 0.05 * full, f"adapter {adapter:,} B is {100 * adapter / full:.1f}% of {full:,} B"


# -- bad input ---------------------------------------------------------------------------------


def test_save_needs_a_sparsified_model_of_an_adapter_method(tmp_path):
    with pytest.raises(ValueError, match="not sparsified"):
        pst.save_adapter(causal_lm("llama"), tmp_path)
    with pytest.raises(ValueError, match=r"'magnitude' fine-tunes every pre-trained weight.*merge\(model\)\.save_pretrained"):
        pst.save_adapter(pst.sparsify(causal_lm("llama"), PSTConfig(method="magnitude")), tmp_path)


def test_missing_folder_and_missing_files_are_named(llama_base, tmp_path):
    base = causal_lm("llama")
    with pytest.raises(FileNotFoundError, match="no such adapter folder"):
        pst.load_adapter(base, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{ADAPTER_CONFIG}.*{ADAPTER_WEIGHTS}"):
        pst.load_adapter(base, tmp_path / "empty")
    pst.save_adapter(_trained(causal_lm("llama")), tmp_path / "adapter")
    (tmp_path / "adapter" / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=f"no {ADAPTER_WEIGHTS}"):
        pst.load_adapter(base, tmp_path / "adapter")


def test_wrong_base_model_is_rejected_before_any_change(tmp_path):
    pst.save_adapter(_trained(causal_lm("llama")), tmp_path)
    narrow = causal_lm("llama", hidden_size=32, intermediate_size=64)
    with pytest.raises(ValueError, match=r"does not fit this base model.*q_proj is 32x32 here but 64x64 in the adapter"):
        pst.load_adapter(narrow, tmp_path)
    assert not list(pst.sparse_layers(narrow)) and getattr(narrow, "pst_config", None) is None
    deeper = causal_lm("llama", num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"layers here the adapter lacks: model\.layers\.2\."):
        pst.load_adapter(deeper, tmp_path)
    with pytest.raises(ValueError, match="trained on a 'llama' model, not 'mistral'"):
        pst.load_adapter(causal_lm("mistral"), tmp_path)
    with pytest.raises(ValueError, match="already sparsified"):
        pst.load_adapter(pst.sparsify(causal_lm("llama"), PSTConfig()), tmp_path)


def test_head_of_another_task_class_or_size_is_rejected(tmp_path):
    pst.save_adapter(_trained(sequence_classifier("llama", num_labels=3)), tmp_path)
    base = causal_lm("llama")
    with pytest.raises(ValueError, match=r"head parameters this LlamaForCausalLM lacks: score\.weight"):
        pst.load_adapter(base, tmp_path)
    assert not list(pst.sparse_layers(base))
    two_labels = sequence_classifier("llama", num_labels=2)
    with pytest.raises(ValueError, match=r"score\.weight is 2x64 here but 3x64 in the adapter.*num_labels"):
        pst.load_adapter(two_labels, tmp_path)
    assert not list(pst.sparse_layers(two_labels))


def test_config_of_another_method_or_format_is_rejected(tmp_path):
    pst.save_adapter(_trained(causal_lm("llama")), tmp_path)
    path = tmp_path / ADAPTER_CONFIG
    good = json.loads(path.read_text())
    for change, message in [
        ({"pst_config": {**good["pst_config"], "method": "movement"}}, "'movement' fine-tunes every pre-trained weight"),
        ({"pst_config": {**good["pst_config"], "rank": 4}}, r"unknown PSTConfig field\(s\) \['rank'\]"),
        ({"format_version": 99}, "format version 99; this pst reads versions <= 1"),
        ({"format": "something-else"}, "not a pst adapter config"),
        ({"layers": None}, r"lacks \['layers'\]"),
    ]:
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=message):
            pst.load_adapter(causal_lm("llama"), tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pst.load_adapter(causal_lm("llama"), tmp_path)


def test_a_peft_adapter_folder_is_recognised(tmp_path):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(causal_lm("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"peft adapter .*peft_type 'LORA'.*PeftModel\.from_pretrained"):
        pst.load_adapter(causal_lm("llama"), tmp_path)


def test_incomplete_weights_file_is_rejected(tmp_path):
    pst.save_adapter(_trained(causal_lm("llama")), tmp_path)
    tensors = load_file(tmp_path / ADAPTER_WEIGHTS)
    del tensors["model.layers.1.mlp.up_proj.B"]
    save_file(tensors, tmp_path / ADAPTER_WEIGHTS)
    with pytest.raises(ValueError, match=r"lacks tensors this adapter needs: model\.layers\.1\.mlp\.up_proj\.B"):
        pst.load_adapter(causal_lm("llama"), tmp_path)


def test_sparsity_override_and_per_layer_sparsity(tmp_path):
    model = _trained(causal_lm("llama"))
    dict(pst.sparse_layers(model))["model.layers.0.mlp.up_proj"].sparsity = 0.25
    pst.save_adapter(model, tmp_path)
    assert json.loads((tmp_path / ADAPTER_CONFIG).read_text())["sparsity"] is None
    restored = pst.load_adapter(causal_lm("llama"), tmp_path)
    _assert_same_masks(restored, model)
    overridden = pst.load_adapter(causal_lm("llama"), tmp_path, sparsity=0.9)
    assert {layer.sparsity for _, layer in pst.sparse_layers(overridden)} == {0.9}
    assert all(r["zeros"] == math.floor(0.9 * r["numel"] + 1e-6) for r in pst.sparsity_report(overridden))
