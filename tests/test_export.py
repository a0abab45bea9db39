"""merge, plain-transformers reload, compressed checkpoints and the sparsity report."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import pst
from pst import PSTConfig
from tiny_decoders import causal_lm, perturb

LOADERS = {"bert": AutoModelForSequenceClassification, "roberta": AutoModelForSequenceClassification,
           "gpt2": AutoModelForCausalLM}


def _perturb(model):
    """Give every PST parameter non-zero values, as after some training."""
    torch.manual_seed(5)
    with torch.no_grad():
        for _, layer in pst.sparse_layers(model):
            for p in layer.method_parameters():
                p.normal_(std=0.05)


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2"])
def test_wrap_then_merge_at_sparsity_zero_keeps_logits(tiny_model, token_batch, arch):
    plain = tiny_model(arch)
    with torch.no_grad():
        expected = plain(**token_batch).logits
    model = pst.sparsify(plain, PSTConfig())
    with torch.no_grad():
        wrapped = model(**token_batch).logits
        merged = pst.merge(model)(**token_batch).logits
    torch.testing.assert_close(wrapped, expected)
    torch.testing.assert_close(merged, expected)
    assert not list(pst.sparse_layers(model)) and not hasattr(model, "pst_config")
    assert not any(n.rsplit(".", 1)[-1] in {"U", "V", "A", "B", "R", "C"} for n, _ in model.named_parameters())


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2"])
def test_merged_sparse_model_reloads_with_plain_transformers(tiny_model, token_batch, arch, tmp_path):
    model = pst.sparsify(tiny_model(arch), PSTConfig(sparsity=0.7))
    _perturb(model)
    pst.set_sparsity(model, 0.7)
    with torch.no_grad():
        wrapped = model(**token_batch).logits
    pst.merge(model).save_pretrained(tmp_path)
    reloaded = LOADERS[arch].from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**token_batch).logits, wrapped, rtol=1e-5, atol=1e-5)
    report = pst.sparsity_report(reloaded)
    assert report and all(r["zeros"] == sum(math.floor(0.7 * r["numel"] / len(r["block_sparsity"]) + 1e-6)
                                            for _ in r["block_sparsity"]) for r in report)


def test_sparsity_report_measures_each_fused_block(tiny_model):
    model = pst.sparsify(tiny_model("gpt2"), PSTConfig())
    pst.set_sparsity(model, 0.9)
    report = {r["name"]: r for r in pst.sparsity_report(model)}
    c_attn = report["transformer.h.1.attn.c_attn"]
    assert c_attn["shape"] == [96, 32] and len(c_attn["block_sparsity"]) == 3
    assert all(s == pytest.approx(math.floor(0.9 * 1024) / 1024) for s in c_attn["block_sparsity"])


# The value rows of layer 0's fused q/k/v, read off the attention code: Phi-3 (grouped-query)
# keeps q (4 heads x 16 rows), k and v (2 x 16 each) one after the other; GPT-NeoX views the
# rows as (4 heads, 3 x 16), so v is the last 16 rows of every head's 48.
VALUE_ROWS = {
    "phi3": ("model.layers.0.self_attn.qkv_proj", list(range(96, 128)), [64 * 64, 32 * 64, 32 * 64]),
    "gpt_neox": ("gpt_neox.layers.0.attention.query_key_value", [h * 48 + 32 + i for h in range(4) for i in range(16)],
                 [64 * 64] * 3),
}


@pytest.mark.parametrize("model_type", sorted(VALUE_ROWS))
def test_sparsity_report_follows_unequal_and_interleaved_blocks(model_type, tmp_path):
    name, value_rows, block_numel = VALUE_ROWS[model_type]
    model = causal_lm(model_type)
    with torch.no_grad():
        model.get_submodule(name).weight[value_rows] = 0  # v all zero, q and k untouched
    plain = {r["name"]: r for r in pst.sparsity_report(model)}[name]  # layout from the defaults and config
    wrapped = {r["name"]: r for r in pst.sparsity_report(pst.sparsify(model, PSTConfig()))}[name]  # layer.layout
    for row in (plain, wrapped):
        assert row["block_numel"] == block_numel and row["block_sparsity"] == [0.0, 0.0, 1.0]
        assert row["block_zeros"] == [0, 0, block_numel[2]]
    # At a sparsity, wrapped and merged: every block holds exactly floor(p n k) zeros.
    perturb(model)
    pst.set_sparsity(model, 0.6)
    for reported in (pst.sparsity_report(model), pst.sparsity_report(pst.merge(model))):
        row = {r["name"]: r for r in reported}[name]
        assert row["block_zeros"] == [math.floor(0.6 * numel) for numel in block_numel]


def test_sparsity_report_names_a_module_whose_blocks_do_not_fit():
    model = causal_lm("phi3")
    with pytest.raises(ValueError, match=r"cannot measure model.layers.0.self_attn.qkv_proj block by block: .*proportions"):
        pst.sparsity_report(model, fused_modules={"qkv_proj": [1, 1, 1]})
    rows = pst.sparsity_report(model, target_modules=["qkv_proj"], fused_modules={})
    assert [len(r["block_zeros"]) for r in rows] == [1, 1]  # explicitly not split


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_compressed_round_trip_is_identical_and_small(tiny_model, token_batch, arch, tmp_path):
    model = pst.sparsify(tiny_model(arch), PSTConfig(sparsity=0.9))
    _perturb(model)
    pst.set_sparsity(model, 0.9)
    merged = pst.merge(model)
    merged.save_pretrained(tmp_path / "dense")
    path = pst.save_compressed(merged, tmp_path / "sparse")
    restored = pst.load_compressed(tmp_path / "sparse")
    for (name, a), (_, b) in zip(merged.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        torch.testing.assert_close(restored(**token_batch).logits, merged.eval()(**token_batch).logits, rtol=0, atol=0)
    # Size bound on the sparsified matrices: values + bitmask <= 15% of their dense bytes.
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        packed = sum(handle.get_tensor(k).numel() * handle.get_tensor(k).element_size()
                     for k in handle.keys() if k.endswith((".values", ".bitmask")))
    dense_bytes = sum(r["numel"] * 4 for r in pst.sparsity_report(restored))
    assert packed <= 0.15 * dense_bytes


def test_compressed_save_refuses_a_wrapped_model(tiny_model, tmp_path):
    model = pst.sparsify(tiny_model("bert"), PSTConfig())
    with pytest.raises(ValueError, match="merge"):
        pst.save_compressed(model, tmp_path)


def test_load_compressed_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.sparse.safetensors"):
        pst.load_compressed(tmp_path)


def test_merge_gives_back_the_trainable_flags_sparsify_took(tiny_model):
    """PST freezes the pre-trained weights; merge must not leave them frozen, nor unfreeze what the user froze."""
    model = tiny_model("bert")
    frozen_by_user = "bert.embeddings.word_embeddings.weight"
    model.get_parameter(frozen_by_user).requires_grad_(False)
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    pst.sparsify(model, PSTConfig(method="pst"))
    assert not model.get_parameter("bert.encoder.layer.0.attention.self.query.weight").requires_grad
    pst.merge(model)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert not before[frozen_by_user] and sum(before.values()) == len(before) - 1
