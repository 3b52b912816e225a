"""The model every method shares: Backbone → (dropout) → Head (DESIGN.md, "contracts").

``build_model`` turns the ``model`` config section into a :class:`Classifier`; backbones and
heads are looked up by name in their registries, so methods plug in without code paths here.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from imgcls.config import ModelConfig
from imgcls.errors import ConfigError
from imgcls.models.heads.base import Head, HeadOutput
from imgcls.registry import BACKBONES, HEADS


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: Head, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = head
        #: optional :class:`imgcls.models.feature_cache.FeatureCache` (frozen-trunk training)
        self.feature_cache = None

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.feature_cache is not None:
            return self.feature_cache(self.backbone, images)
        return self.backbone.forward_features(images)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        # Heads see labels only while they train (margins, class-label graphs); never at evaluation.
        return self.head(self.dropout(self.forward_features(images)), targets if self.head.training else None)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.predict(self(images))


def build_head(
    name: str,
    args: dict[str, Any],
    in_features: int,
    num_classes: int,
    label_smoothing: float,
    taxonomy=None,
    where: str = "model.head_args",
) -> Head:
    """The head ``name`` built with ``args`` validated by its registered argument model (a problem is a
    one-line :class:`ConfigError` located at ``where``); the taxonomy and label smoothing are passed to
    heads that take them."""
    cls = HEADS.get(name)
    params = inspect.signature(cls).parameters
    typed = HEADS.validate_args(name, args, where)
    kwargs = typed.kwargs() if typed is not None else dict(args)
    if typed is None:  # a head registered without an argument model: check the names against its signature
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [k for k in args if k not in params and not accepts_any]
        if unknown:
            valid = [
                p
                for p in params
                if p not in ("self", "in_features", "num_classes", "label_smoothing", "taxonomy")
            ]
            raise ConfigError(
                f"unknown {where} key(s) {unknown} for head '{name}'; valid: {', '.join(valid) or 'none'}"
            )
    if "taxonomy" in params:
        if taxonomy is None:
            raise ConfigError(f"head '{name}' needs a taxonomy: set data.taxonomy (wordnet or a file)")
        kwargs["taxonomy"] = taxonomy
    if "label_smoothing" in params:
        kwargs["label_smoothing"] = label_smoothing
    try:
        return cls(in_features=in_features, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad {where} for head '{name}': {exc}") from None


def build_backbone(cfg: ModelConfig, in_chans: int) -> nn.Module:
    typed = BACKBONES.validate_args(cfg.backbone, cfg.backbone_args, "model.backbone_args")
    args = typed.kwargs() if typed is not None else dict(cfg.backbone_args)
    if cfg.backbone.startswith("timm:"):
        args.update(pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file)
    elif cfg.pretrained or cfg.pretrained_file:
        raise ConfigError(f"backbone '{cfg.backbone}' has no pretrained weights; set model.pretrained=false")
    try:
        return BACKBONES.build(cfg.backbone, in_chans=in_chans, **args)
    except TypeError as exc:
        raise ConfigError(f"bad model.backbone_args for '{cfg.backbone}': {exc}") from None


def build_model(
    cfg: ModelConfig, num_classes: int, in_chans: int, label_smoothing: float = 0.0, taxonomy=None
) -> Classifier:
    backbone = build_backbone(cfg, in_chans)
    head = build_head(cfg.head, cfg.head_args, backbone.num_features, num_classes, label_smoothing, taxonomy)
    # token features side by side (DeiT [CLS, DIST]) need a head that splits them, and vice versa
    if getattr(backbone, "feature_tokens", 1) != getattr(head, "feature_tokens", 1):
        raise ConfigError(
            f"backbone '{cfg.backbone}' gives {getattr(backbone, 'feature_tokens', 1)} token feature(s), head '{cfg.head}' "
            f"expects {getattr(head, 'feature_tokens', 1)}: use head deit_dist with backbone_args.distillation_token=true"
        )
    return Classifier(backbone, head, cfg.drop_rate)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
