"""2-D projections of embeddings for plots: t-SNE (van der Maaten & Hinton, 2008; scikit-learn) and UMAP
(McInnes et al., 2018; umap-learn), as seed 003 plotted its embeddings (SPEC §4.6 item 4).

:func:`embed_2d` is the one entry point; the figures of a run (:mod:`imgcls.evaluation.figures`) feed its
output to :func:`imgcls.evaluation.plots.plot_embeddings`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits


def tsne_threads() -> int:
    """OpenMP threads for t-SNE: half the cores, at most 4.

    scikit-learn's Barnes–Hut t-SNE runs several short parallel regions per iteration; when its
    threads outnumber the free cores (a shared 2-core machine, or torch's threads still spinning)
    every barrier waits for a descheduled thread. Measured on 2 loaded cores, 2,000 points: 1 thread
    3.5 s every time, 2 threads 6–23 s (2.4 s when the machine is idle).
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def embed_2d(x, method: str, seed: int = 123) -> np.ndarray:
    """2-D layout of ``x`` ``(N, D)`` by ``method`` = ``tsne`` (scikit-learn) or ``umap`` (umap-learn).

    t-SNE: PCA to 50 dimensions first (scikit-learn's advice), PCA initialisation, automatic
    learning rate, 500 iterations (250 exaggerated + 250 free; enough for ≤ a few thousand points),
    on :func:`tsne_threads` OpenMP threads.
    UMAP: below 4096 points the Euclidean distance matrix is computed by scikit-learn and passed
    as ``precomputed`` — umap-learn would otherwise evaluate its own numba metric once per pair
    from Python, which takes seconds for 2,000 points.
    """
    from sklearn.metrics import pairwise_distances

    a = (x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(
        np.float32
    )
    a = a - a.mean(axis=0, keepdims=True)
    if method == "tsne":
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        if a.shape[1] > 50 and a.shape[0] > 50:
            a = PCA(50, random_state=seed).fit_transform(a)
        perplexity = float(min(30.0, max(2.0, (a.shape[0] - 1) / 3)))
        tsne = TSNE(
            2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=500, random_state=seed
        )
        with threadpool_limits(tsne_threads()):
            return tsne.fit_transform(a)
    if method == "umap":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", numba/tbb notices
            umap = _import_umap_cached()

            neighbours = int(min(15, max(2, a.shape[0] - 1)))
            if a.shape[0] < 4096:
                reducer = umap.UMAP(n_neighbors=neighbours, metric="precomputed", random_state=seed)
                return reducer.fit_transform(pairwise_distances(a))
            return umap.UMAP(n_neighbors=neighbours, random_state=seed).fit_transform(a)
    raise ValueError(f"unknown embedding method '{method}' (tsne or umap)")


@functools.cache
def _import_umap_cached():
    """Import umap-learn with numba's on-disk cache switched on for its compiled functions.

    umap-learn and pynndescent compile ~250 numba functions in every new process (≈ 10 s on two
    cores, more than the UMAP itself for a few thousand points) and do not ask numba to cache
    them. Numba's own cache (keyed on each source file's timestamp, so an upgrade invalidates it)
    turns this into a one-off cost per installation.
    """
    import umap  # imports pynndescent too
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("umap", "pynndescent"):
            for value in list(vars(module).values()):
                if isinstance(value, CPUDispatcher):
                    with contextlib.suppress(RuntimeError):  # no writable cache location: compile as usual
                        value.enable_caching()
    return umap
