"""Model complexity: parameter counts and forward FLOPs of one image (seed 004 reports parameters;
SPEC §5.6; DESIGN.md "Evaluation outputs").

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (PyTorch's own counter, so no
extra dependency and every op torch dispatches is seen, including timm's fused attention).
Convention: **FLOPs = 2 × MACs** — one multiply-add counts as two floating-point operations —
for matrix multiplications, convolutions and attention; element-wise ops, normalisation,
activations and pooling are not counted (they are a few percent of a CNN's work). Many papers
quote MACs and call them FLOPs; divide ours by 2 to compare with those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgcls.models.classifier import count_parameters

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext

FLOPS_CONVENTION = (
    "FLOPs = 2 x MACs (torch.utils.flop_counter; matmul/conv/attention only), forward pass, batch of 1"
)


@torch.no_grad()
def forward_flops(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """FLOPs of ``model(example)``: ``total`` and ``head`` (``model.head``'s share, when the model has one)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    total = int(counter.get_total_flops())
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    head = sum(int(v) for v in per_module.get(f"{root}.head", {}).values())
    return {"total": total, "head": head}


def complexity_metrics(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, float | int | str]:
    """Parameters (total, backbone, head) and forward FLOPs of one ``input_shape`` image (fp32, model's device)."""
    device = next(model.parameters()).device
    example = torch.zeros((1, *input_shape), device=device)
    flops = forward_flops(model, example)
    head = getattr(model, "head", None)
    head_params = count_parameters(head) if isinstance(head, nn.Module) else 0
    return {
        "params": count_parameters(model),
        "params_head": head_params,
        "params_backbone": count_parameters(model) - head_params,
        "flops": flops["total"],
        "flops_head": flops["head"],
        "gflops": flops["total"] / 1e9,
        "flops_convention": FLOPS_CONVENTION,
    }


def complexity_extension(ctx: EvalContext) -> None:
    """METRIC_EXTENSIONS entry: parameter counts and FLOPs at the model's input size."""
    meta = ctx.preprocess_meta
    shape = (int(meta["channels"]), int(meta["image_size"]), int(meta["image_size"]))
    try:
        ctx.metrics.update(complexity_metrics(ctx.model, shape))
    except RuntimeError as exc:  # e.g. a batch-graph head that cannot run on a single image
        ctx.notes.append(
            f"FLOPs not counted: the model does not run on a single image ({str(exc).splitlines()[0]})"
        )
