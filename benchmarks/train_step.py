"""One training step (forward + backward + AdamW) of a BERT-base-shaped encoder, per method.

Each method runs in its own process (clean peak-memory numbers), on the same random
batch; the parent prints times and peak memory side by side as ratios:

    python benchmarks/train_step.py                      # CPU, BERT-base shapes, batch 8 x 128
    python benchmarks/train_step.py --device cuda        # GPU when one is present
    python benchmarks/train_step.py --layers 2 --steps 2 # quick look

Methods: pst, dense (full fine-tuning: the same three matrix products per layer),
lora (peft's LoRA, r = 8, same modules, head trained) and movement (hard top-k movement
pruning). Pruning methods run at the target sparsity (default 0.9), where every matrix
needs its threshold at every step.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("dense", "pst", "lora", "movement")


def _build(method: str, args):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    import pst

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=args.layers, hidden_size=768, num_attention_heads=12,
                        intermediate_size=3072, num_labels=2)
    model = BertForSequenceClassification(config)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = pst.PSTConfig().resolved_for("bert").target_modules
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                                 modules_to_save=["classifier"]))
    else:
        pst.sparsify(model, pst.PSTConfig(method=method, sparsity=args.sparsity))
        pst.set_sparsity(model, args.sparsity)
    return model.to(args.device).train()


def worker(method: str, args) -> dict:
    import torch

    import pst

    torch.set_num_threads(args.threads) if args.threads else None
    model = _build(method, args)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=generator).to(args.device)
    labels = torch.randint(0, 2, (args.batch,), generator=generator).to(args.device)
    cuda = args.device.startswith("cuda")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated() / 2**20
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    result = {
        "method": method,
        "step_s": statistics.median(times),
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
    }
    if cuda:
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_above_model_mib"] = result["peak_mib"] - allocated_before
        result["device_name"] = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_mib"] = peak
        result["peak_above_model_mib"] = peak - rss_before
        result["device_name"] = "cpu"
    result["pst_version"] = pst.__version__
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    passthrough = [a for a in sys.argv[1:] if a not in args.methods and a != "--methods"]
    results = {}
    for method in args.methods:
        output = subprocess.run([sys.executable, __file__, "--worker", method, *passthrough],
                                check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(output.strip().splitlines()[-1])
        print(f"measured {method}: {results[method]['step_s']:.3f} s/step", file=sys.stderr)
    dense, lora = results.get("dense"), results.get("lora")
    device = next(iter(results.values()))["device_name"]
    print(f"\nOne training step, BERT-base-shaped encoder ({args.layers} layers), batch {args.batch}x{args.seq}, "
          f"sparsity {args.sparsity}, device: {device}\n")
    print("| method | step (s) | time / dense | peak memory (MiB) | peak / LoRA | above model (MiB) | above model / LoRA | trainable params |")
    print("|---|---|---|---|---|---|---|---|")
    for method, r in results.items():
        time_ratio = f"{r['step_s'] / dense['step_s']:.2f}x" if dense else "—"
        peak_ratio = f"{r['peak_mib'] / lora['peak_mib']:.2f}x" if lora else "—"
        above_ratio = f"{r['peak_above_model_mib'] / lora['peak_above_model_mib']:.2f}x" if lora else "—"
        print(f"| {method} | {r['step_s']:.3f} | {time_ratio} | {r['peak_mib']:.0f} | {peak_ratio} | "
              f"{r['peak_above_model_mib']:.0f} | {above_ratio} | {r['trainable']:,} |")


if __name__ == "__main__":
    main()
