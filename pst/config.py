"""``PSTConfig``: every setting of a sparse fine-tuning run, validated in one place."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .methods import get_method

#: Every nn.Linear inside the encoder (Q, K, V, attention output, FFN in and out);
#: never embeddings, pooler or classifier.
_BERT_LIKE_TARGETS = (
    r"(.*\.)?encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
#: Every Conv1D inside the transformer blocks; never the embeddings or the tied LM head.
_GPT2_TARGETS = r"(.*\.)?h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj))"

#: Per-architecture defaults: which modules to sparsify, which modules form the task head,
#: and which modules fuse several matrices that the paper's model keeps apart.
ARCHITECTURE_DEFAULTS: dict[str, dict] = {
    "bert": {"target_modules": _BERT_LIKE_TARGETS, "head_modules": ["classifier"], "fused_modules": {}},
    "roberta": {"target_modules": _BERT_LIKE_TARGETS, "head_modules": ["classifier"], "fused_modules": {}},
    "gpt2": {"target_modules": _GPT2_TARGETS, "head_modules": ["score"], "fused_modules": {"c_attn": 3}},
}


@dataclass
class PSTConfig:
    """Settings of one sparse fine-tuning method (peft-style).

    The defaults are the paper's: ranks r1 = r2 = 8, beta = alpha1 = alpha2 = 1, target
    sparsity 90%, cubic schedule with 10% dense warm-up and 30% constant cool-down.

    ``target_modules`` is a list of module-name suffixes (``["query", "value"]``) or one
    regular expression that must match a full module name; ``None`` takes the
    architecture's default (see ``ARCHITECTURE_DEFAULTS``).

    ``train_head``: whether the task head (``head_modules``, e.g. BERT's ``classifier``)
    trains. Default True. The official GLUE script passes only the PST parameters to its
    optimizer, so its randomly initialised classifier never trains; we consider that an
    accident and train the head, which also makes the comparison with the baselines fair.
    """

    method: str = "pst"
    sparsity: float = 0.9
    weight_rank: int = 8
    score_rank: int = 8
    beta: float = 1.0
    alpha1: float = 1.0
    alpha2: float = 1.0
    # Ablation switches for the PST score S = |W'| + alpha1 AB + alpha2 (R + C).
    score_magnitude: bool = True
    score_low_rank: bool = True
    score_structured: bool = True
    target_modules: list[str] | str | None = None
    head_modules: list[str] | None = None
    train_head: bool = True
    fused_modules: dict[str, int] | None = None
    initial_warmup: float = 0.1
    final_warmup: float = 0.3
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        spec = get_method(self.method)
        for name in ("sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("weight_rank", "score_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("initial_warmup", "final_warmup"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
        if self.initial_warmup + self.final_warmup > 1.0:
            raise ValueError(
                f"initial_warmup + final_warmup must be <= 1, got {self.initial_warmup} + {self.final_warmup}"
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
        if spec.name == "pst" and not (self.score_magnitude or self.score_low_rank or self.score_structured):
            raise ValueError("the PST score needs at least one of score_magnitude, score_low_rank, score_structured")
        for name, blocks in (self.fused_modules or {}).items():
            if not isinstance(blocks, int) or blocks < 1:
                raise ValueError(f"fused_modules[{name!r}] must be an integer >= 1, got {blocks!r}")

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
            resolved.fused_modules = dict(defaults.get("fused_modules", {}))
        return resolved

    # Which score terms are active, after the method and the ablation switches.
    @property
    def uses_magnitude_score(self) -> bool:
        spec = get_method(self.method)
        return spec.magnitude_score and (spec.name != "pst" or self.score_magnitude)

    @property
    def uses_low_rank_score(self) -> bool:
        return get_method(self.method).low_rank_score and self.score_low_rank

    @property
    def uses_structured_score(self) -> bool:
        return get_method(self.method).structured_score and self.score_structured
