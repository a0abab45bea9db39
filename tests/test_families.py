"""PST on the decoder families people fine-tune, with no target_modules: tiny models built from config.

Per family: the defaults wrap exactly every block projection (never embeddings or the LM head),
only the added parameters (+ task head) train, an fp32 step reaches every PST matrix and prunes
exactly, and the merged model reloads with plain transformers with the same logits.
"""
import math

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

import pst
from pst import PSTConfig
from tiny_decoders import FAMILIES, causal_lm, has_sequence_classifier, perturb, sequence_classifier, token_batch

FAMILY_NAMES = sorted(FAMILIES)
AUTOCAST_XFAIL = pytest.mark.xfail(
    strict=False, reason="needs the autocast-aware layer (bf16 autocast crashes in SparseLinearFunction.backward)"
)


def _rank8_parameters(layer) -> int:
    """U, V, A, B (rank 8 each), R and C: 17 (n + k) for an unfused matrix."""
    return 17 * (layer.out_features + layer.in_features)


def _causal_step(model, batch):
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return loss


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_defaults_wrap_every_block_projection_and_nothing_else(model_type):
    family = FAMILIES[model_type]
    model = pst.sparsify(causal_lm(model_type), PSTConfig())
    wrapped = [name for name, _ in pst.sparse_layers(model)]
    assert sorted(wrapped) == sorted(family.expected_targets())
    # Every other Linear is the LM head or a fused projection deliberately left dense.
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    leftover = [n for n in plain if n != "lm_head" and not n.endswith(family.dense)]
    assert leftover == [], f"unwrapped projections: {leftover}"
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, pst.SparseLayer)
    assert not any("embed" in n or "wte" in n for n in wrapped)
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_bare_backbone_gets_the_same_targets(model_type):
    family = FAMILIES[model_type]
    torch.manual_seed(0)
    backbone = pst.sparsify(AutoModel.from_config(family.build_config()), PSTConfig())
    prefix = family.blocks.split(".", 1)[1]  # model.layers -> layers, transformer.h -> h
    assert sorted(n for n, _ in pst.sparse_layers(backbone)) == sorted(family.expected_targets(prefix))


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_causal_lm_trains_only_the_added_parameters(model_type):
    model = pst.sparsify(causal_lm(model_type), PSTConfig())
    counts = pst.trainable_parameters(model)
    expected = sum(_rank8_parameters(layer) for _, layer in pst.sparse_layers(model))
    assert counts.added == expected == counts.trainable and counts.head == 0
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set("UVABRC")


@pytest.mark.parametrize("model_type", [t for t in FAMILY_NAMES if has_sequence_classifier(t)])
def test_sequence_classifier_trains_its_score_head(model_type):
    model = pst.sparsify(sequence_classifier(model_type), PSTConfig())
    counts = pst.trainable_parameters(model)
    head = sum(p.numel() for p in model.score.parameters())
    assert counts.head == head and counts.trainable == counts.added + head
    assert all(p.requires_grad for p in model.score.parameters())
    assert sorted(n for n, _ in pst.sparse_layers(model)) == sorted(FAMILIES[model_type].expected_targets())


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_fp32_training_step_reaches_every_pst_matrix_and_prunes_exactly(model_type):
    model = pst.sparsify(causal_lm(model_type), PSTConfig())
    perturb(model)  # at init V = B = 0, so U and A would get zero gradients
    pst.set_sparsity(model, 0.5)
    batch = token_batch()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    first = _causal_step(model, batch)
    for name, layer in pst.sparse_layers(model):
        for symbol in "UVABRC":
            grad = getattr(layer, symbol).grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, f"{name}.{symbol}"
        assert layer.weight.grad is None
    for _ in range(2):
        optimizer.step()
        optimizer.zero_grad()
        last = _causal_step(model, batch)
    assert last.item() < first.item()
    for row in pst.sparsity_report(model):
        assert row["zeros"] == math.floor(0.5 * row["numel"]), row["name"]


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_merge_gives_a_plain_model_that_reloads_with_identical_logits(model_type, tmp_path):
    model = pst.sparsify(causal_lm(model_type), PSTConfig(sparsity=0.7))
    perturb(model)
    pst.set_sparsity(model, 0.7)
    batch = token_batch()
    with torch.no_grad():
        wrapped = model(**batch).logits
        merged = pst.merge(model)
        torch.testing.assert_close(merged(**batch).logits, wrapped, rtol=0, atol=1e-5)
    assert not list(pst.sparse_layers(merged))
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, wrapped, rtol=0, atol=1e-5)
    report = pst.sparsity_report(reloaded)
    assert len(report) == len(FAMILIES[model_type].expected_targets())
    assert all(row["zeros"] == math.floor(0.7 * row["numel"] + 1e-6) for row in report)


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_model_held_in_bf16_takes_a_training_step(model_type):
    model = pst.sparsify(causal_lm(model_type).to(torch.bfloat16), PSTConfig())
    perturb(model)
    pst.set_sparsity(model, 0.5)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    loss = _causal_step(model, token_batch())
    assert torch.isfinite(loss)
    for name, layer in pst.sparse_layers(model):
        assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in layer.method_parameters()), name


@AUTOCAST_XFAIL
@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_bf16_autocast_training_step(model_type):
    model = pst.sparsify(causal_lm(model_type), PSTConfig())
    perturb(model)
    pst.set_sparsity(model, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**token_batch(), labels=token_batch()["input_ids"]).loss
    loss.backward()
    for name, layer in pst.sparse_layers(model):
        for p in layer.method_parameters():
            assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all(), name


def test_model_type_without_defaults_names_the_known_ones():
    from transformers import MixtralConfig, MixtralForCausalLM

    model = MixtralForCausalLM(MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                             num_local_experts=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    with pytest.raises(ValueError, match=r"no default target_modules for model_type 'mixtral'.*'llama'.*target_modules="):
        pst.sparsify(model, PSTConfig())
    # Explicit targets still work for such a model (here its attention projections).
    pst.sparsify(model, PSTConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert len(list(pst.sparse_layers(model))) == 4


def test_table_entries_do_not_share_mutable_values():
    entries = [e for t, e in pst.ARCHITECTURE_DEFAULTS.items() if t in FAMILIES]
    assert len({id(e["head_modules"]) for e in entries}) == len(entries)
    assert len({id(e) for e in entries}) == len(entries)
