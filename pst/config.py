"""``PSTConfig``: every setting of a sparse fine-tuning run, validated in one place."""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass

from .fused import validate_spec
from .masking import UNSTRUCTURED, max_sparsity, parse_pattern, validate_sparsity
from .methods import MethodSpec, get_method

#: How a mask can be kept between passes (``PSTConfig.mask_storage``).
MASK_STORAGES = ("bits", "threshold")

#: The paper's target sparsity, the default of an unstructured pattern.
DEFAULT_SPARSITY = 0.9

#: Every nn.Linear inside the encoder (Q, K, V, attention output, FFN in and out);
#: never embeddings, pooler or classifier.
_BERT_LIKE_TARGETS = (
    r"(.*\.)?encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
#: Every Conv1D inside the transformer blocks; never the embeddings or the tied LM head.
_GPT2_TARGETS = r"(.*\.)?h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj))"


def _decoder_targets(blocks: str, projections: str) -> str:
    """A regex for the ``projections`` of every numbered block ``<blocks>.<i>.`` of a decoder.

    Anchoring on the block list keeps embeddings, the final norm and the LM head out, whatever
    the task class around the backbone (``model.``, ``transformer.``, ``gpt_neox.``, none).
    """
    return rf"(.*\.)?{blocks}\.\d+\.({projections})"


#: LLaMA and its descendants: q, k, v, o (k and v smaller under grouped-query attention)
#: and the gated MLP's gate, up, down, all separate nn.Linear.
_LLAMA_TARGETS = _decoder_targets("layers", r"self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj")
#: The task heads of the decoder families (``Generic*`` classes of transformers 5): sequence and
#: token classification share ``score``, question answering has ``qa_outputs``; the LM head is never
#: a head (tied to the embeddings or frozen).
_DECODER_HEADS = ("score", "qa_outputs")


def _decoder(target_modules: str, head_modules=_DECODER_HEADS, fused_modules: dict | None = None) -> dict:
    """One table entry, with its own lists and dicts (entries must not share mutable values)."""
    return {"target_modules": target_modules, "head_modules": list(head_modules),
            "fused_modules": copy.deepcopy(fused_modules or {})}


#: Heads of the families whose token classifier is ``classifier`` (GPT-NeoX, Bloom, MPT).
_DECODER_HEADS_WITH_CLASSIFIER = ("score", "classifier", "qa_outputs")
#: q, k and v of every head side by side: the rows are (heads, 3, head_dim), as the attention
#: code views them (GPT-NeoX, Bloom, Persimmon).
_PER_HEAD_QKV = {"blocks": 3, "interleave": "num_attention_heads"}
#: q, then k, then v, with k and v smaller under grouped-query attention (Phi-3's ``qkv_proj``).
_GQA_QKV = ["num_attention_heads", "num_key_value_heads", "num_key_value_heads"]

#: Per-architecture defaults: which modules to sparsify, which modules form the task head,
#: and which modules fuse several matrices that the paper's model keeps apart (``pst.fused``;
#: each layout checked against the attention or MLP code that splits the fused output).
#: Left out because their fused q/k/v layout depends on config flags that a static default cannot
#: follow: Falcon (``new_decoder_architecture``, ``multi_query``) and GPT-BigCode (``multi_query``);
#: pass ``target_modules`` and ``fused_modules`` for them.
ARCHITECTURE_DEFAULTS: dict[str, dict] = {
    "bert": {"target_modules": _BERT_LIKE_TARGETS, "head_modules": ["classifier"], "fused_modules": {}},
    "roberta": {"target_modules": _BERT_LIKE_TARGETS, "head_modules": ["classifier"], "fused_modules": {}},
    "gpt2": {"target_modules": _GPT2_TARGETS, "head_modules": ["score"], "fused_modules": {"c_attn": 3}},
    **{
        model_type: _decoder(_LLAMA_TARGETS)
        for model_type in (
            "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
            "olmo", "olmo2", "granite", "stablelm", "helium", "cohere", "smollm3",
        )
    },
    "starcoder2": _decoder(_decoder_targets("layers", r"self_attn\.(q|k|v|o)_proj|mlp\.(c_fc|c_proj)")),
    "phi": _decoder(_decoder_targets("layers", r"self_attn\.((q|k|v)_proj|dense)|mlp\.(fc1|fc2)")),  # phi-1, 1.5, 2
    # OPT's project_in / project_out (OPT-350m) resize the embeddings: not block projections.
    "opt": _decoder(_decoder_targets("layers", r"self_attn\.(q|k|v|out)_proj|fc1|fc2")),
    "gptj": _decoder(_decoder_targets("h", r"attn\.(q|k|v|out)_proj|mlp\.(fc_in|fc_out)")),
    # Phi-3 (and Phi-4-mini): qkv_proj is q | k | v (grouped-query sizes), gate_up_proj is gate | up.
    "phi3": _decoder(
        _decoder_targets("layers", r"self_attn\.(qkv|o)_proj|mlp\.(gate_up|down)_proj"),
        fused_modules={"qkv_proj": _GQA_QKV, "gate_up_proj": 2},
    ),
    # GLM and GLM-4: separate q, k, v; the MLP's gate_up_proj is gate | up.
    **{
        model_type: _decoder(
            _decoder_targets("layers", r"self_attn\.(q|k|v|o)_proj|mlp\.(gate_up|down)_proj"),
            fused_modules={"gate_up_proj": 2},
        )
        for model_type in ("glm", "glm4")
    },
    "gpt_neox": _decoder(
        _decoder_targets("layers", r"attention\.(query_key_value|dense)|mlp\.(dense_h_to_4h|dense_4h_to_h)"),
        head_modules=_DECODER_HEADS_WITH_CLASSIFIER, fused_modules={"query_key_value": _PER_HEAD_QKV},
    ),
    "bloom": _decoder(
        _decoder_targets("h", r"self_attention\.(query_key_value|dense)|mlp\.(dense_h_to_4h|dense_4h_to_h)"),
        head_modules=_DECODER_HEADS_WITH_CLASSIFIER, fused_modules={"query_key_value": _PER_HEAD_QKV},
    ),
    "persimmon": _decoder(
        _decoder_targets("layers", r"self_attn\.(query_key_value|dense)|mlp\.(dense_h_to_4h|dense_4h_to_h)"),
        fused_modules={"query_key_value": _PER_HEAD_QKV},
    ),
    # MPT: Wqkv is q | k | v of equal sizes (chunk(3)).
    "mpt": _decoder(
        _decoder_targets("blocks", r"attn\.(Wqkv|out_proj)|ffn\.(up|down)_proj"),
        head_modules=_DECODER_HEADS_WITH_CLASSIFIER, fused_modules={"Wqkv": 3},
    ),
}


@dataclass
class PSTConfig:
    """Settings of one sparse fine-tuning method, peft-style: every field below is documented.

    The defaults are the paper's (docs/method.md): ranks r1 = r2 = 8, beta = alpha1 = alpha2 = 1,
    target sparsity 90%, cubic schedule with a 10% dense warm-up and a 30% cool-down at the
    target. For a weight W (n x k): W' = W + beta U V, S = |W'| + alpha1 A B + alpha2 (R 1^T + 1 C^T),
    and the mask M zeroes the floor(p n k) smallest entries of S.
    """

    #: Which method runs: "pst" (the paper's), or a baseline: "magnitude" (MaP), "movement" (MvP),
    #: "lora" (low-rank update, no pruning), "dense" (full fine-tuning, no pruning). See ``pst.methods``.
    method: str = "pst"
    #: Target sparsity p_T in [0, 1): the fraction of each matrix's weights zeroed at the end.
    #: ``None``: the paper's 0.9 for the unstructured pattern, 1 - N/M for an N:M pattern.
    sparsity: float | None = None
    #: Sparsity pattern of M: "unstructured" (the paper's), or "N:M" (e.g. "2:4") to keep N of
    #: every M consecutive weights along the input dimension, chosen by the same score S.
    #: Along the schedule the M - N lowest-scored weights of each group are the candidates
    #: and the floor(p n k) lowest-scored candidates are pruned, so the count stays exact and
    #: at p = 1 - N/M every group holds exactly M - N zeros; ``sparsity`` is at most 1 - N/M.
    #: Ignored, like ``sparsity``, by methods that do not prune.
    pattern: str = UNSTRUCTURED
    #: Keep the zeros the base weights already hold (a checkpoint pruned by SparseGPT, Wanda,
    #: llm-compressor or PST; unstructured or N:M): every zero of W stays zero after training and
    #: ``merge``. The mask is read from W itself whenever it is rebuilt (W is frozen), never stored,
    #: so an adapter holds none. ``sparsity`` then defaults to 0: the mask is exactly the base's
    #: support, no score term exists and only U, V (and the task head) train. A ``sparsity`` above
    #: the base's own prunes further, by the score S with the base's zeros pruned first:
    #: max(floor(p n k), base zeros) per matrix (with an N:M ``pattern``, of its candidates).
    #: Method "pst" only.
    keep_zeros: bool = False
    #: How each matrix's mask is kept between its selection (once per optimizer step) and the
    #: passes that apply it. "bits": one bit per weight, rewritten in place. "threshold": no
    #: per-weight state at all, two numbers per matrix (the score at the pruned count and where
    #: its ties stop being pruned); every forward and backward pass recomputes S a chunk of rows
    #: at a time and compares it, giving the same mask. For LLMs whose memory is tight (the bits
    #: are 1/8 byte per sparsified weight, 0.8 GB for LLaMA-7B), at the cost of one more score
    #: computation per pass. "threshold" needs an unstructured pattern, no keep_zeros and
    #: unfused modules, runs the torch reference path (not the Triton kernels) and eagerly (not
    #: under torch.compile or a capturable schedule).
    mask_storage: str = "bits"
    #: r1, the rank of the weight update U V (U: n x r1, V: r1 x k). The official code's ``weight_rank``.
    weight_rank: int = 8
    #: r2, the rank of the data-driven score term A B (A: n x r2, B: r2 x k). The official code's ``mask_rank``.
    score_rank: int = 8
    #: beta, the scale of the weight update: W' = W + beta U V.
    beta: float = 1.0
    #: alpha1, the weight of the low-rank score term A B in S.
    alpha1: float = 1.0
    #: alpha2, the weight of the structured score term R 1^T + 1 C^T (per row, per column) in S.
    alpha2: float = 1.0
    #: Ablation switch: keep the data-free term |W'| in S.
    score_magnitude: bool = True
    #: Ablation switch: keep the low-rank term alpha1 A B in S.
    score_low_rank: bool = True
    #: Ablation switch: keep the structured term alpha2 (R 1^T + 1 C^T) in S.
    score_structured: bool = True
    #: Which modules to sparsify: module-name suffixes (``["query", "value"]``, as in peft) or
    #: one regular expression that must match a full module name. ``None``: the architecture's
    #: default (``ARCHITECTURE_DEFAULTS``); embeddings, pooler and heads are never targets.
    target_modules: list[str] | str | None = None
    #: Modules of the task head (e.g. BERT's ``classifier``), trained when ``train_head``.
    #: ``None``: the architecture's default.
    head_modules: list[str] | None = None
    #: Whether the task head trains. The official GLUE script hands its optimizer only the PST
    #: parameters, so its randomly initialised classifier never trains; we take that for an
    #: accident and train the head (also fair to the baselines). False reproduces the official script.
    train_head: bool = True
    #: Modules that fuse several matrices the paper's model keeps apart, by name suffix, with
    #: how their output rows split (``pst.fused``): a number of equal blocks (GPT-2
    #: ``{"c_attn": 3}``: q, k, v), a list of relative block sizes, ints or model config
    #: attribute names (Phi-3 ``{"qkv_proj": ["num_attention_heads", "num_key_value_heads",
    #: "num_key_value_heads"]}``), or ``{"blocks": ..., "interleave": ...}`` for blocks
    #: interleaved per head (GPT-NeoX ``{"query_key_value": {"blocks": 3, "interleave":
    #: "num_attention_heads"}}``). Each block gets its own mask and its own V, B and C.
    #: ``None``: the architecture's default.
    fused_modules: dict[str, int | list | dict] | None = None
    #: w_i, the fraction of training steps run dense before pruning starts (sparsity p_0).
    warmup_fraction: float = 0.1
    #: w_f, the fraction of the last training steps held at the target sparsity p_T.
    cooldown_fraction: float = 0.3
    #: p_0, the sparsity during the warm-up, from which the cubic schedule rises to p_T.
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        if self.sparsity is None and self.keep_zeros is True:  # exactly the base's zeros
            self.sparsity = 0.0
        if self.sparsity is None:
            pattern = parse_pattern(self.pattern)
            self.sparsity = DEFAULT_SPARSITY if pattern is None else max_sparsity(pattern)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        spec = self.spec
        pattern = parse_pattern(self.pattern)  # checked for every method, binding only for pruning ones
        if not spec.prunes:
            pattern = None
        for name in ("sparsity", "initial_sparsity"):
            validate_sparsity(getattr(self, name), pattern, name)
        for name in ("weight_rank", "score_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_fraction", "cooldown_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
        if self.warmup_fraction + self.cooldown_fraction > 1.0:
            raise ValueError(
                f"warmup_fraction + cooldown_fraction must be <= 1, got {self.warmup_fraction} + {self.cooldown_fraction}"
            )
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as error:
                raise ValueError(f"target_modules is not a valid regular expression: {error}") from None
        elif self.target_modules is not None and (
            not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules)
        ):
            raise ValueError(f"target_modules must be a non-empty list of names or a regex, got {self.target_modules!r}")
        if not isinstance(self.keep_zeros, bool):
            raise ValueError(f"keep_zeros must be True or False, got {self.keep_zeros!r}")
        if self.keep_zeros and spec.name != "pst":
            raise ValueError(
                f"keep_zeros needs method='pst' (a frozen base whose zeros stay zero), got method={self.method!r}; "
                "PSTConfig(method='pst', keep_zeros=True) trains only U and V under the base's zeros"
            )
        if self.mask_storage not in MASK_STORAGES:
            raise ValueError(f"mask_storage must be one of {MASK_STORAGES}, got {self.mask_storage!r}")
        if self.mask_storage == "threshold" and spec.prunes and (pattern is not None or self.keep_zeros):
            raise ValueError("mask_storage='threshold' keeps an unstructured mask selected by the score alone: "
                             f"it takes neither pattern={self.pattern!r} nor keep_zeros=True; use mask_storage='bits'")
        if spec.name == "pst" and not (self.score_magnitude or self.score_low_rank or self.score_structured):
            raise ValueError("the PST score needs at least one of score_magnitude, score_low_rank, score_structured")
        for name, layout in (self.fused_modules or {}).items():
            validate_spec(name, layout)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PSTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PSTConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def resolved_for(self, model_type: str | None) -> "PSTConfig":
        """A copy with ``None`` fields filled from the architecture's defaults."""
        defaults = ARCHITECTURE_DEFAULTS.get(model_type or "", {})
        resolved = dataclasses.replace(self)
        if resolved.target_modules is None:
            if "target_modules" not in defaults:
                raise ValueError(
                    f"no default target_modules for model_type {model_type!r} (known: "
                    f"{sorted(ARCHITECTURE_DEFAULTS)}); pass PSTConfig(target_modules=[...])"
                )
            resolved.target_modules = defaults["target_modules"]
        if resolved.head_modules is None:
            resolved.head_modules = list(defaults.get("head_modules", ["classifier", "score"]))
        if resolved.fused_modules is None:
            resolved.fused_modules = copy.deepcopy(defaults.get("fused_modules", {}))
        return resolved

    @property
    def spec(self) -> MethodSpec:
        """What the method scores and trains (``pst.methods``): looked up here, in one place."""
        return get_method(self.method)

    # Which score terms are active, after the method, the ablation switches and keep_zeros.
    @property
    def selects_mask(self) -> bool:
        """False when keep_zeros keeps exactly the base's zeros: no score then, nothing to select."""
        return not (self.keep_zeros and self.sparsity == 0 and self.initial_sparsity == 0)

    @property
    def uses_magnitude_score(self) -> bool:
        spec = self.spec
        return spec.magnitude_score and (spec.name != "pst" or self.score_magnitude) and self.selects_mask

    @property
    def uses_low_rank_score(self) -> bool:
        return self.spec.low_rank_score and self.score_low_rank and self.selects_mask

    @property
    def uses_structured_score(self) -> bool:
        return self.spec.structured_score and self.score_structured and self.selects_mask
