"""Any timm model as a backbone (Wightman, PyTorch Image Models): ``timm:<model name>``.

The model is created without its classifier (``num_classes=0``), so ``forward`` returns pooled
features of width ``num_features``. Hub weights load with ``pretrained: true`` (needs internet);
local weights with ``pretrained_file`` (safetensors or a ``weights_only`` torch file, loaded by
timm's own loader, which also adapts ``in_chans`` and drops the classifier).
Token models (ViT, DeiT, DINOv2) also expose ``forward_tokens``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import ConfigDict, Field, model_validator
from torch import nn

from imgcls.errors import ConfigError, DataError
from imgcls.registry import BACKBONES, ComponentArgs
from imgcls.runtime.checkpoint import check_plain_tensor_file
from imgcls.runtime.timm_weights import checked_timm_weights_file

#: seconds to wait for a TCP connection to the weights hub before treating the machine as offline
HUB_PROBE_TIMEOUT_S = 3.0

#: create_model arguments imgcls sets itself (from data.channels, model.pretrained, model.pretrained_file)
RESERVED = (
    "name",
    "model_name",
    "in_chans",
    "num_classes",
    "pretrained",
    "pretrained_file",
    "pretrained_cfg_overlay",
)


class TimmArgs(ComponentArgs):
    """``model.backbone_args`` of ``timm:<model>``: keyword arguments of ``timm.create_model``.

    The common ones are typed (None: the model's own default); any other key is passed to timm as it is
    (models differ in what they accept), and timm rejects what the model does not take when it is built.
    """

    model_config = ConfigDict(extra="allow")

    drop_rate: float | None = Field(
        None, ge=0.0, lt=1.0, description="dropout before the (removed) classifier"
    )
    drop_path_rate: float | None = Field(None, ge=0.0, lt=1.0, description="stochastic depth")
    img_size: int | None = Field(
        None, gt=0, description="input size of ViT-like models (positions are resized)"
    )
    global_pool: str | None = Field(None, description="pooling of the features (e.g. avg, token, map)")

    @model_validator(mode="after")
    def _not_reserved(self) -> TimmArgs:
        taken = [k for k in self.model_extra or {} if k in RESERVED]
        if taken:
            raise ValueError(
                f"{', '.join(taken)} is set by imgcls (data.channels, model.pretrained, model.pretrained_file), "
                "not in backbone_args"
            )
        return self

    def kwargs(self) -> dict[str, Any]:
        typed = {k: v for k, v in super().kwargs().items() if v is not None}
        return {**typed, **(self.model_extra or {})}


def hub_host() -> str:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the weights hub answers a TCP connection within ``timeout`` seconds (DNS included).
    Without this probe an offline machine spends ~50 s in huggingface_hub's retries before failing."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((hub_host(), 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


@contextlib.contextmanager
def hub_offline(offline: bool):
    """huggingface_hub's offline mode (cache only, no retries) while ``offline``."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


class TimmBackbone(nn.Module):
    def __init__(
        self, name: str, in_chans: int, pretrained: bool = False, pretrained_file: str | None = None, **kwargs
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
            raise ConfigError(
                f"timm has no model '{name}'" + (f"; similar: {', '.join(close)}" if close else "")
            )
        overlay = None
        offline = False
        if pretrained_file:
            if not Path(pretrained_file).is_file():
                raise DataError(f"model.pretrained_file '{pretrained_file}' does not exist")
            check_plain_tensor_file(pretrained_file, "model.pretrained_file")
            overlay = {"file": str(pretrained_file)}
            pretrained = True
        elif pretrained:
            offline = not hub_reachable()
        try:
            with (
                hub_offline(offline),
                checked_timm_weights_file(
                    pretrained_file,
                    "model.pretrained_file",
                    f"timm:{name}" + (f" with model.backbone_args {kwargs}" if kwargs else ""),
                    "use the weights of that model, or change model.backbone / backbone_args to match them",
                ),
            ):
                self.model = timm.create_model(
                    name,
                    pretrained=pretrained,
                    num_classes=0,
                    in_chans=in_chans,
                    pretrained_cfg_overlay=overlay,
                    **kwargs,
                )
        except TypeError as exc:
            raise ConfigError(f"bad model.backbone_args for timm:{name}: {exc}") from None
        except (OSError, RuntimeError, ValueError) as exc:
            if pretrained and not pretrained_file:
                why = (
                    f"no network ({hub_host()} unreachable within {HUB_PROBE_TIMEOUT_S:g} s) and they are not in the local cache"
                    if offline
                    else type(exc).__name__
                )
                raise DataError(
                    f"could not fetch pretrained weights for timm:{name} ({why}); download them on a machine with internet "
                    "and copy ~/.cache/huggingface here, or set model.pretrained_file=<file> (or model.pretrained=false)"
                ) from None
            raise
        self.num_features = int(self.model.num_features)
        self.pretrained_cfg = dict(getattr(self.model, "pretrained_cfg", {}) or {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_tokens(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Token outputs ``(B, N, D)`` of the given blocks (prefix tokens dropped) for token models."""
        if not hasattr(self.model, "forward_intermediates"):
            raise ConfigError(f"{type(self.model).__name__} has no token outputs")
        outs = self.model.forward_intermediates(x, indices=layers, output_fmt="NLC", intermediates_only=True)
        return dict(zip(layers, outs, strict=True))


@BACKBONES.register("timm", prefix=True, args=TimmArgs)
def timm_backbone(
    name: str, in_chans: int = 3, pretrained: bool = False, pretrained_file: str | None = None, **kwargs
) -> TimmBackbone:
    return TimmBackbone(
        name, in_chans=in_chans, pretrained=pretrained, pretrained_file=pretrained_file, **kwargs
    )
