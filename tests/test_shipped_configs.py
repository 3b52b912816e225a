"""Every config under configs/ loads and names real parts: its keys validate, its backbone is registered
(or a timm model), its head builds with its head_args, and built-in backbones build with their args.
Pretrained timm weights are not fetched (no internet here): for those only the model name is checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm

from imgcls.config import load_config
from imgcls.data.sources import FASHION_MNIST_CLASSES
from imgcls.models.classifier import build_backbone, build_head
from imgcls.registry import BACKBONES
from imgcls.taxonomy import build_taxonomy

CONFIGS = Path(__file__).parent.parent / "configs"
SHIPPED = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("taxonomies", "sweeps"))
FASHION_TREE = CONFIGS / "taxonomies" / "fashion_mnist.yaml"
FASHION_CLASSES = FASHION_MNIST_CLASSES


def test_configs_are_found():
    assert len(SHIPPED) >= 30 and CONFIGS / "quickstart.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_loads_and_builds(path):
    cfg = load_config(path)
    name = cfg.model.backbone
    if name.startswith("timm:"):
        assert timm.is_model(name.removeprefix("timm:")), name
    else:
        assert name in BACKBONES
        in_chans = cfg.data.channels or (3 if cfg.data.name in ("cifar10", "cifar100", "stl10") else 1)
        assert build_backbone(cfg.model, in_chans).num_features > 0
    taxonomy = None
    if cfg.data.taxonomy is not None:  # the file tree has the WordNet tree's shape and needs no WordNet
        taxonomy = build_taxonomy(str(FASHION_TREE), FASHION_CLASSES)
    head = build_head(cfg.model.head, cfg.model.head_args, 64, 10, cfg.train.label_smoothing, taxonomy)
    assert sum(p.numel() for p in head.parameters()) > 0
    for stage in cfg.stages:
        if stage.head:
            build_head(stage.head, stage.head_args, 64, 10, cfg.train.label_smoothing, taxonomy)
