"""CUDA code paths of the trainer (bf16/fp16 autocast with grad scaling, channels_last,
torch.compile, data kept on the GPU). Skipped on machines without a GPU (CI); run on a GPU with
`pytest tests/test_cuda.py`."""

from __future__ import annotations

import pytest
import torch

from imgcls import api

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BASE = [
    "data.train_subset=4000",
    "data.test_subset=1000",
    "train.epochs=3",
    "train.progress=false",
    "output.tensorboard=false",
    "eval.plots=false",
    "train.device=cuda",
]


@pytest.mark.parametrize(
    "extra",
    [
        ["train.precision=bf16", "train.channels_last=true"],
        ["train.precision=fp16", "train.channels_last=false"],
        ["train.precision=auto", "train.compile=true"],
    ],
    ids=["bf16-channels_last", "fp16-gradscaler", "compile"],
)
def test_cuda_training_paths_learn(tmp_path, extra):
    res = api.train("configs/quickstart.yaml", [*BASE, f"output.dir={tmp_path}", *extra])
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.metrics["accuracy"] > 0.5


def test_cuda_fch_head_trains_under_bf16(tmp_path):
    res = api.train(
        "configs/fashion_mnist/fch_rbf.yaml", [*BASE, f"output.dir={tmp_path}", "train.precision=bf16"]
    )
    assert res.metrics["accuracy"] > 0.3
    assert "batch_dependence" in res.metrics
