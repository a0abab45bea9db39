"""The importance-score analysis: shares by hand, on constructed and random matrices, PST's score, files, figures."""
import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from transformers.pytorch_utils import Conv1D

import pst
from pst import PSTConfig, SparseLayer
from pst.fused import BlockLayout
from pst.repro.analysis import (
    iid_expected_shares,
    layer_structure_table,
    load_scores,
    marchenko_pastur_share,
    pst_score,
    score_matrices,
    shuffle_entries,
    shuffled_decomposition,
    structure_decomposition,
    structured_approximation,
)
from pst.repro.analysis_figures import explained_share_figure, heatmap_figure, short_names, spectrum_figure


def structured(n=60, k=40, rank=3, noise=1e-3, seed=0):
    """mu + rank-`rank` part with zero row and column means + row effects + column effects + noise."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n, rank, generator=g, dtype=torch.float64)
    V = torch.randn(rank, k, generator=g, dtype=torch.float64)
    U -= U.mean(0)  # column means of U V vanish
    V -= V.mean(1, keepdim=True)  # row means of U V vanish
    rows = 2 * torch.randn(n, generator=g, dtype=torch.float64)
    cols = 2 * torch.randn(k, generator=g, dtype=torch.float64)
    S = 0.7 + U @ V + rows[:, None] + cols[None, :] + noise * torch.randn(n, k, generator=g, dtype=torch.float64)
    return S, rows, cols


# --------------------------------------------------------------------------- shares by hand


def test_shares_by_hand_2x2():
    # S = [[1, 0], [0, 0]]: mean 1/4, ||S - mean||^2 = 3/4; row and column effects +-1/4 each
    # carry 1/4 + 1/4 = 1/2 of it (share 2/3); the residual [[1, -1], [-1, 1]] / 4 is rank 1.
    # S - mean = [[3, -1], [-1, -1]] / 4 has eigenvalues 1/4 +- sqrt(5)/4: rank-1 share
    # (1/4 + sqrt(5)/4)^2 / (3/4) = 1/2 + sqrt(5)/6.
    d = structure_decomposition(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), rank=1)
    assert d["mean"] == pytest.approx(0.25)
    assert d["total"] == pytest.approx(0.75)
    assert d["row_effects"].tolist() == pytest.approx([0.25, -0.25])
    assert d["col_effects"].tolist() == pytest.approx([0.25, -0.25])
    assert d["row"] == pytest.approx(1 / 3) and d["col"] == pytest.approx(1 / 3)
    assert d["row_col"] == pytest.approx(2 / 3)
    assert d["low_rank"] == pytest.approx(0.5 + math.sqrt(5) / 6)
    assert d["both"] == pytest.approx(1.0)
    assert (d["spectrum"] ** 2).sum().item() == pytest.approx(1.0)
    d0 = structure_decomposition(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), rank=0)
    assert d0["low_rank"] == 0.0 and d0["both"] == pytest.approx(2 / 3)


def test_shares_by_hand_3x3_identity():
    # I - 1/3: every row and column mean is 1/3, so no row/column effects; I - J/3 is a
    # projection with eigenvalues 1, 1, 0, so rank 1 holds half the energy and rank 2 all of it.
    eye = torch.eye(3)
    one, two = structure_decomposition(eye, rank=1), structure_decomposition(eye, rank=2)
    assert one["total"] == pytest.approx(2.0)
    assert one["row_col"] == pytest.approx(0.0, abs=1e-12)
    assert one["low_rank"] == pytest.approx(0.5) and one["both"] == pytest.approx(0.5)
    assert two["low_rank"] == pytest.approx(1.0) and two["both"] == pytest.approx(1.0)
    # a purely additive 3x3 matrix is all row/column structure
    additive = torch.tensor([1.0, 2.0, 4.0])[:, None] + torch.tensor([0.0, 10.0, 20.0])[None, :]
    d = structure_decomposition(additive, rank=0)
    assert d["row_col"] == pytest.approx(1.0)
    # row effects -4/3, -1/3, 5/3 over 3 columns: 3 * 42/9 = 14; column effects -10, 0, 10: 3 * 200 = 600
    assert d["row"] * d["total"] == pytest.approx(14.0) and d["col"] * d["total"] == pytest.approx(600.0)


def test_rank_is_clamped_and_validated():
    S = torch.randn(3, 5)
    assert structure_decomposition(S, rank=50)["rank"] == 3
    assert structure_decomposition(S, rank=50)["low_rank"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rank"):
        structure_decomposition(S, rank=-1)
    with pytest.raises(ValueError, match="matrix"):
        structure_decomposition(torch.randn(3, 4, 5))


def test_constant_matrix_has_nan_shares():
    d = structure_decomposition(torch.full((4, 5), 2.0))
    assert math.isnan(d["both"]) and math.isnan(d["low_rank"])


# --------------------------------------------------------------------------- constructed and random matrices


def test_low_rank_plus_row_col_is_fully_explained():
    S, rows, cols = structured()
    for rank in (3, 8):
        d = structure_decomposition(S, rank)
        assert d["both"] == pytest.approx(1.0, abs=1e-5)
    d = structure_decomposition(S, rank=3)
    assert torch.allclose(d["row_effects"], rows - rows.mean(), atol=1e-3)
    assert torch.allclose(d["col_effects"], cols - cols.mean(), atol=1e-3)
    assert d["mean"] == pytest.approx(0.7 + rows.mean().item() + cols.mean().item(), abs=1e-3)
    # neither part alone suffices: rank 3 cannot hold the two additive directions too
    assert d["row_col"] < 0.99 and d["low_rank"] < 0.99
    assert d["both"] > max(d["row_col"], d["low_rank"])
    # rank 2 leaves some of the rank-3 residual unexplained
    assert structure_decomposition(S, rank=2)["both"] < 0.999
    approx = structured_approximation(S, rank=3)
    assert torch.allclose(approx, S, atol=1e-2)


def test_iid_gaussian_matches_random_matrix_prediction():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 300, generator=g, dtype=torch.float64)
    d = structure_decomposition(X, rank=8)
    expected = iid_expected_shares(200, 300, rank=8)
    for kind in ("row_col", "low_rank", "both"):
        assert d[kind] < 0.15
        assert d[kind] == pytest.approx(expected[kind], rel=0.15), kind
    # the Marchenko-Pastur share sits just under the edge approximation r (sqrt(n) + sqrt(k))^2 / (n k)
    edge = 8 * (200**0.5 + 300**0.5) ** 2 / (200 * 300)
    assert 0.8 * edge < marchenko_pastur_share(200, 300, 8) < edge
    assert marchenko_pastur_share(50, 50, 50) == 1.0 and marchenko_pastur_share(50, 50, 0) == 0.0


def test_marchenko_pastur_square_case():
    # y = 1: the quarter-circle law on [0, 4]; a tail of mass q near the edge has mean ~4.
    share = marchenko_pastur_share(1000, 1000, 1)
    assert share == pytest.approx(4 / 1000, rel=0.05)
    assert marchenko_pastur_share(1000, 1000, 500) < 1.0


def test_shuffled_baseline_is_below_the_structured_matrix():
    S, _, _ = structured(noise=0.3)
    real, shuffled = structure_decomposition(S, 8), shuffled_decomposition(S, 8, seed=0)
    assert shuffled["total"] == pytest.approx(real["total"])  # same values, same energy
    for kind in ("row_col", "low_rank", "both"):
        assert real[kind] > shuffled[kind] + 0.3, kind
    # fixed generator: reproducible, and a different seed gives a different permutation
    assert torch.equal(shuffle_entries(S, 3), shuffle_entries(S, 3))
    assert not torch.equal(shuffle_entries(S, 3), shuffle_entries(S, 4))
    assert torch.equal(shuffle_entries(S, 3).flatten().sort().values, S.flatten().sort().values)


def test_layer_structure_table():
    S, _, _ = structured()
    noise = torch.randn(30, 50, generator=torch.Generator().manual_seed(0))
    table = layer_structure_table({"enc.layer.0.query": S, "enc.layer.0.key": {"scores": noise}}, rank=4)
    assert list(table["layer"]) == ["enc.layer.0.query", "enc.layer.0.key"]
    assert list(table["shape"]) == ["60 x 40", "30 x 50"]
    assert {"row_col", "low_rank", "both", "shuffled_row_col", "shuffled_low_rank", "shuffled_both"} <= set(table)
    real, random = table.iloc[0], table.iloc[1]
    assert real["both"] == pytest.approx(1.0, abs=1e-5) and real["both"] > real["shuffled_both"]
    assert random["low_rank"] == pytest.approx(random["iid_low_rank"], rel=0.3)


# --------------------------------------------------------------------------- PST's score


def make_layer(kind, n, k, blocks=1, seed=0, **config):
    torch.manual_seed(seed)
    base = (nn.Linear(k, n) if kind == "linear" else Conv1D(n, k)).double()
    layer = SparseLayer(base, PSTConfig(method="pst", **config), blocks=blocks)
    with torch.no_grad():  # non-zero V, B, R, C so every term is exercised
        for p in layer.method_parameters():
            p.normal_()
    return layer


@pytest.mark.parametrize("kind,blocks", [("linear", 1), ("conv1d", 1), ("conv1d", 3), ("linear", 3)])
@pytest.mark.parametrize("alphas", [(1.0, 1.0), (0.5, 2.0)])
def test_pst_score_equals_the_layers_data_driven_score(kind, blocks, alphas):
    alpha1, alpha2 = alphas
    layer = make_layer(kind, 12, 10, blocks=blocks, alpha1=alpha1, alpha2=alpha2)
    with torch.no_grad():
        weight = layer.weight.t() if layer.transposed else layer.weight
        V = layer.V.reshape(blocks, -1, 10)
        updated = torch.cat([weight[rows] + layer.U[rows] @ V[b] for b, rows in enumerate(torch.arange(12).chunk(blocks))])
        internal = layer.score() - updated.abs()
        ours = pst_score(layer.A, layer.B, layer.R, layer.C, alpha1=alpha1, alpha2=alpha2)
    assert ours.shape == (12, 10)
    torch.testing.assert_close(ours, internal.reshape(12, 10))
    # and by the equation, block by block
    n_b = 12 // blocks
    B = layer.B.detach().reshape(blocks, -1, 10)
    C = layer.C.detach().reshape(blocks, 10)
    for b in range(blocks):
        rows = slice(b * n_b, (b + 1) * n_b)
        A_b, R_b = layer.A.detach()[rows], layer.R.detach()[rows]
        expected = alpha1 * A_b @ B[b] + alpha2 * (R_b[:, None] + C[b][None, :])
        torch.testing.assert_close(ours[rows], expected)


def test_pst_score_without_magnitude_term_and_ablations():
    layer = make_layer("linear", 8, 6, score_magnitude=False)
    with torch.no_grad():
        internal = layer.score()
        torch.testing.assert_close(pst_score(layer.A, layer.B, layer.R, layer.C), internal.reshape(8, 6))
        A, B, R, C = (t.detach() for t in (layer.A, layer.B, layer.R, layer.C))
    torch.testing.assert_close(pst_score(A, B, None, None), A @ B)
    torch.testing.assert_close(pst_score(None, None, R, C), R[:, None] + C[None, :])
    with pytest.raises(ValueError, match="A with B"):
        pst_score(A, None, R, C)
    with pytest.raises(ValueError, match="none"):
        pst_score(None, None, None, None)
    with pytest.raises(ValueError, match="do not multiply"):
        pst_score(A, B[:5], None, None)


def test_score_matrices_splits_fused_blocks():
    layer = make_layer("conv1d", 12, 10, blocks=3)
    group = {p: getattr(layer, p).detach() for p in ("A", "B", "R", "C")}
    movement = {"scores": torch.randn(12, 10)}
    matrices = score_matrices({"h.0.attn.c_attn": group, "h.1.attn.c_attn": movement, "h.0.mlp.c_fc": movement},
                              fused_modules={"c_attn": 3})
    assert list(matrices) == ["h.0.attn.c_attn[0]", "h.0.attn.c_attn[1]", "h.0.attn.c_attn[2]",
                              "h.1.attn.c_attn[0]", "h.1.attn.c_attn[1]", "h.1.attn.c_attn[2]", "h.0.mlp.c_fc"]
    assert matrices["h.0.attn.c_attn[1]"].shape == (4, 10)
    torch.testing.assert_close(matrices["h.0.attn.c_attn[2]"], pst_score(**group)[8:])
    with pytest.raises(ValueError, match="no score matrix"):
        score_matrices({"x": {"weight": torch.randn(3, 3)}})


PHI3_LIKE = SimpleNamespace(num_attention_heads=4, num_key_value_heads=1)
UNEQUAL_SPECS = [
    # Phi-3's grouped-query q | k | v: 8, 2 and 2 rows.
    (["num_attention_heads", "num_key_value_heads", "num_key_value_heads"], BlockLayout((8, 2, 2))),
    # GPT-NeoX's q, k, v of 2 rows side by side for each of 4 heads (config unused).
    ({"blocks": 3, "interleave": 4}, BlockLayout((1, 1, 1), 4)),
]


@pytest.mark.parametrize(("spec", "layout"), UNEQUAL_SPECS)
def test_score_matrices_split_unequal_and_interleaved_blocks_as_the_layer_does(spec, layout):
    layer = make_layer("linear", 12, 10, blocks=layout)
    group = {p: getattr(layer, p).detach() for p in ("A", "B", "R", "C")}
    rows = [layout.block_index(torch.device("cpu")) == j for j in range(3)]  # each block's rows
    with torch.no_grad():
        updated = layer.weight.clone()  # W' = W + U V, block by block
        for j in range(3):
            updated[rows[j]] += layer.U[rows[j]] @ layer.V[j]
        internal = layer.score() - updated.abs()  # the layer's own data-driven score
    torch.testing.assert_close(pst_score(**group, layout=layer.layout), internal)
    movement = {"scores": torch.randn(12, 10, dtype=torch.float64)}
    matrices = score_matrices({"layers.0.qkv": group, "layers.1.qkv": movement}, fused_modules={"qkv": spec},
                              model_config=PHI3_LIKE)
    for j in range(3):
        torch.testing.assert_close(matrices[f"layers.0.qkv[{j}]"], internal[rows[j]])
        torch.testing.assert_close(matrices[f"layers.1.qkv[{j}]"], movement["scores"][rows[j]])
        # A block is a matrix of its own: its A rows times its B, its R rows plus its C.
        A, R = group["A"][rows[j]], group["R"][rows[j]]
        torch.testing.assert_close(matrices[f"layers.0.qkv[{j}]"], A @ group["B"][j] + R[:, None] + group["C"][j])


def test_score_matrices_name_a_layer_whose_blocks_do_not_fit():
    group = {p: getattr(make_layer("linear", 12, 10, blocks=3), p).detach() for p in ("A", "B", "R", "C")}
    with pytest.raises(ValueError, match=r"layer 'qkv': a layout of 2 block\(s\) over 12 rows does not fit factors of 3"):
        score_matrices({"qkv": group}, fused_modules={"qkv": 2})
    with pytest.raises(ValueError, match=r"layer 'qkv': .*'num_attention_heads' must name an integer .*no model config"):
        score_matrices({"qkv": group}, fused_modules={"qkv": UNEQUAL_SPECS[0][0]})


# --------------------------------------------------------------------------- files written like a GLUE run's


@pytest.mark.parametrize("method", ["movement", "pst"])
def test_load_scores_reads_what_a_run_saves(tmp_path, tiny_model, method):
    from pst.repro.runners.glue import _save_scores

    model = pst.sparsify(tiny_model("bert"), PSTConfig(method=method))
    for _, layer in pst.sparse_layers(model):
        with torch.no_grad():
            for p in layer.method_parameters():
                p.normal_()
    pst.set_sparsity(model, 0.5)
    record = tmp_path / "analysis" / "sst2-run.json"
    _save_scores(model, record.with_name("sst2-run.scores.safetensors"))

    groups = load_scores(record.with_name("sst2-run.scores.safetensors"))
    assert load_scores(record).keys() == groups.keys()  # the record's path finds its side file
    layers = dict(pst.sparse_layers(model))
    assert set(groups) == set(layers)
    expected_parts = {"scores", "weight"} if method == "movement" else {"A", "B", "R", "C", "U", "V", "W", "weight"}
    for name, parts in groups.items():
        assert set(parts) == expected_parts
        torch.testing.assert_close(parts["weight"], layers[name].effective_weight())
        if method == "pst":  # the frozen pre-trained W, output x input, from which the analysis rebuilds W'
            torch.testing.assert_close(parts["W"], layers[name].weight.detach())
    matrices = score_matrices(groups)
    for name, matrix in matrices.items():
        layer = layers[name]
        assert matrix.shape == (layer.out_features, layer.in_features)
        if method == "pst":
            torch.testing.assert_close(matrix, pst_score(layer.A, layer.B, layer.R, layer.C).detach())
        else:
            torch.testing.assert_close(matrix, layer.scores.detach())
    table = layer_structure_table(groups, rank=2)
    assert len(table) == len(layers)
    if method == "pst":  # rank 8 + R + C in a 32 x 32 or 64 x 32 matrix: all of it at rank 8
        assert (layer_structure_table(groups, rank=8)["both"] > 1 - 1e-9).all()


def test_load_scores_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_scores=True"):
        load_scores(tmp_path / "nothing.scores.safetensors")


# --------------------------------------------------------------------------- figures


@pytest.fixture
def scores_by_layer():
    return {
        f"bert.encoder.layer.{i}.{sub}": structured(n=24, k=20, noise=0.5, seed=i)[0]
        for i in range(2) for sub in ("attention.self.query", "intermediate.dense")
    }


def test_spectrum_figure(scores_by_layer):
    figure = spectrum_figure(scores_by_layer, layers=["bert.encoder.layer.0.attention.self.query",
                                                      "bert.encoder.layer.1.intermediate.dense"])
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert len(figure.axes[0].lines) == 4  # real, residual, shuffled, rank marker
    assert len(spectrum_figure(scores_by_layer, max_layers=3).axes) == 3
    with pytest.raises(ValueError, match="unknown layer"):
        spectrum_figure(scores_by_layer, layers=["nope"])


def test_explained_share_figure(scores_by_layer):
    table = layer_structure_table(scores_by_layer, rank=3)
    figure = explained_share_figure(table)
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert len(figure.axes[0].patches) == 2 * len(table)  # real and shuffled bar per layer
    assert len(explained_share_figure(table, kinds=["both"]).axes) == 1
    with pytest.raises(ValueError, match="kinds"):
        explained_share_figure(table, kinds=["everything"])


def test_heatmap_figure(scores_by_layer):
    figure = heatmap_figure(scores_by_layer, max_layers=2, crop=16)
    assert isinstance(figure, Figure) and len(figure.axes) == 2 * 3  # score, fit, colour bar per row
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (16, 16)
    figure.savefig(__import__("io").BytesIO(), format="png")  # renders headless


def test_short_names():
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.output.dense",
             "bert.encoder.layer.11.intermediate.dense", "bert.encoder.layer.11.output.dense"]
    assert short_names(names) == ["L0 query", "L0 attn.out", "L11 ffn.in", "L11 ffn.out"]
    # alone or among layers of one block, attention.output.dense is still the attention output of block 0
    assert short_names(["bert.encoder.layer.0.attention.output.dense"]) == ["L0 attn.out"]
    assert short_names(["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.attention.self.key"]) == [
        "L0 attn.out", "L0 key"]
