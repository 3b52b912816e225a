"""evaluation/complexity.py: parameter counts and FLOPs (2 × MACs) against hand-computed values."""

from __future__ import annotations

import torch
from torch import nn

from imgcls.evaluation.complexity import complexity_metrics


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_flops_and_params_of_linear_layers_match_hand_count():
    m = complexity_metrics(TinyClassifier(), (3, 2, 2))
    # Linear(12→5): 12·5 MACs; Linear(5→3): 5·3 MACs; FLOPs = 2 × MACs.
    assert m["flops"] == 2 * (12 * 5 + 5 * 3)
    assert m["flops_head"] == 2 * 5 * 3
    assert m["params"] == (12 * 5 + 5) + (5 * 3 + 3)
    assert m["params_head"] == 5 * 3 + 3 and m["params_backbone"] == 12 * 5 + 5
    assert m["gflops"] == m["flops"] / 1e9


def test_conv_flops_match_hand_count():
    conv = nn.Conv2d(1, 4, kernel_size=3, padding=1, bias=False)
    m = complexity_metrics(conv, (1, 8, 8))
    assert m["flops"] == 2 * (8 * 8) * 4 * (3 * 3 * 1)
