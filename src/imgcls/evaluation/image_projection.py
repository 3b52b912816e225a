"""t-SNE and UMAP of PCA-compressed *training images* (seed 001's Figure 3, SPEC §2.5): raw pixels — not
model features — of a stratified sample of the training set, flattened, compressed to ``COMPONENTS``
principal components, then laid out in 2-D. Overlapping classes here are confusable before any model
sees them (the seed's A/F, M/N, R/S/V), which is what motivated its targeted-sampling suggestion and our
``data.sampler: confusion``. Optional: ``eval.image_projection: true``. Reuses
:func:`imgcls.evaluation.projection.embed_2d` and :func:`imgcls.evaluation.plots.plot_embeddings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from imgcls.data.decode import _BAD_IMAGE_ERRORS, decode_image
from imgcls.data.images import ImageData
from imgcls.evaluation.figures import stratified_sample
from imgcls.evaluation.plots import plot_embeddings
from imgcls.evaluation.projection import embed_2d

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext

COMPONENTS = 50


def training_image_sample(
    train: ImageData, n: int, size: int, channels: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images ``(m, C, H, W)``, labels) of a stratified sample of ≤ ``n`` training images
    (decoded from files for streamed sets; unreadable files are left out)."""
    rows = stratified_sample(train.labels, n, seed)
    if train.images is not None:
        return train.images[rows], train.labels[rows]
    images, labels = [], []
    for i in rows.tolist():
        try:
            images.append(decode_image(train.files[i], size, channels))
            labels.append(int(train.labels[i]))
        except _BAD_IMAGE_ERRORS:
            continue
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def pca_compress(
    images: torch.Tensor, components: int = COMPONENTS, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Pixels in [0, 1], flattened, projected on their first ``components`` principal components;
    returns (projections ``(m, k)``, share of the pixel variance they explain)."""
    from sklearn.decomposition import PCA

    x = images.reshape(images.shape[0], -1).float().numpy() / 255.0
    k = int(min(components, x.shape[0], x.shape[1]))
    pca = PCA(k, random_state=seed, svd_solver="randomized" if k < min(x.shape) // 2 else "full")
    return pca.fit_transform(x), float(pca.explained_variance_ratio_.sum())


def _fig_image_projection(ctx: EvalContext, method: str) -> Path | None:
    if not ctx.cfg.eval.image_projection:
        return None
    data = ctx.data
    images, labels = training_image_sample(
        data.train, ctx.cfg.eval.max_plot_samples, data.image_size, data.channels
    )
    compressed, explained = pca_compress(images)
    coords = embed_2d(compressed, method)
    label = {"tsne": "t-SNE", "umap": "UMAP"}[method]
    title = (
        f"{label} of PCA-compressed training images\n({len(labels)} images; {compressed.shape[1]} components "
        f"keep {explained:.0%} of the pixel variance)"
    )
    return plot_embeddings(
        [(f"pixels → PCA {compressed.shape[1]} → {label}", coords)],
        labels,
        ctx.class_names,
        ctx.run_dir / f"images_pca_{method}.png",
        method,
        suptitle=title,
    )


def fig_image_tsne(ctx: EvalContext) -> Path | None:
    return _fig_image_projection(ctx, "tsne")


def fig_image_umap(ctx: EvalContext) -> Path | None:
    return _fig_image_projection(ctx, "umap")
