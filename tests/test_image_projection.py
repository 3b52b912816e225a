"""Tests of the optional t-SNE/UMAP of PCA-compressed training images (seed 001's Figure 3): PCA keeps the
structure that separates classes, streamed (file-backed) training sets are decoded with unreadable files left
out, the figure is written only when ``eval.image_projection`` is on."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from imgcls.config import load_config
from imgcls.data.images import ImageData
from imgcls.evaluation.image_projection import fig_image_tsne, pca_compress, training_image_sample


def two_blob_images(n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: dark left half; class 1: dark right half; plus pixel noise."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.randint(100, 156, (n, 1, 12, 12), generator=gen, dtype=torch.uint8)
    images[labels == 0, :, :, :6] //= 4
    images[labels == 1, :, :, 6:] //= 4
    return images, labels


def test_pca_compression_separates_classes_and_reports_variance():
    images, labels = two_blob_images()
    z, explained = pca_compress(images, components=5)
    assert z.shape == (120, 5) and 0.0 < explained <= 1.0
    first = z[:, 0]
    means = [first[labels.numpy() == c].mean() for c in (0, 1)]
    spread = max(first[labels.numpy() == c].std() for c in (0, 1))
    assert abs(means[0] - means[1]) > 4 * spread  # PC 1 is the left/right contrast


def test_training_sample_decodes_files_and_skips_unreadable(tmp_path):
    files = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((10, 10, 3), 20 * i, dtype=np.uint8)).save(path)
        files.append(str(path))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files.append(str(tmp_path / "bad.png"))
    data = ImageData(labels=torch.tensor([0, 1, 0, 1, 0, 1, 1]), class_names=["a", "b"], files=files)
    images, labels = training_image_sample(data, 100, size=8, channels=1)
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert int(images[3, 0, 0, 0]) == 60


def test_figure_only_when_enabled(tmp_path):
    images, labels = two_blob_images(80)
    data = SimpleNamespace(train=ImageData(labels, ["left", "right"], images), image_size=12, channels=1)
    ctx = SimpleNamespace(
        cfg=load_config(None, []), data=data, class_names=["left", "right"], run_dir=tmp_path, notes=[]
    )
    assert ctx.cfg.eval.image_projection is False and fig_image_tsne(ctx) is None
    ctx.cfg = load_config(None, ["eval.image_projection=true"])
    path = fig_image_tsne(ctx)
    assert path == tmp_path / "images_pca_tsne.png" and path.stat().st_size > 5_000
