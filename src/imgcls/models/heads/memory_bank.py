"""FIFO memory bank of labelled training embeddings: the graph that FCH's ``memory`` inference mode attaches
each test sample to (seed 000; SPEC §1.5, our [INFERRED] answer to batch-dependent predictions).

The bank is made of buffers (saved in the state_dict), filled under ``no_grad``; the newest ``size``
samples are kept, the oldest replaced first.
"""

from __future__ import annotations

import torch
from torch import nn


class MemoryBank(nn.Module):
    """``size`` slots of ``width``-dimensional embeddings with their labels, written round-robin.

    Buffers: ``features (size, width)``, ``labels (size,)``, ``ptr`` (next slot) and ``filled`` (slots in use).
    """

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        self.register_buffer("features", torch.zeros(size, width))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def extra_repr(self) -> str:
        return f"size={self.size}, width={self.features.shape[1]}"

    @torch.no_grad()
    def push(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch (only its last ``size`` samples when it is larger than the bank)."""
        if self.size == 0:
            return
        x, labels = x[-self.size :], labels[-self.size :]
        n = x.shape[0]
        index = (self.ptr + torch.arange(n, device=x.device)) % self.size
        self.features[index] = x.to(self.features.dtype)
        self.labels[index] = labels.to(self.labels.device, torch.long)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_((self.filled + n).clamp_max(self.size))

    @torch.no_grad()
    def reset(self) -> None:
        self.ptr.zero_()
        self.filled.zero_()

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled slots: ``(features (M, width) in fp32, labels (M,))``."""
        filled = int(self.filled)
        return self.features[:filled].float(), self.labels[:filled]
