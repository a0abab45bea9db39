"""Peak memory of PST and LoRA fine-tuning LLaMA-7B-shaped decoder layers, and the 32-layer extrapolation.

At LLM scale the frozen weights dominate memory (gradient checkpointing, small micro-batches),
so what a method keeps per sparsified weight decides whether it fits a card. Each (method,
layers) pair runs in its own process: a LLaMA model with hidden 4096, FFN 11008, 32 heads and
vocabulary 32000, random init held in bf16, batch 1 x 16, gradient checkpointing, AdamW, two
training steps at the target sparsity; peak resident memory (``ru_maxrss``) and how far it is
above the loaded, sparsified model. The per-layer slope of two layer counts gives LLaMA-7B's
32 layers (a 2-layer step takes minutes on a laptop CPU: the full model is extrapolated,
not run).

    python benchmarks/llm_memory.py                      # 2 and 4 layers, lora, pst and pst-threshold
    python benchmarks/llm_memory.py --layers 2 --methods pst

``pst-threshold`` is PST with ``mask_storage="threshold"``: no mask bits, the score recomputed
in every pass. A method name ending in ``-threshold`` keeps its masks so.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FULL_LAYERS = 32  # LLaMA-7B


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def worker(method: str, layers: int, sparsity: float, threads: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import pst

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: no fp32 copy ever exists
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
        sparsified = sum(m.base_layer.weight.numel() for n, m in model.named_modules() if hasattr(m, "base_layer"))
    else:
        name, storage = (method.removesuffix("-threshold"), "threshold") if method.endswith("-threshold") else (method, "bits")
        pst.sparsify(model, pst.PSTConfig(method=name, sparsity=sparsity, target_modules=TARGETS, mask_storage=storage))
        pst.set_sparsity(model, sparsity)
        sparsified = sum(layer.weight.numel() for _, layer in pst.sparse_layers(model))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(1000, 30000, (1, 16), generator=torch.Generator().manual_seed(1))
    loaded = _rss_mib()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "layers": layers, "loaded_mib": loaded, "peak_mib": peak,
            "above_mib": peak - loaded, "sparsified": sparsified}


def extrapolate(rows: list[dict]) -> dict:
    """Peak and above-model memory at 32 layers, from the slope between two layer counts."""
    first, last = min(rows, key=lambda r: r["layers"]), max(rows, key=lambda r: r["layers"])
    span = last["layers"] - first["layers"]
    out = {}
    for key in ("peak_mib", "above_mib", "sparsified"):
        slope = (last[key] - first[key]) / span
        out[key] = last[key] + slope * (FULL_LAYERS - last["layers"])
    out["above_bytes_per_weight_slope"] = (
        (last["above_mib"] - first["above_mib"]) * 2**20 / (last["sparsified"] - first["sparsified"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--methods", nargs="+", default=["lora", "pst", "pst-threshold"])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.sparsity, args.threads)), flush=True)
        return
    rows = []
    for method in args.methods:
        for layers in args.layers:
            command = [sys.executable, __file__, "--worker", method, str(layers), f"--sparsity={args.sparsity}",
                       f"--threads={args.threads}"]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(f"measured {method} with {layers} layers: peak {rows[-1]['peak_mib']:.0f} MiB", file=sys.stderr)
    lora = {r["layers"]: r for r in rows if r["method"] == "lora"}
    lines = ["LLaMA-7B-shaped layers (hidden 4096, FFN 11008), bf16 weights, batch 1x16, gradient checkpointing, "
             f"AdamW, sparsity {args.sparsity}; peak RSS of one process per method", "",
             "| method | layers | peak (MiB) | peak × LoRA | above model (MiB) | above model, bytes per sparsified weight |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        reference = lora.get(r["layers"])
        ratio = f"{r['peak_mib'] / reference['peak_mib']:.2f}x" if reference else "—"
        lines.append(f"| {r['method']} | {r['layers']} | {r['peak_mib']:.0f} | {ratio} | {r['above_mib']:.0f} | "
                     f"{r['above_mib'] * 2**20 / r['sparsified']:.2f} |")
    extrapolated = {}
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        if len({r["layers"] for r in mine}) >= 2:
            extrapolated[method] = extrapolate(mine)
    if extrapolated:
        lines += ["", f"Extrapolated to {FULL_LAYERS} layers (per-layer slope of the two layer counts):", "",
                  "| method | peak (GiB) | peak × LoRA | above model (GiB) | above model per sparsified weight, slope (bytes) |",
                  "|---|---|---|---|---|"]
        for method, e in extrapolated.items():
            ratio = (f"{e['peak_mib'] / extrapolated['lora']['peak_mib']:.3f}x" if "lora" in extrapolated else "—")
            lines.append(f"| {method} | {e['peak_mib'] / 1024:.1f} | {ratio} | {e['above_mib'] / 1024:.2f} | "
                         f"{e['above_bytes_per_weight_slope']:.2f} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "extrapolated": extrapolated}, handle, indent=1)


if __name__ == "__main__":
    main()
