"""Why PST trails the pruning baselines in the smoke tables: the sweeps of docs/smoke_findings.md.

Two commands, both on the smoke profile's tiny models and bundled real data:

    # accuracy / BLEU of each (task, method, learning rate, epochs, head) through the runners
    python benchmarks/smoke_gap.py sweep --out out-gap --task qnli --methods pst magnitude movement dense \
        --lrs 3e-4 1e-3 3e-3 1e-2 --epochs 3
    # what PST's score terms grow to relative to |W'|, and how far its mask moves from magnitude pruning's
    python benchmarks/smoke_gap.py probe --task qnli --lr 3e-3 --epochs 3

``probe`` trains PST with the Trainer (same data, model, schedule and optimizer as a runner)
and, at a few steps, reports per-matrix means over the sparsified matrices of
|W|, |beta UV|, |W'|, |alpha1 AB|, |alpha2 (R 1^T + 1 C^T)|, and the share of the weights
PST keeps at the target sparsity that magnitude pruning of W' (and of the pre-trained W)
would prune. Run with OMP_NUM_THREADS=1 on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _sweep(args) -> None:
    from pst.repro.configs import GlueRunConfig, NlgRunConfig
    from pst.repro.runners.glue import run_glue
    from pst.repro.runners.nlg import run_nlg

    out = Path(args.out)
    nlg = args.task in ("e2e", "dart", "webnlg")
    for method in args.methods:
        for lr in args.lrs:
            for epochs in args.epochs:
                pst = {} if args.head else {"train_head": False}
                if nlg:
                    config = NlgRunConfig(task=args.task, model="tiny:gpt2", method=method,
                                          data_source=args.data_source, learning_rate=lr, epochs=epochs,
                                          batch_size=8, max_length=128, warmup_steps=5, max_eval_inputs=args.eval_inputs,
                                          num_beams=4, max_new_tokens=32, pst=pst)
                    started = time.time()
                    record = run_nlg(config, out / "results", out / "work")
                    metrics = record["metrics"]["all"]
                    value = {k: metrics.get(k) for k in ("BLEU", "METEOR", "TER", "ROUGE_L")}
                else:
                    config = GlueRunConfig(task=args.task, model=f"tiny:{args.family}",
                                           method=method, learning_rate=lr, epochs=epochs, batch_size=16,
                                           data_source=args.data_source, pst=pst)
                    started = time.time()
                    record = run_glue(config, out / "results", out / "work")
                    value = {record["selected"]["metric"]: round(100 * record["selected"]["value"], 1),
                             "last": round(100 * record["evaluations"][-1]["metrics"][
                                 next(iter(record["evaluations"][-1]["metrics"]))][record["selected"]["metric"]], 1)}
                print(json.dumps({"task": args.task, "method": method, "lr": lr, "epochs": epochs, "head": args.head,
                                  **value, "steps": record["train_steps"], "wall_s": round(time.time() - started, 1)}),
                      flush=True)


@torch.no_grad()
def score_terms(model, target_sparsity: float) -> dict[str, float]:
    """Means over the sparsified matrices of each term of PST's weight and score."""
    import pst

    sums: dict[str, float] = {}
    layers = list(pst.sparse_layers(model))
    for _, layer in layers:
        w = (layer.weight.t() if layer.transposed else layer.weight).float()
        blocks, (n, k) = layer.blocks, w.shape
        w = w.reshape(blocks, n // blocks, k)
        uv = (layer.U.reshape(blocks, n // blocks, -1) @ layer.V.reshape(blocks, -1, k)) * layer.beta
        updated = w + uv
        ab = layer.alpha1 * (layer.A.reshape(blocks, n // blocks, -1) @ layer.B.reshape(blocks, -1, k))
        rc = layer.alpha2 * (layer.R.reshape(blocks, n // blocks, 1) + layer.C.reshape(blocks, 1, k))
        score = updated.abs() + ab + rc
        keep = max(1, round((1 - target_sparsity) * (n // blocks) * k))
        kept = _top(score, keep)
        terms = {"|W|": w.abs().mean(), "|bUV|": uv.abs().mean(), "|W'|": updated.abs().mean(),
                 "|a1AB|": ab.abs().mean(), "|a2(R+C)|": rc.abs().mean(),
                 "kept_not_in_magnitude(W')": 1 - (kept & _top(updated.abs(), keep)).sum() / kept.sum(),
                 "kept_not_in_magnitude(W)": 1 - (kept & _top(w.abs(), keep)).sum() / kept.sum()}
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value) / len(layers)
    return {key: round(value, 4) for key, value in sums.items()}


def _top(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` largest entries of each block."""
    flat = values.reshape(values.shape[0], -1)
    index = flat.topk(keep, dim=1).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, index, True).reshape(values.shape)


def _probe(args) -> None:
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

    import pst
    from pst.repro.data.glue import get_task, load_glue, tokenize_glue
    from pst.repro.data.nlg import LMDataCollator, build_lm_features, load_nlg
    from pst.repro.models import load_model, load_tokenizer
    from pst.repro.runners.model_source import resolve_model

    set_seed(0)
    nlg = args.task in ("e2e", "dart", "webnlg")
    path = resolve_model("tiny:gpt2" if nlg else f"tiny:{args.family}", Path(args.models))
    tokenizer = load_tokenizer(path)
    config = pst.PSTConfig(method="pst", sparsity=args.sparsity, **({} if args.head else {"train_head": False}))
    if nlg:
        data = load_nlg(args.task, args.data_source, splits=("train",))
        train, collate = build_lm_features(data["train"], tokenizer, 128), LMDataCollator(tokenizer)
        model = load_model(path, "causal-lm")
    else:
        spec = get_task(args.task)
        train = tokenize_glue(load_glue(args.task, args.data_source, splits=("train",)), tokenizer, args.task)["train"]
        collate = DataCollatorWithPadding(tokenizer)
        model = load_model(path, "sequence-classification", num_labels=spec.num_labels, is_regression=spec.is_regression)
    pst.sparsify(model, config)
    steps_per_epoch = -(-len(train) // args.batch_size)
    total = steps_per_epoch * args.epochs
    marks = sorted({0, 1, 5, *(round(total * f) for f in (0.1, 0.25, 0.5, 0.75, 1.0))})

    class Probe(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            if state.global_step in marks:
                print(json.dumps({"step": state.global_step, **score_terms(model, args.sparsity)}), flush=True)

        def on_train_end(self, targs, state, control, **kw):
            print(json.dumps({"step": state.global_step, **score_terms(model, args.sparsity)}), flush=True)

    targs = TrainingArguments(output_dir=str(Path(args.models) / "probe"), per_device_train_batch_size=args.batch_size,
                              learning_rate=args.lr, num_train_epochs=args.epochs, lr_scheduler_type="linear",
                              warmup_steps=5 if nlg else 0, save_strategy="no", report_to=[], disable_tqdm=True,
                              use_cpu=True, logging_strategy="no")
    print(json.dumps({"task": args.task, "lr": args.lr, "epochs": args.epochs, "steps": total, "head": args.head}))
    Trainer(model=model, args=targs, train_dataset=train, data_collator=collate,
            callbacks=[pst.SparsityCallback(), Probe()]).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sweep", "probe"):
        p = sub.add_parser(name)
        p.add_argument("--task", required=True)
        p.add_argument("--family", default="bert")
        p.add_argument("--data-source", default="bundled")
        p.add_argument("--no-head", dest="head", action="store_false", help="freeze the task head (official GLUE script)")
    sweep, probe = sub.choices["sweep"], sub.choices["probe"]
    sweep.add_argument("--out", required=True)
    sweep.add_argument("--methods", nargs="+", default=["pst", "magnitude", "movement", "dense"])
    sweep.add_argument("--lrs", nargs="+", type=float, default=[3e-3])
    sweep.add_argument("--epochs", nargs="+", type=int, default=[3])
    sweep.add_argument("--eval-inputs", type=int, default=40)
    probe.add_argument("--models", default="out-gap/work/models")
    probe.add_argument("--lr", type=float, default=3e-3)
    probe.add_argument("--epochs", type=int, default=3)
    probe.add_argument("--batch-size", type=int, default=16)
    probe.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    (_sweep if args.command == "sweep" else _probe)(args)


if __name__ == "__main__":
    main()
