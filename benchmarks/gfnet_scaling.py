"""Issue 14 target: does GFNet's global filter grow as N log N against attention's N² on this CPU?

GFNet blocks (seed 001's style: ``x + GF(LN x)``, ``x + MLP(LN x)``) against ViT blocks (timm's ``Block``:
``x + Attn(LN x)``, ``x + MLP(LN x)``) of the same width, depth and MLP ratio, on token grids of
8², 12², 16², 24², 32², 48² = 64 … 2,304 tokens, in one process:

- forward + backward time of the block stack (median of ``--reps`` steps after a warm-up) and of the
  token mixer alone (global filter vs multi-head self-attention, same input); attention both as timm
  runs it (PyTorch's fused scaled-dot-product attention, which never stores the N × N matrix) and
  explicitly (softmax(QKᵀ)V, the textbook form behind the seed's O(n²) claim);
- peak memory of one forward + backward (torch profiler memory timeline on the CPU: every live tensor —
  inputs, activations held for backward, gradients, parameters) and the activation bytes autograd
  saves for backward (``saved_tensors_hooks``, one count per storage);
- growth exponents ``b`` of ``time ∝ N^b`` fitted on log–log axes (all sizes and the upper half), and the
  crossover: the token count above which the ViT stack is slower than the GFNet stack (log-interpolated).

N log N shows as a local exponent slightly above 1 (1.1–1.2 over this range); N² as one near 2 once the
quadratic term dominates. Run with ``--quick`` for a smoke run (three sizes, one repetition).

    flock /tmp/imgcls-heavy.lock .venv/bin/python benchmarks/gfnet_scaling.py [--dim 128 --depth 2 --heads 4 --batch 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import Attention, Block
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results

from imgcls.models.backbones.gfnet import GFBlock, GlobalFilter

GRIDS = [8, 12, 16, 24, 32, 48]


class GFStack(nn.Module):
    def __init__(self, dim: int, depth: int, mlp_ratio: float, grid: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[GFBlock(dim, mlp_ratio, 0.0, 0.0, grid, grid, "seed", "seed") for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ViTStack(nn.Module):
    def __init__(self, dim: int, depth: int, mlp_ratio: float, heads: int, fused: bool = True) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        for block in self.blocks:
            block.attn.fused_attn = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def attention(dim: int, heads: int, fused: bool) -> Attention:
    attn = Attention(dim, heads, qkv_bias=True)
    attn.fused_attn = fused
    return attn


def step_time(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    """Median seconds of one forward + backward."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    step()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one step (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu" and t.untyped_storage().nbytes():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x).square().mean()
    out.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def peak_bytes(model: nn.Module, x: torch.Tensor) -> int | None:
    """Peak bytes of live CPU tensors during one forward + backward (torch profiler memory timeline)."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        model.zero_grad(set_to_none=True)
        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            model(x).square().mean().backward()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
        model.zero_grad(set_to_none=True)
        return int(np.asarray(sizes).sum(axis=1).max())
    except Exception as exc:  # a private API: report its absence rather than fail the timing
        print(f"profiler memory timeline unavailable: {exc}", file=sys.stderr)
        return None


def fit_exponent(n: list[int], t: list[float]) -> float:
    return float(np.polyfit(np.log(n), np.log(t), 1)[0])


def crossover(n: list[int], gf: list[float], vit: list[float]) -> float | None:
    """Token count where the ViT time first exceeds the GFNet time (log-log interpolation), None if never."""
    diff = [math.log(v / g) for g, v in zip(gf, vit, strict=True)]
    if diff[0] > 0:
        return float(n[0])  # ViT already slower at the smallest size
    for i in range(1, len(n)):
        if diff[i] > 0 >= diff[i - 1]:
            f = -diff[i - 1] / (diff[i] - diff[i - 1])
            return float(math.exp(math.log(n[i - 1]) + f * (math.log(n[i]) - math.log(n[i - 1]))))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared CPU)")
    ap.add_argument("--quick", action="store_true", help="three sizes, one repetition, no results files")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    grids = [8, 16, 24] if args.quick else GRIDS
    reps = 1 if args.quick else args.reps
    rows = []
    for g in grids:
        n = g * g
        torch.manual_seed(0)
        x = torch.randn(args.batch, n, args.dim, requires_grad=True)
        stacks = {
            "gfnet": GFStack(args.dim, args.depth, args.mlp_ratio, g),
            "vit": ViTStack(args.dim, args.depth, args.mlp_ratio, args.heads),
            "vit_explicit": ViTStack(args.dim, args.depth, args.mlp_ratio, args.heads, fused=False),
        }
        mixers = {
            "filter": GlobalFilter(args.dim, g, g),
            "attention": attention(args.dim, args.heads, fused=True),
            "attention_explicit": attention(args.dim, args.heads, fused=False),
        }
        row: dict = {"tokens": n, "grid": g}
        for name, model in {**stacks, **mixers}.items():
            row[f"{name}_s"] = step_time(model, x, reps)
        for name, model in stacks.items():
            row[f"{name}_saved_mb"] = saved_bytes(model, x) / 2**20
            peak = peak_bytes(model, x)
            row[f"{name}_peak_mb"] = None if peak is None else peak / 2**20
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    n = [r["tokens"] for r in rows]
    upper = slice(len(n) // 2, None)
    exps = {}
    for key in [k for k in rows[0] if k.endswith(("_s", "_mb"))]:
        vals = [r[key] for r in rows]
        if any(v is None for v in vals):
            continue
        exps[key] = {"all": fit_exponent(n, vals), "upper_half": fit_exponent(n[upper], vals[upper])}
    col = lambda key: [r[key] for r in rows]  # noqa: E731
    cross = {
        "stack_sdpa": crossover(n, col("gfnet_s"), col("vit_s")),
        "stack_explicit": crossover(n, col("gfnet_s"), col("vit_explicit_s")),
        "mixer_sdpa": crossover(n, col("filter_s"), col("attention_s")),
        "mixer_explicit": crossover(n, col("filter_s"), col("attention_explicit_s")),
    }
    nlogn = fit_exponent(n[upper], [v * math.log(v) for v in n[upper]])
    payload = {
        "args": vars(args),
        "machine": machine(),
        "rows": rows,
        "exponents": exps,
        "nlogn_reference_exponent_upper_half": nlogn,
        "crossover_tokens": cross,
    }
    fmt = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    md = [
        f"GFNet vs ViT blocks, width {args.dim}, depth {args.depth}, MLP ratio {args.mlp_ratio}, {args.heads} heads, "
        f"batch {args.batch}, forward + backward, {args.threads} CPU threads ({machine().get('cpu_model', '?')}); "
        f"median of {reps} steps. ViT = timm `Block` with PyTorch's fused scaled-dot-product attention (SDPA, "
        "memory-efficient: no N × N matrix kept); ViT-explicit = the same block computing softmax(QKᵀ)V "
        "explicitly (the textbook attention of the seed's O(n²) claim).",
        "",
        "| tokens | GFNet (ms) | ViT (ms) | ViT-explicit (ms) | global filter (ms) | attention (ms) | "
        "explicit attention (ms) | GFNet peak (MB) | ViT peak (MB) | ViT-explicit peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['tokens']:,} | {r['gfnet_s'] * 1e3:.1f} | {r['vit_s'] * 1e3:.1f} ({r['vit_s'] / r['gfnet_s']:.2f}×) | "
            f"{r['vit_explicit_s'] * 1e3:.1f} ({r['vit_explicit_s'] / r['gfnet_s']:.2f}×) | {r['filter_s'] * 1e3:.2f} | "
            f"{r['attention_s'] * 1e3:.2f} ({r['attention_s'] / r['filter_s']:.1f}×) | "
            f"{r['attention_explicit_s'] * 1e3:.2f} ({r['attention_explicit_s'] / r['filter_s']:.1f}×) | "
            f"{fmt(r['gfnet_peak_mb'])} | {fmt(r['vit_peak_mb'])} | {fmt(r['vit_explicit_peak_mb'])} |"
        )
    md += [
        "",
        "(×: relative to GFNet / to the global filter.) Growth exponents b of `cost ∝ N^b` (log–log least squares; "
        f"all sizes / the upper half, {n[upper][0]:,}–{n[-1]:,} tokens; N log N alone gives {nlogn:.2f} on the upper "
        "half, N² 2.00):",
        "",
        "| quantity | b (all) | b (upper half) |",
        "|---|---|---|",
        *[f"| {k} | {v['all']:.2f} | {v['upper_half']:.2f} |" for k, v in exps.items()],
        "",
        "Crossover, token count above which the ViT side is slower (log-interpolated; the smallest size when it is "
        f"slower everywhere): stacks {fmt(cross['stack_sdpa'], 0)} (SDPA) / {fmt(cross['stack_explicit'], 0)} "
        f"(explicit); mixers alone {fmt(cross['mixer_sdpa'], 0)} / {fmt(cross['mixer_explicit'], 0)}.",
        "",
        f"Verdict on this CPU: the global filter's time grows with exponent {exps['filter_s']['upper_half']:.2f} on the "
        f"upper half (N log N: {nlogn:.2f}); attention's with {exps['attention_s']['upper_half']:.2f} (SDPA) and "
        f"{exps['attention_explicit_s']['upper_half']:.2f} (explicit) against N²'s 2.00.",
    ]
    text = "\n".join(md)
    print(text)
    if not args.quick:
        write_results("gfnet_scaling", payload, text)


if __name__ == "__main__":
    main()
