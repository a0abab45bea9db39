"""Tiny decoder models of every family with PST defaults, built from their config classes (no download).

Each family lists the projections its defaults must wrap in every block, and for fused ones the
rows of each matrix they fuse, both hand-written from the modeling code (the attention or MLP code
that splits the fused output), so a default that misses a projection or splits it wrongly fails.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers

VOCAB = 256
LAYERS = 2
LLAMA_PROJECTIONS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
# hidden 64, 4 query heads of 16 and 2 key/value heads: k and v are half the size of q (GQA).
_COMMON = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)


@dataclass(frozen=True)
class Family:
    model_type: str
    config_class: str
    projections: tuple[str, ...]  # wrapped in every block, relative to the block
    config: dict = field(default_factory=dict)  # overrides of _COMMON (None removes a key)
    blocks: str = "model.layers"  # where the blocks live in the *ForCausalLM model
    # Fused projections: (rows of each fused matrix per repetition, repetitions), e.g. Phi-3's
    # qkv_proj is q (4 heads x 16), k and v (2 heads x 16 each) once; GPT-NeoX's query_key_value
    # repeats q, k, v of 16 rows for each of its 4 heads.
    fused: dict = field(default_factory=dict)

    def build_config(self, **overrides) -> transformers.PretrainedConfig:
        values = {**_COMMON, **self.config, **overrides}
        values = {k: v for k, v in values.items() if v is not None}
        return getattr(transformers, self.config_class)(**values)

    def expected_targets(self, prefix: str | None = None) -> list[str]:
        prefix = self.blocks if prefix is None else prefix
        return [f"{prefix}.{i}.{p}" for i in range(LAYERS) for p in self.projections]


_NO_GQA = dict(num_key_value_heads=None)
_PER_HEAD_QKV = ((16, 16, 16), 4)  # 4 heads of 16, q | k | v side by side per head
_BLOOM_STYLE = dict(_NO_GQA, intermediate_size=None, num_hidden_layers=None, num_attention_heads=None,
                    n_layer=LAYERS, n_head=4)
FAMILIES = {
    f.model_type: f
    for f in (
        Family("llama", "LlamaConfig", LLAMA_PROJECTIONS),
        Family("mistral", "MistralConfig", LLAMA_PROJECTIONS),
        Family("qwen2", "Qwen2Config", LLAMA_PROJECTIONS),
        Family("qwen3", "Qwen3Config", LLAMA_PROJECTIONS, dict(head_dim=16)),
        Family("gemma", "GemmaConfig", LLAMA_PROJECTIONS, dict(head_dim=16)),
        Family("gemma2", "Gemma2Config", LLAMA_PROJECTIONS, dict(head_dim=16)),
        Family("gemma3_text", "Gemma3TextConfig", LLAMA_PROJECTIONS, dict(head_dim=16)),
        Family("olmo", "OlmoConfig", LLAMA_PROJECTIONS),
        Family("olmo2", "Olmo2Config", LLAMA_PROJECTIONS),
        Family("granite", "GraniteConfig", LLAMA_PROJECTIONS),
        Family("stablelm", "StableLmConfig", LLAMA_PROJECTIONS),
        Family("helium", "HeliumConfig", LLAMA_PROJECTIONS, dict(head_dim=16)),
        Family("cohere", "CohereConfig", LLAMA_PROJECTIONS),
        Family("smollm3", "SmolLM3Config", LLAMA_PROJECTIONS),
        Family("starcoder2", "Starcoder2Config", (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.c_fc", "mlp.c_proj",
        )),
        Family("phi", "PhiConfig", (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense", "mlp.fc1", "mlp.fc2",
        )),
        Family("opt", "OPTConfig", (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2",
        ), dict(_NO_GQA, intermediate_size=None, ffn_dim=128, word_embed_proj_dim=64), blocks="model.decoder.layers"),
        Family("gptj", "GPTJConfig", (
            "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc_in", "mlp.fc_out",
        ), dict(_NO_GQA, intermediate_size=None, hidden_size=None, num_hidden_layers=None, num_attention_heads=None,
                n_embd=64, n_inner=128, n_layer=LAYERS, n_head=4, rotary_dim=8), blocks="transformer.h"),
        Family("phi3", "Phi3Config", (
            "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj",
        ), fused={"self_attn.qkv_proj": ((64, 32, 32), 1), "mlp.gate_up_proj": ((128, 128), 1)}),
        *(Family(model_type, config_class, (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_up_proj",
            "mlp.down_proj",
        ), dict(head_dim=16), fused={"mlp.gate_up_proj": ((128, 128), 1)})
          for model_type, config_class in (("glm", "GlmConfig"), ("glm4", "Glm4Config"))),
        Family("gpt_neox", "GPTNeoXConfig", (
            "attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
        ), _NO_GQA, blocks="gpt_neox.layers", fused={"attention.query_key_value": _PER_HEAD_QKV}),
        Family("bloom", "BloomConfig", (
            "self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
        ), _BLOOM_STYLE, blocks="transformer.h", fused={"self_attention.query_key_value": _PER_HEAD_QKV}),
        Family("persimmon", "PersimmonConfig", (
            "self_attn.query_key_value", "self_attn.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
        ), _NO_GQA, fused={"self_attn.query_key_value": _PER_HEAD_QKV}),
        Family("mpt", "MptConfig", ("attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj"),
               dict(_NO_GQA, intermediate_size=None, hidden_size=None, num_hidden_layers=None, num_attention_heads=None,
                    d_model=64, n_heads=4, n_layers=LAYERS, expansion_ratio=2),
               blocks="transformer.blocks", fused={"attn.Wqkv": ((64, 64, 64), 1)}),
    )
}


def causal_lm(model_type: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = FAMILIES[model_type].build_config(**overrides)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def sequence_classifier(model_type: str, seed: int = 0, num_labels: int = 3) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = FAMILIES[model_type].build_config(num_labels=num_labels)
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


def has_sequence_classifier(model_type: str) -> bool:
    config_class = getattr(transformers, FAMILIES[model_type].config_class)
    return config_class in transformers.AutoModelForSequenceClassification._model_mapping


def token_batch(batch: int = 2, length: int = 10, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def perturb(model, std: float = 0.05, seed: int = 5) -> None:
    """Give every PST parameter non-zero values, as after some training (V = B = 0 at init)."""
    import pst

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in pst.sparse_layers(model):
            for p in layer.method_parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
