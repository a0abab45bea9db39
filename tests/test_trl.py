"""PST under TRL's SFTTrainer: a sparsified tiny LLaMA fine-tuned on a chat-formatted data set.

The model goes in as it is (no peft), ``SparsityCallback`` among the callbacks; the loss stays
finite, every matrix ends at the target sparsity, and the adapter saves and reloads onto a fresh
base with the trained model's logits.
"""
import math

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[test]' brings it)")
datasets = pytest.importorskip("datasets")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

import pst  # noqa: E402
from tiny_decoders import causal_lm  # noqa: E402

SPECIAL = ["<pad>", "<bos>", "<end>", "<unk>", "<|user|>", "<|assistant|>"]
# A minimal chat template: one turn per message, closed by the eos token.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
THINGS = ["apple", "car", "house", "bird", "book", "cup", "shoe", "door"]


def _conversations() -> list[dict]:
    """'what colour is the <thing> ?' -> 'the <thing> is <colour> .': a fixed mapping to learn."""
    return [
        {"messages": [
            {"role": "user", "content": f"what colour is the {thing} ?"},
            {"role": "assistant", "content": f"the {thing} is {COLOURS[(i + offset) % len(COLOURS)]} ."},
        ]}
        for offset in range(4) for i, thing in enumerate(THINGS)
    ]


def _tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built here over the data's words (no download)."""
    words = sorted({w for c in _conversations() for m in c["messages"] for w in m["content"].split()})
    vocabulary = {token: i for i, token in enumerate(SPECIAL + words)}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<end>", unk_token="<unk>",
        additional_special_tokens=SPECIAL[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _logits(model, input_ids) -> torch.Tensor:
    """Under bf16 autocast, as SFTConfig trains by default (the Trainer leaves the trained model's
    forward autocast), so that the trained and the restored model compute alike."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model.eval()(input_ids=input_ids).logits.float()


def _sparsities(model) -> list[float]:
    return [row["sparsity"] for row in pst.sparsity_report(model)]


def test_sft_trainer_trains_a_pst_model(tmp_path):
    tokenizer = _tokenizer()
    assert tokenizer.apply_chat_template(_conversations()[0]["messages"], tokenize=False).count("<end>") == 2
    base = tmp_path / "base"
    causal_lm("llama", pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
              eos_token_id=tokenizer.eos_token_id).save_pretrained(base)
    config = pst.PSTConfig(sparsity=0.6, warmup_fraction=0.1, cooldown_fraction=0.3)
    model = pst.sparsify(AutoModelForCausalLM.from_pretrained(base), config)
    # SFTConfig's own defaults stay: bf16 autocast and gradient checkpointing.
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "run"), max_steps=12, per_device_train_batch_size=8, learning_rate=5e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        max_length=32, dataloader_num_workers=0,
    )
    trainer = trl.SFTTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(_conversations()),
        processing_class=tokenizer, callbacks=[pst.SparsityCallback()],
    )
    assert trainer.model is model  # trained as given: no peft wrapper, no copy
    result = trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and all(math.isfinite(loss) for loss in losses)
    assert math.isfinite(result.training_loss)
    assert losses[-1] < losses[0]  # it learns the mapping, not only survives the steps
    assert _sparsities(model) == pytest.approx([0.6] * 14, abs=1e-3)

    chat = tokenizer.apply_chat_template(_conversations()[0]["messages"], return_tensors="pt", return_dict=True)
    ids = chat["input_ids"]
    pst.save_adapter(model, tmp_path / "adapter")
    restored = pst.load_adapter(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter")
    assert torch.equal(_logits(restored, ids), _logits(model, ids))
    assert _sparsities(restored) == pytest.approx([0.6] * 14, abs=1e-3)
