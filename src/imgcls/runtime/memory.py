"""Will a training batch fit in memory? Checked before the first step on the CPU, where an oversized batch
(``train.batch_size: 100000``, or one that fits a GPU but not the host) is not an exception but the kernel's
OOM killer: SIGKILL in the middle of a step, no message, exit code 137. CUDA raises ``torch.OutOfMemoryError``
instead, which the CLI reports in one line.

The estimate measures rather than models: the bytes of the tensors autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``) in forward passes of two small batches; their difference is
the memory one more image costs, the rest (weights saved by reference) is fixed. The memory available is
the kernel's ``MemAvailable``, lowered by the headroom under a cgroup memory limit (a container's
``--memory``, a Kubernetes limit), which ``MemAvailable`` does not see. Not counted: the input pipeline's float
copies of the batch, an objective's extra forward passes (a distillation teacher runs without gradients), swap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from imgcls.runtime.cgroups import cgroup_folders

#: a training step's peak memory over the bytes its forward pass saves for backward, with a margin: 1.02-1.25
#: measured (quickstart and airbench recipes, fp32 and bf16 autocast, 4,096 images, the peak resident rise of one
#: step; ``python benchmarks/memory_estimate.py``, ``benchmarks/results/memory_estimate.md``)
PEAK_OVER_SAVED = 1.3

#: a cgroup v1 "no limit" is the largest page-aligned 63-bit number; anything this large means none
_NO_LIMIT = 1 << 60


def available_memory_bytes(
    proc: Path = Path("/proc/self"), meminfo: Path = Path("/proc/meminfo")
) -> int | None:
    """Bytes this process can still allocate: ``MemAvailable``, capped by the headroom (limit − usage) of
    every cgroup memory limit above it; None where neither can be read (not Linux)."""
    amounts: list[int] = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                amounts.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    for version, folder in cgroup_folders("memory", proc):
        headroom = _cgroup_headroom(folder, version)
        if headroom is not None:
            amounts.append(headroom)
    return min(amounts) if amounts else None


def _cgroup_headroom(folder: Path, version: str) -> int | None:
    """Limit − usage of one cgroup, the usage without the page cache the kernel reclaims under pressure
    (``inactive_file``, as ``docker stats`` and Kubernetes count a working set); None without a limit."""
    limit_file, usage_file, cache_key = (
        ("memory.max", "memory.current", "inactive_file")
        if version == "v2"
        else ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    )
    try:
        limit = (folder / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= _NO_LIMIT:
            return None
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        stats = dict(
            line.split()[:2] for line in (folder / "memory.stat").read_text().splitlines() if " " in line
        )
        usage -= min(usage, int(stats.get(cache_key, 0)))
    except (OSError, ValueError):
        pass
    return max(0, int(limit) - usage)


def saved_tensor_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``forward()`` runs (a tensor saved by
    two operations counts once; a view counts its own elements, not its whole storage)."""
    seen: set[tuple[int, int, torch.dtype]] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        try:
            key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        except RuntimeError:  # a tensor without plain data (e.g. sparse): count it
            key = (id(tensor), tensor.numel(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return total


def activation_bytes_per_image(forward_on: Callable[[int], object], small: int = 2) -> float:
    """Saved-for-backward bytes one more image adds, from forward passes on ``small`` and ``2 × small``
    images (``forward_on(n)`` runs the model on the first ``n``); at least 0."""
    one = saved_tensor_bytes(lambda: forward_on(small))
    two = saved_tensor_bytes(lambda: forward_on(2 * small))
    return max(0.0, (two - one) / small)


def readable_bytes(n: float) -> str:
    """``n`` bytes in GiB (one decimal), or in MiB below 1 GiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
