"""What each method scores and trains.

One table instead of ``if method == ...`` scattered through the code: the layer, the
surgery and the report all read a :class:`MethodSpec`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """The behaviour of one fine-tuning method, as the layer and the surgery need it."""

    name: str
    description: str
    wraps_modules: bool  # False only for plain dense fine-tuning
    trains_pretrained: bool  # all pre-trained weights trainable (full fine-tuning)
    low_rank_update: bool  # W' = W + beta * U V
    prunes: bool  # a mask M is applied
    magnitude_score: bool  # |W'| is part of the score
    magnitude_score_grad: bool  # the straight-through gradient reaches W' through |W'|
    low_rank_score: bool  # alpha1 * A B
    structured_score: bool  # alpha2 * (R 1^T + 1 C^T)
    full_score: bool  # a trainable score matrix as large as W (movement pruning)
    needs_data: bool  # the criterion is learned from the task's data (Table 1 of the paper)
    criterion: str  # how the paper writes the score
    display_name: str  # the paper's name, in tables and figures
    color: str  # one matplotlib colour and marker per method, the same in every figure
    marker: str


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="pst",
            description="Parameter-efficient sparsity training (Li et al. 2022)",
            wraps_modules=True, trains_pretrained=False, low_rank_update=True, prunes=True,
            magnitude_score=True, magnitude_score_grad=True, low_rank_score=True,
            structured_score=True, full_score=False, needs_data=True,
            criterion="|W'| + AB + R + C",
            display_name="PST", color="tab:red", marker="o",
        ),
        MethodSpec(
            name="magnitude",
            description="Magnitude pruning (MaP) with full fine-tuning",
            wraps_modules=True, trains_pretrained=True, low_rank_update=False, prunes=True,
            magnitude_score=True, magnitude_score_grad=False, low_rank_score=False,
            structured_score=False, full_score=False, needs_data=False,
            criterion="|W|",
            display_name="MaP", color="tab:blue", marker="s",
        ),
        MethodSpec(
            name="movement",
            description="Hard movement pruning (MvP, Sanh et al. 2020) with full fine-tuning",
            wraps_modules=True, trains_pretrained=True, low_rank_update=False, prunes=True,
            magnitude_score=False, magnitude_score_grad=False, low_rank_score=False,
            structured_score=False, full_score=True, needs_data=True,
            criterion="-W * G (accumulated)",
            display_name="MvP", color="tab:green", marker="^",
        ),
        MethodSpec(
            name="dense",
            description="Plain full fine-tuning, no pruning (upper reference)",
            wraps_modules=False, trains_pretrained=True, low_rank_update=False, prunes=False,
            magnitude_score=False, magnitude_score_grad=False, low_rank_score=False,
            structured_score=False, full_score=False, needs_data=True,
            criterion="none",
            display_name="Dense fine-tuning", color="tab:gray", marker="D",
        ),
        MethodSpec(
            name="lora",
            description="Low-rank adaptation without pruning (W' = W + beta U V)",
            wraps_modules=True, trains_pretrained=False, low_rank_update=True, prunes=False,
            magnitude_score=False, magnitude_score_grad=False, low_rank_score=False,
            structured_score=False, full_score=False, needs_data=True,
            criterion="none",
            display_name="LoRA", color="tab:purple", marker="v",
        ),
    )
}


def get_method(name: str) -> MethodSpec:
    """Look a method up by name, with an error that lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}") from None
