"""Inference speed of 2:4-sparse LLaMA projections over dense ones (cuSPARSELt / CUTLASS), on a CUDA GPU.

A stack of LLaMA-shaped decoder projections (q, k, v, o, gate, up, down; LLaMA-2-7B widths by
default) is made 2:4 sparse by magnitude (in every 4 consecutive inputs of a row, the 2 largest
weights stay), then ``pst.to_semi_structured`` converts its weights and the same forward is timed
dense and sparse. A merged PST model trained with an N:M pattern has the same matrices.

    python benchmarks/inference_2to4.py                         # 4 blocks, 4096 tokens, fp16
    python benchmarks/inference_2to4.py --dtype bfloat16 --tokens 512 --layers 2
    python benchmarks/inference_2to4.py --json out/inference_2to4.json

Without a CUDA GPU of compute capability >= 8.0 it says that the speed-up is not measured and
exits 0 (2:4 kernels do not exist on CPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pst
from pst.semi_structured import MIN_COMPUTE_CAPABILITY


class LlamaProjections(nn.Module):
    """The seven projections of LLaMA decoder blocks, chained so that every one runs on real activations
    (no attention, no norms: the matrix products that 2:4 sparsity speeds up)."""

    def __init__(self, hidden: int, intermediate: int, kv_hidden: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({
                "q_proj": nn.Linear(hidden, hidden, bias=False),
                "k_proj": nn.Linear(hidden, kv_hidden, bias=False),
                "v_proj": nn.Linear(hidden, kv_hidden, bias=False),
                "o_proj": nn.Linear(hidden, hidden, bias=False),
                "gate_proj": nn.Linear(hidden, intermediate, bias=False),
                "up_proj": nn.Linear(hidden, intermediate, bias=False),
                "down_proj": nn.Linear(intermediate, hidden, bias=False),
            })
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            block["k_proj"](x), block["v_proj"](x)  # computed and dropped: eager mode runs them
            x = x + block["o_proj"](block["q_proj"](x))
            x = x + block["down_proj"](nn.functional.silu(block["gate_proj"](x)) * block["up_proj"](x))
        return x


@torch.no_grad()
def prune_2_4_by_magnitude(model: nn.Module) -> None:
    """Zero the 2 smallest-magnitude weights of every 4 consecutive inputs of every Linear row."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            groups = module.weight.view(-1, 4)
            smallest = groups.abs().topk(2, dim=1, largest=False).indices
            groups.scatter_(1, smallest, 0.0)


def _time_ms(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        model(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_COMPUTE_CAPABILITY:
        return f"{torch.cuda.get_device_name()} has compute capability {capability}, 2:4 kernels need >= {MIN_COMPUTE_CAPABILITY}"
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--kv-hidden", type=int, default=4096, help="k/v output width (1024 for 8 KV heads of 128)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=4096, help="batch x sequence length of one forward")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    result: dict = {"shape": {k: getattr(args, k) for k in ("hidden", "intermediate", "kv_hidden", "layers", "tokens")},
                    "dtype": args.dtype}
    reason = unavailable_reason()
    if reason is not None:
        result.update(measured=False, reason=reason)
        print(f"2:4 inference speed-up: not measured ({reason}; semi-structured sparse kernels run only on "
              f"NVIDIA GPUs of compute capability >= {MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]})")
    else:
        dtype = getattr(torch, args.dtype)
        torch.manual_seed(0)
        model = LlamaProjections(args.hidden, args.intermediate, args.kv_hidden, args.layers).to("cuda", dtype).eval()
        prune_2_4_by_magnitude(model)
        x = torch.randn(args.tokens, args.hidden, device="cuda", dtype=dtype) * 0.1
        with torch.inference_mode():
            dense_ms = _time_ms(model, x, args.repeats, args.warmup)
            expected = model(x)
            converted = pst.to_semi_structured(model)
            sparse_ms = _time_ms(model, x, args.repeats, args.warmup)
            error = (model(x) - expected).abs().max().item() / expected.abs().max().item()
        result.update(
            measured=True, device=torch.cuda.get_device_name(), converted=len(converted),
            dense_ms=dense_ms, sparse_ms=sparse_ms, speedup=dense_ms / sparse_ms, max_relative_error=error,
        )
        print(f"{result['device']}, {args.dtype}, {args.layers} LLaMA blocks ({args.hidden}/{args.intermediate}), "
              f"{args.tokens} tokens, {len(converted)} Linear layers converted")
        print(f"dense {dense_ms:.3f} ms | 2:4 {sparse_ms:.3f} ms | speed-up {dense_ms / sparse_ms:.2f}x "
              f"| max relative difference {error:.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
