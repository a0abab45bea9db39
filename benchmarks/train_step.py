"""One training step (forward + backward + AdamW) per method, side by side, as ratios.

Each method runs in its own process (clean peak-memory numbers) on the same random batch
and random-init model, and the processes take their steps in turn (dense, lora, official,
pst, dense, ...), so that a load change on a shared machine hits every method alike; the
parent prints one table: time per step, x dense, x LoRA, x the official approach, peak
memory and peak x LoRA.

    python benchmarks/train_step.py                                  # CPU, BERT-base, batch 8 x 128, fp32
    python benchmarks/train_step.py --device cuda                    # BERT-base, batch 32 x 128
    python benchmarks/train_step.py --device cuda --precision bf16   # autocast bf16, fp32 weights
    python benchmarks/train_step.py --device cuda --shape gpt2-medium --precision bf16
    python benchmarks/train_step.py --device cuda --shape llama-7b-layers --precision bf16-weights
    python benchmarks/train_step.py --layers 2 --steps 2             # a quick look
    python benchmarks/train_step.py --count-ops --precision bf16     # + kernel launches and bytes per step
    python benchmarks/train_step.py --compile                        # every method under torch.compile
    TRITON_INTERPRET=1 python benchmarks/train_step.py --count-ops --kernels triton --steps 1 --warmup 1
                                                                     # the launches of PST's fused CUDA path, on CPU
    python benchmarks/train_step.py --device cuda --capturable       # each whole step replayed as a CUDA graph
    python benchmarks/train_step.py --methods dense pst --pst-from ../before   # PST now and in another checkout

Shapes: ``bert-base`` (12 encoder layers, hidden 768, FFN 3072, sequence classification),
``gpt2-medium`` (24 layers, hidden 1024, Conv1D with fused q/k/v, language modelling),
``llama-7b-layers`` (a few LLaMA-7B-shaped decoder layers: hidden 4096, FFN 11008, 32 heads,
vocabulary 32000; language modelling). Precision: ``fp32``; ``bf16`` and ``fp16``:
``torch.autocast`` over fp32 weights (fp16 with gradient scaling); ``bf16-weights``: the
model held wholly in bf16, as LLM users load it.

Methods: ``dense`` (full fine-tuning), ``lora`` (peft's LoRA, r = 8, same modules),
``official`` (PST computed as the official code does: full argsort of every score matrix on
every call, autograd through every intermediate; ``official_style.py``), ``pst``, and on
request ``movement``, ``magnitude`` and ``pst-threshold`` (PST with ``mask_storage="threshold"``:
no mask bits, the score recomputed in every pass). Pruning methods run at the target sparsity (default
0.9), where every matrix needs its threshold at every step. Peak memory: CUDA's
``max_memory_allocated``; on CPU the process's peak RSS, which glibc's heap fragmentation
moves by a few percent from run to run.

``--count-ops`` records one more step of each method with a ``TorchDispatchMode``
(``op_count.py``), the mask selection forced to the sync-free accelerator strategy, and
reports the ops that launch kernels, their ratio to dense, the bytes moved by PST's own ops
per sparsified weight, and the host synchronisations in pst code: what decides GPU step
time, counted exactly on a CPU. ``--compile`` wraps each model in ``torch.compile``
(inductor) before the warm-up steps, which then include compilation. ``--kernels`` picks
PST's implementation (``pst.kernels``): ``auto`` (fused Triton kernels on CUDA, the torch
reference elsewhere), ``reference``, or ``triton``, which on a CPU runs the kernels in Triton's
interpreter (``TRITON_INTERPRET=1``): its launch counts and bytes are the CUDA path's, its
times mean nothing.

``--capturable`` gives the pruning methods a capturable schedule (``pst.SparsityScheduler(...,
capturable=True)``, stepped after each optimizer step: the mask rebuild then happens there,
selected by ``"sort"`` from counts held on the device) and AdamW ``capturable=True``; on CUDA
every method's whole step (forward, backward, optimizer, schedule) is captured once in a CUDA
graph after the warm-up and the timed steps replay it. On a CPU it only changes what
``--count-ops`` counts. Not with ``official`` (host-side sorting) nor fp16 (the gradient
scaler reads its scale back).

``--pst-from CHECKOUT`` adds PST imported from another checkout of this repository (``git
worktree add ../before <commit>``) as one more method, ``pst@before``: a change measured against
the code before it in the same run, where separate runs on a shared machine differ by more than
the change (the same code measured 1.02x and 1.15x dense in two runs).

On a CPU shared with other work, pass ``--threads 1``: with two threads, a descheduled
OpenMP thread stalls every parallel region, and PST (many more, smaller parallel regions
than dense) was measured at 2.5x dense that way on a busy machine, 1.0x on a quiet one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("dense", "lora", "official", "pst", "pst-threshold", "movement", "magnitude")
DEFAULT_METHODS = ("dense", "lora", "official", "pst")
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-weights")
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# (layers, batch on CPU, batch on CUDA, sequence length)
SHAPES = {"bert-base": (12, 8, 32, 128), "gpt2-medium": (24, 8, 8, 512), "llama-7b-layers": (4, 4, 4, 512)}


def _model(args):
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig
    from transformers import LlamaForCausalLM

    if args.shape == "bert-base":
        config = BertConfig(num_hidden_layers=args.layers, hidden_size=768, num_attention_heads=12,
                            intermediate_size=3072, num_labels=2)
        return BertForSequenceClassification(config)
    if args.shape == "gpt2-medium":
        return GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=1024, n_head=16, n_positions=1024))
    config = LlamaConfig(num_hidden_layers=args.layers, hidden_size=4096, intermediate_size=11008,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
    return LlamaForCausalLM(config)


def _build(method: str, args):
    import torch

    import pst
    from official_style import official_sparsify

    torch.manual_seed(0)
    with torch.device(args.device):
        model = _model(args)
    if args.precision == "bf16-weights":
        model.to(torch.bfloat16)
    config = pst.PSTConfig(method=method if method in pst.methods.METHODS else "pst", sparsity=args.sparsity,
                           target_modules=LLAMA_TARGETS if args.shape == "llama-7b-layers" else None,
                           mask_storage="threshold" if method == "pst-threshold" else "bits")
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        resolved = config.resolved_for(model.config.model_type)
        heads = ["classifier"] if args.shape == "bert-base" else None
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, modules_to_save=heads,
                                                 target_modules=resolved.target_modules,
                                                 fan_in_fan_out=args.shape == "gpt2-medium"))
    elif method == "official":
        official_sparsify(model, config, args.sparsity)
    else:
        pst.sparsify(model, config)
        pst.set_sparsity(model, args.sparsity)
    return model.train()


def _batch(args):
    import torch

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=generator)
    labels = torch.randint(0, 2, (args.batch,), generator=generator) if args.shape == "bert-base" else ids
    return ids.to(args.device), labels.to(args.device)


def worker(method: str, args) -> None:
    """Build one method's model, then run one timed step per "step" line read from stdin."""
    import contextlib

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import pst

    pst.kernels.set_mode(args.kernels)
    cuda = args.device.startswith("cuda")
    model = _build(method, args)
    params = [p for p in model.parameters() if p.requires_grad]
    sparsified = _sparsified_weights(model, args)
    scheduler = None
    if args.capturable and method in ("pst", "movement", "magnitude"):  # a constant schedule at the target
        scheduler = pst.SparsityScheduler(model, total_steps=1000, warmup_fraction=0.0, cooldown_fraction=0.0,
                                          initial_sparsity=args.sparsity, final_sparsity=args.sparsity,
                                          capturable=True)
    if args.compile:
        model = torch.compile(model)
    # foreach=True as on CUDA by default; capturable keeps AdamW's step counts on the device.
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True, capturable=args.capturable and cuda)
    ids, labels = _batch(args)
    device_type = "cuda" if cuda else "cpu"
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device_type) if args.precision == "fp16" else None

    def step():
        # A CUDA graph cannot hold autocast's cache of cast weights (torch's CUDA graph notes).
        context = (torch.autocast(device_type, dtype=autocast_dtype, cache_enabled=not args.capturable)
                   if autocast_dtype else contextlib.nullcontext())
        with context:
            loss = model(input_ids=ids, labels=labels).loss
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()

    eager_step = step  # what --count-ops records: a replayed graph dispatches no op
    if args.capturable and cuda:
        step = _captured(step, args.warmup)

    rss_before = _current_rss_mib()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated() / 2**20
    _reply(pst.__file__)  # ready; where pst came from
    times, cpu_times = [], []
    counted = None
    for line in sys.stdin:
        if line.strip() == "count":
            counted = _count_step(eager_step, sparsified)
            _reply("counted")
            continue
        if line.strip() != "step":
            break
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        _reply(times[-1])
    result = {"method": method, "step_s": statistics.median(times[args.warmup:]), "times_s": times,
              "cpu_s": statistics.median(cpu_times[args.warmup:]),
              "trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in model.parameters())}
    if cuda:
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["above_model_mib"] = result["peak_mib"] - allocated_before
        result["device_name"] = torch.cuda.get_device_name()
    else:
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["above_model_mib"] = result["peak_mib"] - rss_before
        result["device_name"] = f"cpu ({torch.get_num_threads()} threads)"
    result["torch"] = torch.__version__
    result["sparsified_weights"] = sparsified
    if counted:
        result.update(counted)
    _reply(result)


def _captured(step, warmup: int):
    """``step`` captured in a CUDA graph after ``warmup`` steps on a side stream (torch's recipe
    for whole-network capture); returns what replays it."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _sparsified_weights(model, args) -> int:
    """Entries of the matrices a method wraps (the targets of PST's defaults, for every method)."""
    import pst

    target = pst.PSTConfig(target_modules=LLAMA_TARGETS if args.shape == "llama-7b-layers" else None)
    resolved = target.resolved_for(model.config.model_type)
    total = 0
    for name, module in model.named_modules():
        if pst.surgery.matches_target(name.replace("base_model.model.", ""), resolved.target_modules):
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dim() == 2:
                total += weight.numel()
    return total


def _count_step(step, sparsified: int) -> dict:
    """One step under the op counter, selection as on accelerators (sync-free)."""
    import pst
    from op_count import OpCounter

    original = pst.masking.default_strategy
    pst.masking.default_strategy = lambda device: "topk"
    try:
        with OpCounter() as counter:
            step()
    finally:
        pst.masking.default_strategy = original
    return {"launches": counter.launches, "gb_moved": counter.total_bytes / 1e9, "pst_launches": sum(counter.pst_ops.values()),
            "pst_bytes_per_weight": counter.pst_bytes / max(sparsified, 1), "pst_syncs": counter.pst_syncs}


def _reply(value) -> None:
    print(json.dumps(value), flush=True)


def measure(args) -> dict:
    """Time every method in its own process, one step each in turn, so load changes hit all alike."""
    settings = [f"--{name}={getattr(args, name)}" for name in
                ("device", "shape", "precision", "layers", "batch", "seq", "sparsity", "steps", "warmup", "threads",
                 "kernels")]
    settings += [flag for flag, on in (("--compile", args.compile), ("--count-ops", args.count_ops),
                                       ("--capturable", args.capturable)) if on]
    # (label, method, checkout to import pst from): --pst-from adds PST of other versions.
    runs = [(method, method, None) for method in args.methods]
    runs += [(f"pst@{Path(code).resolve().name}", "pst", Path(code).resolve()) for code in args.pst_from]
    workers = {}
    for label, method, code in runs:  # built one after the other: peak build memory stays one model's
        env = None
        if code is not None:  # the checkout's pst before the installed one
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
        workers[label] = subprocess.Popen([sys.executable, __file__, "--worker", method, *settings],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        imported = Path(_expect(workers, label))
        if code is not None and code not in imported.parents:
            sys.exit(f"{label} imported pst from {imported.parent}, not from {code}")
    for _ in range(args.warmup + args.steps):
        for method, process in workers.items():
            process.stdin.write("step\n")
            process.stdin.flush()
            _expect(workers, method)
    if args.count_ops:
        for method, process in workers.items():
            process.stdin.write("count\n")
            process.stdin.flush()
            _expect(workers, method)
    results = {}
    for label, process in workers.items():
        process.stdin.write("report\n")
        process.stdin.flush()
        results[label] = _expect(workers, label)
        process.wait()
        print(f"measured {label}: {1000 * results[label]['step_s']:.1f} ms/step", file=sys.stderr)
    return results


def _expect(workers: dict, method: str):
    line = workers[method].stdout.readline()
    if not line:
        for process in workers.values():
            process.kill()
        sys.exit(f"the {method} worker failed (its error is printed above)")
    return json.loads(line)


def _current_rss_mib() -> float:
    """Resident memory now (Linux); the peak so far where /proc is missing."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ratio(value: float, reference: dict | None, key: str) -> str:
    return f"{value / reference[key]:.2f}x" if reference and reference[key] > 0 else "—"


def table(results: dict, args) -> str:
    """One Markdown table; on CPU also the process CPU time, which a busy shared machine disturbs less."""
    dense, lora, official = (results.get(m) for m in ("dense", "lora", "official"))
    device = next(iter(results.values()))["device_name"]
    cpu = not args.device.startswith("cuda")
    lines = [
        f"One training step, {args.shape} ({args.layers} layers), batch {args.batch}x{args.seq}, {args.precision}, "
        f"sparsity {args.sparsity}, {args.device}: {device}; median of {args.steps} steps after {args.warmup} "
        f"warm-up, methods stepping in turn; PST kernels: {args.kernels}"
        + ("; capturable schedule" + (", steps replayed as CUDA graphs" if not cpu else "") if args.capturable else ""),
        "",
        "| method | step (ms) | × dense | × LoRA | × official | " + ("CPU time × dense | " if cpu else "")
        + "peak memory (MiB) | peak × LoRA | above model × LoRA | trainable params |",
        "|---|---|---|---|---|" + ("---|" if cpu else "") + "---|---|---|---|",
    ]
    for method, r in results.items():
        lines.append(
            f"| {method} | {1000 * r['step_s']:.1f} | {_ratio(r['step_s'], dense, 'step_s')} | "
            f"{_ratio(r['step_s'], lora, 'step_s')} | {_ratio(r['step_s'], official, 'step_s')} | "
            + (f"{_ratio(r['cpu_s'], dense, 'cpu_s')} | " if cpu else "")
            + f"{r['peak_mib']:.0f} | {_ratio(r['peak_mib'], lora, 'peak_mib')} | "
            f"{_ratio(r['above_model_mib'], lora, 'above_model_mib')} | {r['trainable']:,} |"
        )
    if any("launches" in r for r in results.values()):
        selection = "sort, counts on the device" if args.capturable else "as on accelerators, sync-free"
        lines += ["", f"Kernel-launching ops of one step (mask selection {selection}):", "",
                  "| method | launching ops | × dense | PST's own ops | PST's own bytes per sparsified weight | "
                  "syncs in pst code | GB moved |", "|---|---|---|---|---|---|---|"]
        for method, r in results.items():
            lines.append(f"| {method} | {r['launches']:,} | {_ratio(r['launches'], dense, 'launches')} | "
                         f"{r['pst_launches']:,} | {r['pst_bytes_per_weight']:.0f} | {r['pst_syncs']} | "
                         f"{r['gb_moved']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bert-base")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--layers", type=int, help="number of layers (default: the shape's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the shape's, per device)")
    parser.add_argument("--seq", type=int, help="sequence length (default: the shape's)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, help="timed steps, median reported (default: 10 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 3 on CUDA, 2 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--count-ops", action="store_true", help="also count kernel launches and bytes of one step")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (inductor)")
    parser.add_argument("--kernels", choices=("auto", "reference", "triton"), default="auto",
                        help="PST's implementation (pst.kernels); triton on a CPU needs TRITON_INTERPRET=1")
    parser.add_argument("--capturable", action="store_true",
                        help="a capturable schedule and optimizer; on CUDA, every step replayed as a CUDA graph")
    parser.add_argument("--pst-from", nargs="+", default=[], metavar="CHECKOUT",
                        help="also time PST as imported from these checkouts of pst (another version, e.g. from "
                             "`git worktree add`), side by side in the same run, as pst@<checkout's name>")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    missing = [code for code in args.pst_from if not (Path(code) / "pst" / "__init__.py").is_file()]
    if missing:
        parser.error(f"--pst-from needs checkouts holding a pst package: {', '.join(missing)}")
    if args.capturable and not args.worker and ("official" in args.methods or args.precision == "fp16"):
        parser.error("--capturable takes neither the official method (host-side sorting) nor fp16 (gradient scaling)")
    layers, cpu_batch, cuda_batch, seq = SHAPES[args.shape]
    cuda = args.device.startswith("cuda")
    args.layers = args.layers or layers
    args.batch = args.batch or (cuda_batch if cuda else cpu_batch)
    args.seq = args.seq or seq
    args.steps = args.steps or (10 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 2)
    if args.worker:
        worker(args.worker, args)
        return
    results = measure(args)
    print(table(results, args))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
