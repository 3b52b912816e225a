"""Shared helpers for benchmark scripts: machine description, timing, and result files
(JSON for machines, Markdown for the README) under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
    }
    try:
        flags = Path("/proc/cpuinfo").read_text()
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["cpu_model"] = next(
            (line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
            "",
        )
    except OSError:
        pass
    return info


def time_steps(
    step: Callable[[], None], warmup: int, steps: int, sync: Callable[[], None] = lambda: None
) -> float:
    """Median seconds per call of ``step`` over ``steps`` timed calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
