"""sparsify / set_sparsity / trainable_parameters on tiny BERT, RoBERTa and GPT-2, and bad input."""
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

import pst
from pst import PSTConfig


def test_bert_defaults_wrap_every_encoder_linear_only(tiny_model):
    model = pst.sparsify(tiny_model("bert"), PSTConfig())
    names = [name for name, _ in pst.sparse_layers(model)]
    assert len(names) == 2 * 6
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in names)


def test_gpt2_defaults_wrap_every_block_conv1d_with_fused_qkv(tiny_model):
    model = pst.sparsify(tiny_model("gpt2"), PSTConfig())
    layers = dict(pst.sparse_layers(model))
    assert len(layers) == 2 * 4
    assert layers["transformer.h.0.attn.c_attn"].blocks == 3
    assert layers["transformer.h.0.attn.c_attn"].C.shape == (3, 32)
    assert layers["transformer.h.0.mlp.c_fc"].blocks == 1
    assert model.lm_head.weight is model.transformer.wte.weight  # the tied head is untouched


def test_pst_freezes_pretrained_weights_and_trains_head(tiny_model):
    model = pst.sparsify(tiny_model("bert"), PSTConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.rsplit(".", 1)[-1] in "UVABRC" or n.startswith("classifier.") for n in trainable)
    assert {"classifier.weight", "classifier.bias"} <= trainable
    frozen_head = pst.sparsify(tiny_model("bert"), PSTConfig(train_head=False))
    assert not any(p.requires_grad for n, p in frozen_head.named_parameters() if n.startswith("classifier"))


@pytest.mark.parametrize("method", ["magnitude", "movement", "dense"])
def test_full_fine_tuning_methods_train_everything(tiny_model, method):
    model = pst.sparsify(tiny_model("roberta"), PSTConfig(method=method))
    assert all(p.requires_grad for p in model.parameters())
    assert (method == "dense") == (not list(pst.sparse_layers(model)))


def test_pst_extra_parameters_on_bert_base_match_the_paper():
    with torch.device("meta"):
        model = BertModel(BertConfig())  # BERT-base shapes, no memory used
        pst.sparsify(model, PSTConfig(head_modules=[]))
    counts = pst.trainable_parameters(model)
    assert counts.added == 2_820_096 == counts.trainable
    assert counts.total == 109_482_240 + 2_820_096


def test_trainable_parameters_counts_head_and_total(tiny_model):
    plain = tiny_model("bert")
    total_before = sum(p.numel() for p in plain.parameters())
    model = pst.sparsify(plain, PSTConfig())
    counts = pst.trainable_parameters(model)
    per_layer = 3 * 17 * (32 + 32) * 4 // 4 + 17 * (64 + 32) * 2 + 17 * (32 + 32)  # q,k,v,o + ffn in/out
    assert counts.added == 2 * per_layer
    assert counts.head == 32 * 3 + 3
    assert counts.trainable == counts.added + counts.head
    assert counts.total == total_before + counts.added
    assert 0 < counts.percent < 100 and "trainable%" in str(counts)


def test_set_sparsity_reaches_every_layer(tiny_model):
    model = pst.sparsify(tiny_model("gpt2"), PSTConfig())
    pst.set_sparsity(model, 0.75)
    assert all(layer.sparsity == 0.75 for _, layer in pst.sparse_layers(model))
    with pytest.raises(ValueError, match="sparsity must be in"):
        pst.set_sparsity(model, 1.0)


def test_target_modules_by_suffix_and_regex(tiny_model):
    by_suffix = pst.sparsify(tiny_model("bert"), PSTConfig(target_modules=["query", "value"]))
    assert len(list(pst.sparse_layers(by_suffix))) == 4
    by_regex = pst.sparsify(tiny_model("bert"), PSTConfig(target_modules=r".*layer\.0\..*dense"))
    assert len(list(pst.sparse_layers(by_regex))) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sparsity=1.0), "sparsity must be in"),
        (dict(sparsity=-0.1), "sparsity must be in"),
        (dict(weight_rank=0), "weight_rank must be an integer >= 1"),
        (dict(score_rank=0), "score_rank must be an integer >= 1"),
        (dict(method="prune-all"), "unknown method 'prune-all'"),
        (dict(target_modules=[]), "target_modules must be"),
        (dict(target_modules="("), "not a valid regular expression"),
        (dict(score_magnitude=False, score_low_rank=False, score_structured=False), "at least one"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PSTConfig(**kwargs)


def test_targets_that_match_nothing_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="matches no module"):
        pst.sparsify(tiny_model("bert"), PSTConfig(target_modules=["no_such_layer"]))


