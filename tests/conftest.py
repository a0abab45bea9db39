import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py and other test helpers

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)


def _tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if arch == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=100, num_labels=3, **common)).eval()
    if arch == "roberta":
        config = RobertaConfig(vocab_size=100, num_labels=2, max_position_embeddings=66, pad_token_id=1, **common)
        return RobertaForSequenceClassification(config).eval()
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    raise ValueError(arch)


@pytest.fixture
def tiny_model():
    """Factory: a tiny randomly initialised BERT, RoBERTa or GPT-2 built from config."""
    return _tiny


@pytest.fixture
def token_batch():
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (2, 12))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class _RandomTokens(torch.utils.data.Dataset):
    """Random 8-token sequences labelled by their first token mod 3: enough for a Trainer to step."""

    def __init__(self, n=32):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 100, (n, 8), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": torch.tensor(int(self.ids[i, 0]) % 3)}


@pytest.fixture
def token_dataset():
    """A small classification dataset of random tokens for Trainer tests."""
    return _RandomTokens()


@pytest.fixture(scope="session", autouse=True)
def shared_tiny_models(tmp_path_factory):
    """Build each tiny stand-in model once per session instead of once per test."""
    import os

    from pst.repro.runners.model_source import CACHE_VARIABLE

    previous = os.environ.get(CACHE_VARIABLE)
    os.environ[CACHE_VARIABLE] = str(tmp_path_factory.mktemp("tiny-models"))
    yield
    if previous is None:
        os.environ.pop(CACHE_VARIABLE, None)
    else:
        os.environ[CACHE_VARIABLE] = previous


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order (checks that no test needs another's leftovers)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
