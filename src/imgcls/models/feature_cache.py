"""Frozen-trunk training with cached features (seed 002's frozen EfficientNetV2-S trunk, SPEC §3):
when the backbone is frozen and the inputs are deterministic, its features are computed once per
image and reused for every later epoch, validation pass and stage that keeps it frozen.

The cache sits inside :meth:`Classifier.forward_features` and is keyed by the content of each
(preprocessed) input image — a BLAKE2b digest of its bytes — so it needs no cooperation from the
loaders or the training loop, and a sample seen again under any batch composition hits. It is
bypassed (and emptied) whenever the backbone is trainable or in train mode, so a later fine-tuning
stage computes fresh features. It is not part of the model's state: it is empty after loading,
copying (EMA/SWA copies start empty) or resuming, and is attached only for training.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from imgcls.errors import ConfigError


def backbone_is_frozen(backbone: nn.Module) -> bool:
    return not backbone.training and not any(p.requires_grad for p in backbone.parameters())


class FeatureCache:
    """Memoises ``backbone.forward_features`` per image while the backbone is frozen.

    ``max_mb`` bounds the memory of stored features; once full, further features are computed and
    not stored. ``hits``/``misses`` count images served from / added to the cache.
    """

    def __init__(self, max_mb: float = 4096.0) -> None:
        self.max_mb = float(max_mb)
        self.store: dict[bytes, torch.Tensor] = {}
        self.bytes = self.hits = self.misses = 0

    def __deepcopy__(self, memo) -> FeatureCache:  # averaged model copies get their own, empty cache
        return FeatureCache(self.max_mb)

    def clear(self) -> None:
        self.store.clear()
        self.bytes = 0

    @staticmethod
    def keys(images: torch.Tensor) -> list[bytes]:
        flat = images.detach().to("cpu", torch.float32).contiguous().flatten(1).numpy()
        shape = str(tuple(images.shape[1:])).encode()
        return [hashlib.blake2b(row.tobytes(), digest_size=16, key=shape[:64]).digest() for row in flat]

    def __call__(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if not backbone_is_frozen(backbone):
            self.clear()
            return backbone.forward_features(images)
        keys = self.keys(images)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            with torch.no_grad():
                computed = backbone.forward_features(images if len(missing) == len(keys) else images[missing])
            for i, row in zip(missing, computed, strict=True):
                fresh[i] = row
                size = row.numel() * row.element_size()
                if self.bytes + size <= self.max_mb * 2**20:
                    self.store[keys[i]] = row.clone()
                    self.bytes += size
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        rows = [fresh[i] if i in fresh else self.store[k] for i, k in enumerate(keys)]
        dtype = rows[0].dtype
        return torch.stack([r.to(dtype) for r in rows])


def attach_feature_cache(model: nn.Module, cfg, augment) -> FeatureCache | None:
    """Attach a cache to ``model`` when ``model.cache_features`` is on, after checking that it can
    help: some stage must freeze the whole backbone and no random augmentation may change inputs."""
    if not cfg.model.cache_features:
        return None
    frozen = [
        s.name
        for s in cfg.resolved_stages()
        if "backbone" in s.freeze
        or (s.train_only and not any(p.split(".")[0] == "backbone" for p in s.train_only))
    ]
    if not frozen:
        raise ConfigError(
            "model.cache_features needs a frozen backbone: add a stage with freeze: [backbone] "
            "(or train_only: [head])"
        )
    if augment is not None and not augment.is_identity:
        raise ConfigError(
            "model.cache_features needs deterministic inputs: switch the augment section off "
            f"(it enables {augment!r})"
        )
    model.feature_cache = FeatureCache(cfg.model.cache_features_max_mb)
    return model.feature_cache
