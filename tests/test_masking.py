"""Exact top-k selection: the whole-row and bracketed CPU paths agree with a full sort, ties included."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pst import masking
from pst.masking import keep_mask, nm_candidates, num_pruned, parse_pattern, validate_sparsity


def sorted_keep_mask(row: torch.Tensor, prune: int) -> torch.Tensor:
    order = torch.sort(row, stable=True).indices
    keep = torch.ones_like(row, dtype=torch.bool)
    keep[order[:prune]] = False
    return keep


@pytest.fixture(params=["whole", "bracketed"])
def cpu_path(request, monkeypatch):
    """The CPU selection in the whole row, or (rows above 65,536 entries) inside a bracket, as
    rows of more than 4M entries are selected."""
    if request.param == "bracketed":
        monkeypatch.setattr(masking, "_DIRECT_SELECTION_MAX", 1 << 16)
    return request.param


@pytest.mark.parametrize("m", [1000, 200_000])
@pytest.mark.parametrize("sparsity", [0.01, 0.5, 0.9, 0.99, 0.999])
def test_keep_mask_equals_full_sort(m, sparsity, cpu_path):
    torch.manual_seed(m)
    row = torch.randn(m)
    prune = num_pruned(sparsity, m)
    assert torch.equal(keep_mask(row[None], prune)[0], sorted_keep_mask(row, prune))


@pytest.mark.parametrize("m", [1000, 200_000])
def test_ties_prune_exactly_and_lowest_index_first(m, cpu_path):
    row = torch.zeros(m)
    row[m // 2 :] = torch.rand(m - m // 2) + 1  # half the entries tied at zero
    for prune in (m // 4, m // 2, m // 2 + 7):
        keep = keep_mask(row[None], prune)[0]
        assert int((~keep).sum()) == prune
        assert torch.equal(keep, sorted_keep_mask(row, prune))


def test_heavily_quantised_scores_on_the_fast_path(cpu_path):
    torch.manual_seed(0)
    row = torch.randint(0, 5, (300_000,)).float()  # five distinct values: ties everywhere
    keep = keep_mask(row[None], 123_456)[0]
    assert int((~keep).sum()) == 123_456
    assert torch.equal(keep, sorted_keep_mask(row, 123_456))


def test_fast_selection_does_not_touch_the_global_random_stream(cpu_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    keep_mask(torch.randn(1, 100_000, generator=torch.Generator().manual_seed(1)), 50_000)
    assert torch.equal(torch.rand(3), expected)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-3, 3), min_size=1, max_size=60),
    fraction=st.floats(0, 1),
    blocks=st.sampled_from([1, 2, 3]),
)
def test_each_block_loses_exactly_prune_entries(values, fraction, blocks):
    scores = torch.tensor(values * blocks, dtype=torch.float32).view(blocks, -1)
    prune = math.floor(fraction * scores.shape[1])
    keep = keep_mask(scores, prune)
    assert ((~keep).sum(dim=1) == prune).all()
    kept_min = torch.where(keep, scores, torch.inf).min(dim=1).values
    pruned_max = torch.where(~keep, scores, -torch.inf).max(dim=1).values
    assert (pruned_max <= kept_min).all()


def test_num_pruned_is_robust_to_float_noise():
    assert num_pruned(0.29, 100) == 29
    assert num_pruned(0.9, 768 * 768) == math.floor(0.9 * 768 * 768)
    assert num_pruned(0.0, 10) == 0


# -- the sync-free strategy (accelerators) gives the CPU strategy's masks, bit for bit ---------


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.integers(-3, 3), min_size=1, max_size=60),
    fraction=st.floats(0, 1),
    blocks=st.sampled_from([1, 2, 3]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
)
def test_topk_strategy_equals_kthvalue_strategy_with_ties(values, fraction, blocks, dtype):
    scores = torch.tensor(values, dtype=dtype).repeat(blocks, 1)
    scores[1:] = scores[1:].flip(1) if blocks > 1 else scores[1:]  # different rows, same tie structure
    prune = math.floor(fraction * scores.shape[1])
    expected = keep_mask(scores, prune, strategy="kthvalue")
    assert torch.equal(keep_mask(scores, prune, strategy="topk"), expected)
    assert torch.equal(keep_mask(scores, prune, strategy="sort"), expected)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.99])
def test_topk_strategy_on_stacked_matrices_with_quantised_scores(sparsity):
    torch.manual_seed(0)
    scores = torch.randn(6, 100_000).to(torch.bfloat16)  # bf16: ties everywhere, the bracketed path on CPU
    prune = num_pruned(sparsity, scores.shape[1])
    topk = keep_mask(scores, prune, strategy="topk")
    assert torch.equal(topk, keep_mask(scores, prune, strategy="kthvalue"))
    assert ((~topk).sum(dim=1) == prune).all()
    assert torch.equal(topk[2], sorted_keep_mask(scores[2].float(), prune))


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="unknown selection strategy"):
        keep_mask(torch.zeros(1, 4), 1, strategy="quickselect")


# -- N:M ---------------------------------------------------------------------------------------


def test_nm_candidates_are_the_lowest_of_each_group_ties_first_by_index():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 5.0, 5.0, 5.0, 0.0]])
    assert nm_candidates(scores, 2, 4).tolist() == [[False, True, False, True, True, False, False, True]]
    assert nm_candidates(scores, 3, 4).tolist() == [[False, True, False, False, False, False, False, True]]


@pytest.mark.parametrize("strategy", ["kthvalue", "topk", "sort"])
def test_nm_mask_ramps_with_exact_counts_and_ends_with_m_minus_n_zeros_per_group(strategy):
    torch.manual_seed(0)
    scores = torch.randn(3, 4096)
    for sparsity in (0.0, 0.1, 0.25, 0.4, 0.5):
        prune = num_pruned(sparsity, 4096)
        keep = keep_mask(scores, prune, pattern=(2, 4), strategy=strategy)
        assert ((~keep).sum(dim=1) == prune).all()
        assert ((~keep).view(3, -1, 4).sum(dim=2) <= 2).all()
    assert ((~keep).view(3, -1, 4).sum(dim=2) == 2).all()


def test_nm_mask_prunes_the_lowest_candidates():
    torch.manual_seed(1)
    scores = torch.randn(1, 64)
    keep = keep_mask(scores, 10, pattern=(1, 4))
    candidate = nm_candidates(scores, 1, 4)
    pruned_scores = scores[~keep]
    other_candidates = scores[candidate & keep]
    assert candidate[~keep].all() and pruned_scores.max() <= other_candidates.min()


@pytest.mark.parametrize(("text", "parsed"), [("unstructured", None), ("2:4", (2, 4)), (" 1 : 8 ", (1, 8))])
def test_parse_pattern(text, parsed):
    assert parse_pattern(text) == parsed


@pytest.mark.parametrize(("text", "message"), [("2-4", "'unstructured' or 'N:M'"), ("4:4", "0 < N < M"),
                                               ("0:4", "0 < N < M"), ("5:4", "0 < N < M")])
def test_bad_patterns_are_rejected(text, message):
    with pytest.raises(ValueError, match=message):
        parse_pattern(text)


def test_sparsity_beyond_the_pattern_is_rejected():
    validate_sparsity(0.5, (2, 4))
    with pytest.raises(ValueError, match=r"pattern 2:4 prunes at most 50%; got sparsity=0.9"):
        validate_sparsity(0.9, (2, 4))
    with pytest.raises(ValueError, match="sparsity must be in"):
        validate_sparsity(1.0, None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_smallest_reads_the_sorted_order_in_the_values_dtype(dtype):
    values = torch.randn(1001, generator=torch.Generator().manual_seed(3)).to(dtype)
    values[::7] = values[5]  # ties
    ordered = torch.sort(values).values
    found = masking.smallest(values, 1, 500, 1001)
    assert [f.dtype for f in found] == [dtype] * 3
    assert [f.item() for f in found] == [ordered[0].item(), ordered[499].item(), ordered[1000].item()]
