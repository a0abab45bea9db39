"""Fused block specs: resolution against model configs, row layouts, and clear errors."""
from types import SimpleNamespace

import pytest
import torch

from pst import PSTConfig
from pst.fused import BlockLayout
from reference import block_rows

PHI3 = SimpleNamespace(num_attention_heads=32, num_key_value_heads=8)
GQA_QKV = ["num_attention_heads", "num_key_value_heads", "num_key_value_heads"]


@pytest.mark.parametrize(
    ("spec", "rows", "config", "expected"),
    [
        (1, 10, None, BlockLayout((10,))),
        (3, 12, None, BlockLayout((4, 4, 4))),
        ([4096, 1024, 1024], 6144, None, BlockLayout((4096, 1024, 1024))),
        ([2, 1, 1], 6144, None, BlockLayout((3072, 1536, 1536))),
        (GQA_QKV, 96 * 48, PHI3, BlockLayout((96 * 32, 96 * 8, 96 * 8))),
        ({"blocks": 3, "interleave": "num_attention_heads"}, 32 * 3 * 64, PHI3, BlockLayout((64, 64, 64), 32)),
        ({"blocks": [4, 1, 1], "interleave": 2}, 24, None, BlockLayout((8, 2, 2), 2)),
    ],
)
def test_specs_resolve_to_layouts(spec, rows, config, expected):
    PSTConfig(fused_modules={"m": spec})  # accepted by the config
    assert BlockLayout.from_spec(spec, rows, config) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (0, "must be a number of equal blocks"),
        (True, "must be a number of equal blocks"),
        ("3", "must be a number of equal blocks"),
        ([], "at least one block"),
        ([2, 0], "neither an integer >= 1 nor a model config attribute name"),
        ([2, "not an attribute!"], "neither an integer"),
        ({"blocks": 3}, "exactly the keys 'blocks' and 'interleave'"),
        ({"blocks": 3, "interleave": 0}, "neither an integer"),
    ],
)
def test_bad_specs_are_rejected_by_the_config(spec, message):
    with pytest.raises(ValueError, match=message):
        PSTConfig(fused_modules={"qkv": spec})


@pytest.mark.parametrize(
    ("spec", "rows", "config", "message"),
    [
        (5, 12, None, "12 output features cannot be split into 5 fused blocks"),
        ([3, 1], 10, None, "cannot be split in the proportions"),
        ({"blocks": 3, "interleave": 5}, 12, None, "cannot be split into 5 interleaved repetitions"),
        (GQA_QKV, 96, None, "must name an integer >= 1 of the model config"),
        (["num_attention_heads", "hidden_act"], 96, SimpleNamespace(num_attention_heads=4, hidden_act="gelu"),
         "'hidden_act' must name an integer"),
    ],
)
def test_specs_that_do_not_fit_the_module_are_rejected(spec, rows, config, message):
    with pytest.raises(ValueError, match=message):
        BlockLayout.from_spec(spec, rows, config)


@pytest.mark.parametrize("layout", [BlockLayout((3, 1, 2)), BlockLayout((2, 2, 2), 4), BlockLayout((4, 1, 1), 3)])
def test_rows_of_and_block_index_follow_the_layout(layout):
    table = torch.arange(layout.rows * 2).view(layout.rows, 2)
    index = layout.block_index(torch.device("cpu"))
    for block in range(layout.num_blocks):
        rows = block_rows(layout.sizes, layout.repeats, block)
        assert torch.equal(layout.rows_of(table, block).reshape(-1, 2), table[rows])
        assert torch.equal(torch.nonzero(index == block).squeeze(1), rows)
        assert layout.block_rows(block) == len(rows)
