"""Tiny real-data training runs shared by the foundation tests (trainer, evaluation, CLI).

One run (Fashion-MNIST, 3,000 stratified training images, 2 epochs, AdaptiveCNN at width 0.25 with a
linear head) is trained once per pytest session into the session's base temp folder and reused by
every test module that asks for it (the folder doubles as the cache, so no conftest is needed).
Training runs single-threaded: on a shared 2-core machine torch's intra-op threads mostly spin
against other processes (measured ≈ 30× slower epochs with 2 threads under load).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: model + speed settings every tiny run uses (AdaptiveCNN mnist layout at a quarter width)
TINY_OVERRIDES = [
    "model.backbone=adaptive_cnn",
    "model.backbone_args={layout: mnist, width_mult: 0.25}",
    "model.head=linear",
    "train.progress=false",
    "output.tensorboard=false",
    "eval.plots=false",
    "eval.throughput_s=0",  # one timed batch: real-process runs miss tests/conftest.py's fixture
]

#: the shared run: small enough for seconds of training, large enough to beat chance clearly
SHARED_CONFIG = {
    "data": {"name": "fashion_mnist", "train_subset": 3000, "test_subset": 1000},
    "model": {
        "backbone": "adaptive_cnn",
        "backbone_args": {"layout": "mnist", "width_mult": 0.25},
        "head": "linear",
    },
    "optim": {"name": "adamw", "lr": 3.0e-3, "weight_decay": 0.0},
    "schedule": {"name": "cosine", "warmup_epochs": 0.2},
    "train": {"epochs": 2, "batch_size": 64, "progress": False},
    "eval": {"checkpoint": "best", "plots": True, "embeddings_plot": False, "gradcam": False},
    "output": {"tensorboard": False, "name": "tiny"},
}

requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)",
)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of the session's shared tiny run (trained on first use)."""
    from imgcls import api

    base = tmp_path_factory.getbasetemp() / "shared_tiny_run"
    done = base / "run_dir.txt"
    if done.is_file():
        return Path(done.read_text())
    base.mkdir(parents=True, exist_ok=True)
    config_file = base / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(SHARED_CONFIG, sort_keys=False))
    with single_thread():
        result = api.train(config_file, [f"output.dir={base / 'runs'}"])
    done.write_text(str(result.run_dir))
    return result.run_dir
