"""Numeric precision and backend switches: autocast dtype, grad scaling, TF32, cudnn.benchmark,
deterministic mode.

Training decides ``precision: auto`` and ``channels_last: auto`` by timing real steps
(``engine/autotune.py``) and records the choice in the run; evaluation and prediction reuse it.
Without a measurement (e.g. ``resolve_precision`` on a config alone) ``auto`` means bf16 autocast on
CUDA devices that support it and fp32 elsewhere: a CPU flag does not decide speed (bf16 made the
quickstart CNN 1.6–2× faster on the reference CPU but timm's ResNet-18 at 28 px ≈ 12 % slower).
bf16 autocast keeps weights, optimiser state and the loss in fp32 (no grad scaler needed).
"""

from __future__ import annotations

import contextlib
import os

import torch

from imgcls.config import TrainConfig
from imgcls.runtime.cpu_threads import fit_torch_threads


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    from imgcls.errors import ConfigError

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device={name} but only {torch.cuda.device_count()} GPU(s) are visible; use cuda:0.."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name} but MPS is not available here; use train.device=cpu or auto")
    return device


def resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "fp16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    else:  # torch's default is a thread per core of the machine, also where a CPU quota or affinity allows fewer
        fit_torch_threads()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True


def channels_last_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """Explicit ``channels_last``, else off (training measures it; see ``engine/autotune.py``)."""
    return bool(cfg.channels_last)