def test_unsupported_target_is_rejected(tiny_model):
    with pytest.raises(TypeError, match="unsupported module"):
        pst.sparsify(tiny_model("bert"), PSTConfig(target_modules=["word_embeddings"]))


def test_sparsify_twice_is_rejected(tiny_model):
    model = pst.sparsify(tiny_model("bert"), PSTConfig())
    with pytest.raises(ValueError, match="already sparsified"):
        pst.sparsify(model, PSTConfig())


def test_unknown_architecture_needs_explicit_targets():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no default target_modules"):
        pst.sparsify(model, PSTConfig())
    assert len(list(pst.sparse_layers(pst.sparsify(nn.Sequential(nn.Linear(4, 4)), PSTConfig(target_modules=["0"]))))) == 1


def test_a_training_step_changes_only_trainable_parameters(tiny_model, token_batch):
    model = pst.sparsify(tiny_model("bert"), PSTConfig())
    pst.set_sparsity(model, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    model.train()
    loss = model(**token_batch, labels=torch.tensor([0, 2])).loss
    loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == p.requires_grad, name


def _tiny_phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    return Phi3ForCausalLM(Phi3Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))


def _tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4))


def _check_blocks(layer, block_rows, sparsity):
    """Each block's mask is exactly the top-k of that block's own score."""
    kept, score = layer.effective_weight() != 0, layer.score()
    for rows in block_rows:
        expected_pruned = int(sparsity * len(rows) * layer.in_features + 1e-6)
        threshold = score[rows].flatten().kthvalue(expected_pruned).values
        assert int((~kept[rows]).sum()) == expected_pruned
        assert torch.equal(kept[rows], score[rows] > threshold)


def test_grouped_query_qkv_and_gate_up_of_phi3_split_by_config_attributes(token_batch):
    config = PSTConfig(target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], fused_modules={
        "qkv_proj": ["num_attention_heads", "num_key_value_heads", "num_key_value_heads"], "gate_up_proj": 2})
    model = pst.sparsify(_tiny_phi3(), config)
    pst.set_sparsity(model, 0.6)
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attention.qkv_proj.layout.sizes == (32, 16, 16) and mlp.gate_up_proj.layout.sizes == (64, 64)
    assert attention.qkv_proj.V.shape == (3, 8, 32) and attention.qkv_proj.U.shape == (64, 8)
    _check_blocks(attention.qkv_proj, [torch.arange(0, 32), torch.arange(32, 48), torch.arange(48, 64)], 0.6)
    _check_blocks(mlp.gate_up_proj, [torch.arange(0, 64), torch.arange(64, 128)], 0.6)
    model(**token_batch, labels=token_batch["input_ids"]).loss.backward()
    assert attention.qkv_proj.C.grad.shape == (3, 32)


def test_per_head_interleaved_qkv_of_gpt_neox(token_batch):
    spec = {"blocks": 3, "interleave": "num_attention_heads"}
    config = PSTConfig(target_modules=["query_key_value", "dense"], fused_modules={"query_key_value": spec})
    model = pst.sparsify(_tiny_neox(), config)
    pst.set_sparsity(model, 0.7)
    layer = model.gpt_neox.layers[1].attention.query_key_value
    assert layer.layout.sizes == (8, 8, 8) and layer.layout.repeats == 4
    # GPT-NeoX views the output as (heads, 3 * head_dim) and splits the last axis into q, k, v.
    heads = torch.arange(96).view(4, 3, 8)
    _check_blocks(layer, [heads[:, j].flatten() for j in range(3)], 0.7)
    model(**token_batch, labels=token_batch["input_ids"]).loss.backward()
    assert layer.V.grad.shape == (3, 8, 32)


def test_fused_spec_errors_name_the_module():
    config = PSTConfig(target_modules=["qkv_proj"], fused_modules={"qkv_proj": ["num_attention_heads", "num_kv"]})
    with pytest.raises(ValueError, match=r"cannot sparsify model.layers.0.self_attn.qkv_proj: .*'num_kv' must name"):
        pst.sparsify(_tiny_phi3(), config)
    with pytest.raises(ValueError, match=r"query_key_value: 96 output rows cannot be split into 5 interleaved"):
        pst.sparsify(_tiny_neox(), PSTConfig(target_modules=["query_key_value"],
                                             fused_modules={"query_key_value": {"blocks": 3, "interleave": 5}}))
