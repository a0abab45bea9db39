"""Size of a PST adapter against the full checkpoint, for the numbers quoted in the README.

    python benchmarks/adapter_size.py            # BERT-base: both written to disk and measured
    python benchmarks/adapter_size.py --skip-bert # only the LLaMA shapes (computed, see below)

BERT-base (``BertForSequenceClassification(BertConfig())``, 2 labels, fp32) is written with
``save_pretrained`` and ``pst.save_adapter`` and the files are measured. Decoders of LLaMA-2-7B
and LLaMA-3-8B shapes are built on the meta device (no memory) and their sizes computed as
parameters x 2 bytes (bf16), plus the adapter's JSON config as ``save_adapter`` writes it
(the safetensors header, ~0.1 MB for these, is left out).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pst
from pst.adapter import adapter_description


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def bert_base(folder: Path) -> dict:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2))
    model.save_pretrained(folder / "full")
    pst.sparsify(model, pst.PSTConfig())
    pst.save_adapter(model, folder / "adapter")
    full = sum(f.stat().st_size for f in (folder / "full").iterdir())
    adapter = sum(f.stat().st_size for f in (folder / "adapter").iterdir())
    counts = pst.trainable_parameters(model)
    return {"model": "BERT-base (fp32, measured files)", "parameters": counts.total - counts.added,
            "adapter_parameters": counts.trainable, "full_bytes": full, "adapter_bytes": adapter}


def llama(name: str, **shape) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
        total = sum(p.numel() for p in model.parameters())
        pst.sparsify(model, pst.PSTConfig())
    added = pst.trainable_parameters(model).added
    # Tensors at 2 bytes (bf16) each, plus the adapter's JSON config as save_adapter writes it.
    config_bytes = len(json.dumps(adapter_description(model), indent=2)) + 1
    return {"model": f"{name} (bf16, computed)", "parameters": total, "adapter_parameters": added,
            "full_bytes": 2 * total, "adapter_bytes": 2 * added + config_bytes}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-bert", action="store_true", help="skip writing BERT-base's 440 MB")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_bert:
            rows.append(bert_base(folder))
        rows.append(llama("LLaMA-2-7B shapes", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000))
        rows.append(llama("LLaMA-3-8B shapes", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=128256))
    print("| model | parameters | adapter parameters | full checkpoint | adapter | adapter / full |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['parameters']:,} | {r['adapter_parameters']:,} | {_mb(r['full_bytes'])} | "
              f"{_mb(r['adapter_bytes'])} | {100 * r['adapter_bytes'] / r['full_bytes']:.2f}% |")
    return rows


if __name__ == "__main__":
    main()
