"""PST's learned-score analysis on layers where the answer is known: term shares, how far the
mask moved from magnitude pruning's, and the rank correlation with movement pruning's score."""
import math

import pytest
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr

import pst
from pst import PSTConfig
from pst.repro.analysis import load_scores
from pst.repro.analysis_pst import (
    IncompleteScoreFile,
    kept_outside,
    pst_layer_table,
    pst_terms_figure,
    score_terms,
    spearman,
    term_shares,
)


def parts(n=12, k=10, seed=0, b_scale=0.0, rc_scale=0.0, v_scale=0.0, rank=3):
    """One PST layer's score-file group: W random, the learned factors scaled as asked (0 = initial)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, k, generator=g, dtype=torch.float64)
    group = {"W": W, "U": torch.randn(n, rank, generator=g, dtype=torch.float64),
             "V": v_scale * torch.randn(rank, k, generator=g, dtype=torch.float64),
             "A": torch.randn(n, rank, generator=g, dtype=torch.float64),
             "B": b_scale * torch.randn(rank, k, generator=g, dtype=torch.float64),
             "R": rc_scale * torch.randn(n, generator=g, dtype=torch.float64),
             "C": rc_scale * torch.randn(k, generator=g, dtype=torch.float64)}
    group["weight"] = group["W"] + group["U"] @ group["V"]  # nothing pruned
    return group


# --------------------------------------------------------------------------- term shares


def test_without_learned_terms_the_magnitude_carries_everything():
    shares = term_shares(score_terms(parts()))  # B = 0, R = C = 0: S = |W|
    assert shares == pytest.approx({"magnitude": 1.0, "low_rank": 0.0, "structured": 0.0, "covariance": 0.0})


def test_a_planted_low_rank_term_dominates():
    shares = term_shares(score_terms(parts(b_scale=30.0, rc_scale=0.01)))
    assert shares["low_rank"] > 0.95 and shares["magnitude"] < 0.02 and shares["structured"] < 1e-4
    assert sum(shares.values()) == pytest.approx(1.0)


def test_cross_terms_take_what_the_terms_share():
    X = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert term_shares({"a": X, "b": X}) == pytest.approx({"a": 0.25, "b": 0.25, "covariance": 0.5})
    assert term_shares({"a": X, "b": -0.5 * X}) == pytest.approx({"a": 4.0, "b": 1.0, "covariance": -4.0})
    assert all(math.isnan(v) for v in term_shares({"a": torch.ones(3, 3)}).values())


def test_the_terms_add_up_to_the_layers_score():
    layer = pst.SparseLayer(torch.nn.Linear(10, 12), PSTConfig(method="pst", beta=0.5, alpha1=2.0, alpha2=3.0))
    with torch.no_grad():
        for p in layer.method_parameters():
            p.normal_(generator=torch.Generator().manual_seed(2))
    group = {part: getattr(layer, part).detach() for part in ("U", "V", "A", "B", "R", "C")}
    group |= {"W": layer.weight.detach(), "weight": layer.effective_weight()}
    terms = score_terms(group, alpha1=2.0, alpha2=3.0, beta=0.5)
    torch.testing.assert_close(sum(terms.values()).float(), layer.score(), rtol=1e-5, atol=1e-5)
    assert set(score_terms(group, magnitude=False)) == {"low_rank", "structured"}
    no_ab = {p: v for p, v in group.items() if p not in ("A", "B")}  # the ablation without AB
    assert set(score_terms(no_ab)) == {"magnitude", "structured"}


# --------------------------------------------------------------------------- mask movement


def test_kept_outside_by_hand():
    reference = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # magnitude keeps 4 and 3
    assert kept_outside(torch.tensor([[True, True], [False, False]]), reference) == 0.0
    assert kept_outside(torch.tensor([[True, False], [True, False]]), reference) == 0.5
    assert kept_outside(torch.tensor([[False, False], [True, True]]), reference) == 1.0
    assert math.isnan(kept_outside(torch.zeros(2, 2, dtype=torch.bool), reference))
    with pytest.raises(ValueError, match="differ in shape"):
        kept_outside(torch.ones(2, 3, dtype=torch.bool), reference)


def _saved_groups(model, tmp_path):
    from pst.repro.runners.glue import _save_scores

    path = tmp_path / "run.scores.safetensors"
    _save_scores(model, path)
    return load_scores(path)


def test_pst_starts_as_magnitude_pruning_and_moves_away_as_it_learns(tmp_path, tiny_model):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(method="pst"))
    pst.set_sparsity(model, 0.9)
    table = pst_layer_table(_saved_groups(model, tmp_path))  # step 0: V = B = R = C = 0
    assert len(table) == 12 and (table["kept_outside_map_w"] == 0).all()
    assert (table["kept_outside_map_w_updated"] == 0).all()
    assert table["share_magnitude"].tolist() == pytest.approx([1.0] * 12)

    for _, layer in pst.sparse_layers(model):
        with torch.no_grad():
            layer.B.normal_(std=0.05)  # a learned score term, no weight update: W' = W still
    table = pst_layer_table(_saved_groups(model, tmp_path))
    assert (table["kept_outside_map_w"] > 0.2).all()
    assert (table["kept_outside_map_w"] == table["kept_outside_map_w_updated"]).all()
    assert (table["share_low_rank"] > 0.2).all() and table["share_structured"].tolist() == [0.0] * 12


# --------------------------------------------------------------------------- agreement with movement pruning


def test_spearman_on_planted_matrices():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 30, generator=g, dtype=torch.float64)
    assert spearman(x, x.exp()) == pytest.approx(1.0)  # any increasing map keeps the ranking
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert abs(spearman(x, torch.randn(40, 30, generator=g))) < 0.1
    tied = x.round()  # ties: average ranks, as scipy
    assert spearman(tied, x) == pytest.approx(spearmanr(tied.reshape(-1), x.reshape(-1)).statistic)
    assert math.isnan(spearman(torch.ones(3, 3), x[:3, :3]))
    with pytest.raises(ValueError, match="shapes"):
        spearman(x, x.T)


def test_pst_learning_mvps_ranking_shows_against_the_magnitude_reference():
    layers = {f"layer.{i}": parts(seed=i, n=30, k=20, b_scale=1.0, rc_scale=1.0) for i in range(2)}
    g = torch.Generator().manual_seed(4)
    movement = {}
    for name, group in layers.items():
        data_driven = group["A"] @ group["B"] + group["R"][:, None] + group["C"][None, :]
        movement[name] = {"scores": data_driven + 0.1 * torch.randn(30, 20, generator=g, dtype=torch.float64)}
    del movement["layer.1"]
    table = pst_layer_table(layers, movement)
    assert table.loc[0, "spearman_pst_mvp"] > 0.95 and abs(table.loc[0, "spearman_mvp_abs_w"]) < 0.2
    assert math.isnan(table.loc[1, "spearman_pst_mvp"]) and math.isnan(table.loc[1, "spearman_mvp_abs_w"])
    assert "spearman_pst_mvp" not in pst_layer_table(layers).columns
    figure = pst_terms_figure(table, title="planted")
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert len(pst_terms_figure(pst_layer_table(layers)).axes) == 2  # no MvP run: no correlation panel


def test_what_the_analysis_cannot_read_is_named():
    old = {k: v for k, v in parts().items() if k not in ("W", "U", "V")}  # a file from before W, U, V were saved
    with pytest.raises(IncompleteScoreFile, match=r"layer 'enc.0' lacks \['W', 'U', 'V'\].*rerun"):
        pst_layer_table({"enc.0": old})
    fused = parts() | {"V": torch.zeros(3, 3, 10)}
    with pytest.raises(ValueError, match="'h.0.attn.c_attn' fuses several matrices"):
        pst_layer_table({"h.0.attn.c_attn": fused})
    with pytest.raises(ValueError, match="at least one layer"):
        pst_terms_figure(pst_layer_table({}))
