"""Backbones: each maps images to pooled features ``(B, num_features)``; importing registers them."""

from imgcls.models.backbones import adaptive_cnn, airbench, deit, gfnet, timm_backbone, vgg  # noqa: F401
