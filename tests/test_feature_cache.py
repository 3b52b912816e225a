"""Frozen-trunk training with cached features (issue 6): the cache computes each image's features
once while the backbone is frozen, gives exactly the backbone's features, steps aside while the
backbone trains, and a cached training run ends with the same weights as an uncached one."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

from imgcls.errors import ConfigError
from imgcls.models import feature_cache as fc
from imgcls.models.feature_cache import FeatureCache
from tiny_runs import requires_fashion_mnist, single_thread


class CountingBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.seen = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.conv(x).mean(dim=(2, 3))


def frozen(backbone: nn.Module) -> nn.Module:
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


def test_each_image_is_computed_once_and_features_are_exact():
    torch.manual_seed(0)
    backbone, cache = frozen(CountingBackbone()), FeatureCache()
    a, b = torch.randn(6, 1, 8, 8), torch.randn(4, 1, 8, 8)
    first = cache(backbone, a)
    assert backbone.seen == 6 and cache.misses == 6 and cache.hits == 0
    mixed = torch.cat([b[:2], a[[4, 1]], b[2:]])  # a different batch composition and order
    out = cache(backbone, mixed)
    assert backbone.seen == 10 and cache.hits == 2 and cache.misses == 10  # only the 4 new images ran
    assert torch.allclose(out, backbone.forward_features(mixed), atol=1e-6)
    assert torch.equal(out[2:4], first[[4, 1]])


def test_trainable_backbone_bypasses_and_empties_the_cache():
    backbone, cache = frozen(CountingBackbone()), FeatureCache()
    x = torch.randn(3, 1, 8, 8)
    cache(backbone, x)
    backbone.conv.weight.requires_grad_(True)  # a fine-tuning stage
    out = cache(backbone, x)
    assert out.requires_grad and backbone.seen == 6 and not cache.store


def test_memory_bound_and_copies_start_empty():
    backbone = frozen(CountingBackbone())
    cache = FeatureCache(max_mb=2 * 4 * 4 / 2**20)  # room for two 4-float feature rows
    out = cache(backbone, torch.randn(5, 1, 8, 8))
    assert out.shape == (5, 4) and len(cache.store) == 2 and cache.bytes == 32
    clone = copy.deepcopy(cache)
    assert not clone.store and clone.max_mb == cache.max_mb


TRAIN_CONFIG = {
    "data": {"name": "fashion_mnist", "train_subset": 600, "val_fraction": 0.2, "test_subset": 100},
    "model": {
        "backbone": "adaptive_cnn",
        "backbone_args": {"layout": "mnist", "width_mult": 0.25},
        "head": "mlp",
        "head_args": {"hidden": [32], "dropout": 0.0},
    },
    "optim": {"name": "adamw", "lr": 3.0e-3},
    "train": {"epochs": 2, "batch_size": 60, "precision": "fp32", "progress": False},
    "stages": [{"name": "head", "freeze": ["backbone"]}],
    "eval": {"plots": False},
    "output": {"tensorboard": False},
}


def write_config(tmp_path, **model) -> str:
    cfg = copy.deepcopy(TRAIN_CONFIG)
    cfg["model"].update(model)
    path = tmp_path / f"cfg_{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@requires_fashion_mnist
def test_cached_training_matches_uncached_and_computes_each_image_once(tmp_path, monkeypatch):
    from imgcls import api

    caches = []
    original = fc.attach_feature_cache
    monkeypatch.setattr(fc, "attach_feature_cache", lambda *a: caches.append(original(*a)) or caches[-1])
    with single_thread():
        cached = api.train(
            write_config(tmp_path, cache_features=True),
            [f"output.dir={tmp_path}/runs", "output.name=c"],
            evaluate_after=False,
        )
        plain = api.train(
            write_config(tmp_path), [f"output.dir={tmp_path}/runs", "output.name=p"], evaluate_after=False
        )
    cache = caches[0]
    assert caches[1] is None
    assert cache.misses == 600  # 480 training + 120 validation images, each computed once
    assert cache.hits == 600  # the second epoch (training and validation) came from the cache
    w1 = torch.load(cached.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(plain.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in w1:
        assert torch.allclose(w1[key].float(), w2[key].float(), atol=1e-5), key
    assert [h["val_acc"] for h in cached.history] == pytest.approx(
        [h["val_acc"] for h in plain.history], abs=1e-9
    )


@requires_fashion_mnist
def test_cache_without_frozen_backbone_or_with_augmentation_is_a_config_error(tmp_path):
    from imgcls import api

    cfg = write_config(tmp_path, cache_features=True)
    with pytest.raises(ConfigError, match="frozen backbone"):
        api.train(cfg, ["stages=[]", f"output.dir={tmp_path}/runs"], evaluate_after=False)
    with pytest.raises(ConfigError, match="deterministic inputs"):
        api.train(cfg, ["augment.hflip=0.5", f"output.dir={tmp_path}/runs"], evaluate_after=False)
