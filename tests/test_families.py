"""PST on the decoder families people fine-tune, with no target_modules: tiny models built from config.

Per family: the defaults wrap exactly every block projection (never embeddings or the LM head),
fused projections get one mask and one V, B, C per matrix they fuse, split as the modeling code
splits them; only the added parameters (+ task head) train; fp32, bf16 and bf16-autocast steps
reach every PST matrix and prune exactly, block by block; the merged model reloads with plain
transformers with the same logits.
"""
import copy
import math

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

import pst
from pst import PSTConfig
from tiny_decoders import FAMILIES, causal_lm, has_sequence_classifier, perturb, sequence_classifier, token_batch

FAMILY_NAMES = sorted(FAMILIES)
FUSED_FAMILIES = sorted(t for t, family in FAMILIES.items() if family.fused)
#: What reads a fused projection's output: the attention's output projection (its input is
#: softmax(q k^T) v per head) or the MLP's down projection (its input is act(gate) * up).
CONSUMERS = {"qkv_proj": "o_proj", "query_key_value": "dense", "Wqkv": "out_proj", "gate_up_proj": "down_proj"}


def _rank8_parameters(layer) -> int:
    """U, A (rank 8) and R per row, V, B (rank 8) and C per block: 17 (n + blocks k)."""
    return 17 * (layer.out_features + layer.blocks * layer.in_features)


def _assert_exact_blocks(report, sparsity):
    """Every matrix a module holds (each block of a fused one) has exactly floor(p n k) zeros."""
    for row in report:
        expected = [math.floor(sparsity * numel + 1e-6) for numel in row["block_numel"]]
        assert row["block_zeros"] == expected, row["name"]
        assert sum(row["block_numel"]) == row["numel"]


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
    # Every other Linear is the LM head.
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert plain == ["lm_head"], f"unwrapped projections: {plain}"
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


@pytest.mark.parametrize("model_type", FUSED_FAMILIES)
def test_fused_projections_get_one_mask_and_one_v_b_c_per_matrix(model_type):
    family = FAMILIES[model_type]
    model = pst.sparsify(causal_lm(model_type), PSTConfig())
    for name, layer in pst.sparse_layers(model):
        projection = name.removeprefix(family.blocks + ".").split(".", 1)[1]
        if projection not in family.fused:
            assert layer.blocks == 1 and layer.V.dim() == 2, name
            continue
        sizes, repeats = family.fused[projection]  # the q, k, v (or gate, up) sizes of the modeling code
        assert (layer.layout.sizes, layer.layout.repeats) == (sizes, repeats), name
        assert layer.V.shape[0] == layer.B.shape[0] == layer.C.shape[0] == len(sizes), name
        assert layer.U.shape[0] == layer.A.shape[0] == layer.R.shape[0] == layer.out_features == sum(sizes) * repeats


def _consumer_input(model, fused: str, rows: torch.Tensor | None) -> torch.Tensor:
    """What the consumer of ``fused`` (block 0) receives when the given rows of ``fused`` output zero."""
    model = copy.deepcopy(model)
    module = model.get_submodule(fused)
    with torch.no_grad():
        if rows is not None:
            module.weight[rows] = 0
            if module.bias is not None:
                module.bias[rows] = 0
    parent, _, leaf = fused.rpartition(".")
    captured = []
    consumer = model.get_submodule(f"{parent}.{CONSUMERS[leaf]}")
    consumer.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    with torch.no_grad():
        model(**token_batch())
    return captured[0]


@pytest.mark.parametrize("model_type", FUSED_FAMILIES)
def test_fused_layouts_split_as_the_modeling_code_does(model_type):
    """Zero the rows the layout calls v: the attention output vanishes; zero those it calls q or k:
    attention becomes the same uniform (or position-biased) average. Zero gate or up: act(gate) * up
    vanishes. A layout that put any row in the wrong block would leave something behind."""
    family = FAMILIES[model_type]
    model = causal_lm(model_type)
    defaults = PSTConfig().resolved_for(model_type).fused_modules
    for projection in family.fused:
        name = f"{family.blocks}.0.{projection}"
        rows = model.get_submodule(name).weight.shape[0]
        layout = pst.surgery.block_layout(name, rows, defaults, model.config)
        block = layout.block_index(torch.device("cpu"))
        intact = _consumer_input(model, name, None)
        assert intact.abs().amax() > 1e-3, name
        if layout.num_blocks == 2:  # gate | up
            for j in range(2):
                assert torch.equal(_consumer_input(model, name, block == j), torch.zeros_like(intact)), (name, j)
            continue
        assert torch.equal(_consumer_input(model, name, block == 2), torch.zeros_like(intact)), name
        no_scores = _consumer_input(model, name, block <= 1)  # q = k = 0: every score is 0 (plus ALiBi)
        assert (no_scores - intact).abs().amax() > 1e-4, name
        for j in (0, 1):
            torch.testing.assert_close(_consumer_input(model, name, block == j), no_scores, rtol=0, atol=1e-6)


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
    _assert_exact_blocks(pst.sparsity_report(model), 0.5)


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
    report = pst.sparsity_report(reloaded)  # blocks resolved from the architecture's defaults and config
    assert sorted(row["name"] for row in report) == sorted(FAMILIES[model_type].expected_targets())
    _assert_exact_blocks(report, 0.7)


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_model_held_in_bf16_takes_a_training_step(model_type):
    model = pst.sparsify(causal_lm(model_type).to(torch.bfloat16), PSTConfig())
    perturb(model)
    pst.set_sparsity(model, 0.5)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    loss = _causal_step(model, token_batch())
    assert torch.isfinite(loss)
    for name, layer in pst.sparse_layers(model):
        for p in layer.method_parameters():
            assert p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    _assert_exact_blocks(pst.sparsity_report(model), 0.5)


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_bf16_autocast_training_step(model_type):
    """The way people fine-tune these models: fp32 parameters, bf16 matrix products."""
    model = pst.sparsify(causal_lm(model_type), PSTConfig())
    perturb(model)
    pst.set_sparsity(model, 0.5)
    batch = token_batch()
    with torch.no_grad():
        fp32_loss = model(**batch, labels=batch["input_ids"]).loss
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    masks = {name: layer.effective_weight() == 0 for name, layer in pst.sparse_layers(model)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _causal_step(model, batch)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(fp32_loss.item(), rel=2e-2)
    for name, layer in pst.sparse_layers(model):
        for symbol in "UVABRC":
            p = getattr(layer, symbol)
            assert p.dtype == p.grad.dtype == torch.float32, f"{name}.{symbol}"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}.{symbol}"
    optimizer.step()
    _assert_exact_blocks(pst.sparsity_report(model), 0.5)
    moved = [name for name, layer in pst.sparse_layers(model) if not torch.equal(layer.effective_weight() == 0, masks[name])]
    assert moved, "one optimizer step moved no mask: the score gradients did not arrive"


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
    for key in ("head_modules", "fused_modules"):
        assert len({id(e[key]) for e in entries}) == len(entries), key
    assert len({id(e) for e in entries}) == len(entries)
    specs = [spec for e in entries for spec in e["fused_modules"].values() if not isinstance(spec, int)]
    assert len({id(spec) for spec in specs}) == len(specs)
    # A resolved config owns its specs: editing one leaves the table as it was.
    resolved = PSTConfig().resolved_for("phi3")
    resolved.fused_modules["qkv_proj"].append("num_key_value_heads")
    assert len(pst.ARCHITECTURE_DEFAULTS["phi3"]["fused_modules"]["qkv_proj"]) == 3
