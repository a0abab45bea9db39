"""Peak memory of one training step over a quantized base: PST against QLoRA-style LoRA.

A LLaMA-7B-shaped model (hidden 4096, FFN 11008, 32 heads, vocabulary 32000; ``--layers``
decoder layers, 2 by default), random init in bf16, the seven projections of every block held
as bitsandbytes NF4 (``--quant nf4``: ``Linear4bit``, QLoRA's base, packed 4-bit), torchao
weight-only int8 (``int8``) or int4 values (``int4``: torchao's ``IntxWeightOnlyConfig``, which
stores int4 values unpacked in int8 on CPU), or left in bf16 (``none``). One process per method, each building the model, then taking ``--steps`` steps
(batch 1 x 16, gradient checkpointing, AdamW):

- ``pst``: ``pst.sparsify`` at the target sparsity (0.9), W dequantized per layer;
- ``pst-threshold``: the same with ``mask_storage="threshold"`` (no mask bits, the score
  recomputed in every pass);
- ``pst-keep``: ``PSTConfig(keep_zeros=True)`` on a base pruned to ~50% before quantization
  (|W| below its median for the normal init), only U and V train;
- ``lora``: peft's LoRA r = 8 on the same modules and the same base (peft wraps bitsandbytes
  4-bit layers in its ``Linear4bit`` LoRA: QLoRA; torchao ones in ``TorchaoLoraLinear``).

Memory is the process's resident set: ``loaded`` after building (heap trimmed), ``peak`` the
high-water mark over the steps only (reset through /proc/self/clear_refs before the first step;
Linux), ``above`` = peak - loaded, and that per sparsified weight in bytes.

    python benchmarks/quantized_memory.py                       # every base: pst, lora (+ pst-keep on nf4, int8)
    python benchmarks/quantized_memory.py --quant int8 --methods pst lora --layers 1
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_RUNS = [("nf4", "pst"), ("nf4", "pst-keep"), ("nf4", "lora"), ("int8", "pst"), ("int8", "pst-keep"),
                ("int8", "lora"), ("none", "pst"), ("none", "lora")]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed build-time memory back: "loaded" is the model
    except OSError:
        pass


def _build(args):
    import torch
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM

    import pst

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=args.layers, hidden_size=4096, intermediate_size=11008,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
    torch.set_default_dtype(torch.bfloat16)  # never an fp32 copy, even while building
    model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    if args.method == "pst-keep":  # a ~50%-sparse base, as SparseGPT or Wanda would leave it
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
                    module.weight.masked_fill_(module.weight.abs() < 0.6745 * config.initializer_range, 0)
    if args.quant == "nf4":
        import bitsandbytes as bnb

        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
                packed = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=False,
                                           compute_dtype=torch.bfloat16, quant_type="nf4")
                packed.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type="nf4")
                pst.surgery.replace_module(model, name, packed.to("cpu"))  # quantizes
    elif args.quant != "none":
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        quant = Int8WeightOnlyConfig() if args.quant == "int8" else IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerGroup(32))
        quantize_(model, quant, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn.rsplit(".", 1)[-1] in TARGETS)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    else:
        keep = args.method == "pst-keep"
        storage = "threshold" if args.method == "pst-threshold" else "bits"
        pst.sparsify(model, pst.PSTConfig(target_modules=TARGETS, keep_zeros=keep, sparsity=0.0 if keep else 0.9,
                                          mask_storage=storage))
        pst.set_sparsity(model, 0.0 if keep else 0.9)
    return model.train()


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model = _build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(1000, 30000, (1, 16), generator=torch.Generator().manual_seed(1))
    sparsified = args.layers * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # W's entries (a packed 4-bit weight has half)
    _trim()
    loaded = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current resident set
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = _status_mib("VmHWM")
    base = model.get_submodule(next(n for n, _ in model.named_modules() if n.endswith("layers.0.mlp.up_proj")))
    weight = getattr(base, "weight", None) if not hasattr(base, "base_layer") else base.base_layer.weight
    print(json.dumps({
        "quant": args.quant, "method": args.method, "loaded_mib": loaded, "peak_mib": peak, "above_mib": peak - loaded,
        "above_bytes_per_weight": (peak - loaded) * 2**20 / sparsified, "sparsified_weights": sparsified,
        "trainable": sum(p.numel() for p in params), "step_s": min(times),
        "base_weight": type(weight).__name__, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", choices=("nf4", "int8", "int4", "none"), help="one base for every --methods")
    parser.add_argument("--methods", nargs="+", choices=("pst", "pst-threshold", "pst-keep", "lora"), default=["pst", "pst-keep", "lora"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    runs = [(args.quant, m) for m in args.methods] if args.quant else DEFAULT_RUNS
    rows = []
    for quant, method in runs:  # one after the other: one model in memory at a time
        command = [sys.executable, __file__, "--worker", f"--quant={quant}", f"--method={method}",
                   f"--layers={args.layers}", f"--steps={args.steps}", f"--threads={args.threads}"]
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\n{args.layers} LLaMA-7B-shaped layers, batch 1 x 16, gradient checkpointing, AdamW, "
          f"{rows[0]['threads']} thread(s), torch {rows[0]['torch']}, CPU resident set\n")
    print("| base | method | trainable | loaded (MiB) | peak (MiB) | above loaded (MiB) | bytes / sparsified weight | step (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = {"none": "bf16", "nf4": "NF4 (bitsandbytes)", "int8": "int8 (torchao)",
                "int4": "int4 (torchao, int8 storage)"}[r["quant"]]
        print(f"| {base} | {r['method']} | {r['trainable']:,} | {r['loaded_mib']:.0f} | {r['peak_mib']:.0f} | "
              f"{r['above_mib']:.0f} | {r['above_bytes_per_weight']:.2f} | {r['step_s']:.1f} |")


if __name__ == "__main__":
    main()
