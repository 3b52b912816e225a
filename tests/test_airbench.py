"""Airbench backbone and its patch-whitening initialisation (Jordan 2024; issue 11, P3): the patch statistics
against a loop, the whitening property, identity-initialised convolutions, the callback that sets the filters
once per run, and a real training run on Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from imgcls.config import load_config
from imgcls.engine.callbacks import Callback
from imgcls.engine.whitening_init import PatchWhiteningInit, whitening_init_callbacks
from imgcls.errors import ConfigError
from imgcls.models.backbones.airbench import Airbench, patch_second_moments, whitening_filters
from imgcls.models.classifier import Classifier, build_head
from imgcls.registry import BACKBONES
from imgcls.runtime.batch import Batch
from imgcls.runtime.distributed import DistInfo
from tiny_runs import requires_fashion_mnist, single_thread

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def correlated_images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images whose neighbouring pixels are strongly correlated (cumulative sums of noise), like real ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=g).cumsum(-1).cumsum(-2)
    return (x - x.mean()) / x.std()


def test_patch_second_moments_match_a_loop_over_patches():
    images = torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    expected = torch.zeros(8, 8, dtype=torch.float64)
    count = 0
    for img in images:
        for i in range(2):
            for j in range(3):
                p = img[:, i : i + 2, j : j + 2].reshape(-1).double()  # (C, kh, kw) order: a conv weight's
                expected += torch.outer(p, p)
                count += 1
    sums, n = patch_second_moments(images, 2)
    assert n == count == 12 and torch.allclose(sums, expected)


def test_whitening_filters_hand_computed_for_a_diagonal_second_moment():
    # two channels, 1×1 patches, E[p pᵀ] = diag(4, 1): the filters are ±(1/2, 0) then ±(0, 1)
    filters = whitening_filters(torch.diag(torch.tensor([4.0, 1.0])), channels=2, kernel=1, eps=0.0)
    assert filters.shape == (4, 2, 1, 1)
    flat = filters.flatten(1)
    assert torch.allclose(flat[:2].abs(), torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    assert torch.equal(flat[2:], -flat[:2])


def test_whitening_filters_decorrelate_the_patches_they_were_computed_from():
    images = correlated_images(16, 2, 10)
    sums, n = patch_second_moments(images, 2)
    filters = whitening_filters(sums / n, channels=2, kernel=2, eps=1e-9)
    out = F.conv2d(images.double(), filters[:8].double())  # (N, 8, 9, 9): one value per filter and patch
    flat = out.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.allclose(flat.T @ flat / len(flat), torch.eye(8, dtype=torch.float64), atol=1e-4)
    raw_cov = sums / n
    assert (raw_cov - torch.diag(raw_cov.diagonal())).abs().max() > 0.5  # the input really was correlated


def test_backbone_shapes_identity_start_and_norm_momentum():
    torch.manual_seed(0)
    net = Airbench(in_chans=1, widths=[8, 16, 12])
    assert net.whiten.out_channels == 2 * 1 * 2 * 2
    assert net.num_features == 12
    # any input: the global pool is adaptive, pooling skips 1-px maps, and one smaller than a whitening patch
    # (1 px high) is padded to one
    for size in (28, 13, 2, 1):
        assert net(torch.randn(3, 1, size, size + 3)).shape == (3, 12)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(
        m.momentum == pytest.approx(0.4) for m in norms
    )  # keeps 0.6 of the statistics
    # the 8 → 16 convolution starts as the identity on its first 8 outputs
    x = torch.randn(2, 8, 5, 5)
    conv = net.groups[1].conv1
    assert torch.allclose(conv(x)[:, :8], x, atol=1e-6)


def test_bad_backbone_args_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="three conv groups"):
        BACKBONES.build("airbench", in_chans=1, widths=[8, 16])
    with pytest.raises(ConfigError, match="whiten_eps"):
        BACKBONES.build("airbench", in_chans=1, whiten_eps=0.0)


def fake_trainer(backbone, batches):
    return SimpleNamespace(
        model=Classifier(backbone, build_head("linear", {}, backbone.num_features, 3, 0.0)),
        train_loader=batches,
        device=torch.device("cpu"),
        prep=lambda x: 2 * x,  # the callback must whiten what the model sees: normalised images
        dist=DistInfo(),
    )


def test_callback_whitens_from_the_first_images_the_model_sees_once_per_run():
    torch.manual_seed(0)
    images = correlated_images(10, 1, 9)
    batches = [
        Batch(images[i : i + 4], torch.zeros(len(images[i : i + 4]), dtype=torch.long)) for i in (0, 4, 8)
    ]
    backbone = Airbench(in_chans=1, widths=[4, 8, 8])
    callback = PatchWhiteningInit(max_images=6)
    callback.on_fit_start(fake_trainer(backbone, batches))
    sums, n = patch_second_moments(2 * images[:6], 2)  # the first 6 images, as prep hands them over
    expected = whitening_filters(sums / n, 1, 2, backbone.whiten_eps)
    assert torch.allclose(backbone.whiten.weight, expected, atol=1e-6)
    assert callback.state_dict() == {"done": True}
    # a resumed run (state restored) leaves the filters from its checkpoint alone
    resumed = PatchWhiteningInit()
    resumed.load_state_dict({"done": True})
    other = Airbench(in_chans=1, widths=[4, 8, 8])
    before = other.whiten.weight.detach().clone()
    resumed.on_fit_start(fake_trainer(other, batches))
    assert torch.equal(other.whiten.weight, before)


def test_callback_is_added_only_for_a_whitening_backbone():
    assert [
        type(c) for c in whitening_init_callbacks(load_config(CONFIGS / "fashion_mnist" / "airbench.yaml"))
    ] == [PatchWhiteningInit]
    assert whitening_init_callbacks(load_config(CONFIGS / "fashion_mnist" / "best30min.yaml")) == []


class WhiteningSnapshot(Callback):
    """Copies the whitening filters when the first epoch starts (after the initialisation callbacks)."""

    name = "whitening_snapshot"

    def __init__(self) -> None:
        self.weight: torch.Tensor | None = None
        self.ema_weight: torch.Tensor | None = None

    def on_epoch_start(self, trainer) -> None:
        if self.weight is None:
            self.weight = trainer.model.backbone.whiten.weight.detach().clone()
            ema = next(cb for cb in trainer.callbacks if cb.name == "ema").ema.module
            self.ema_weight = ema.backbone.whiten.weight.detach().clone()


@requires_fashion_mnist
def test_a_real_run_starts_from_whitening_filters_learns_and_resumes_without_redoing_them(tmp_path):
    from imgcls import api

    config = yaml.safe_load((CONFIGS / "fashion_mnist" / "airbench.yaml").read_text())
    config["data"]["train_subset"] = 800
    config["model"]["backbone_args"] = {"widths": [8, 16, 16]}
    config["optim"]["lr"] = 0.02
    config["schedule"]["warmup_epochs"] = 0.5
    config["train"].update(epochs=3, time_budget_s=None, batch_size=64, progress=False, ema_decay=0.9)
    config["output"] = {"tensorboard": False, "name": "airbench", "dir": str(tmp_path)}
    path = tmp_path / "airbench.yaml"
    path.write_text(yaml.safe_dump(config))
    snapshot = WhiteningSnapshot()
    with single_thread():
        result = api.train(str(path), [], evaluate_after=False, callbacks=[snapshot])
    rows = snapshot.weight[:4].flatten(1).double()
    gram = rows @ rows.T  # whitening filters are orthogonal (eigenvectors); random ones are not
    assert (gram - torch.diag(gram.diagonal())).abs().max() < 1e-4 * gram.diagonal().max()
    assert torch.equal(snapshot.weight[4:], -snapshot.weight[:4])
    assert torch.equal(snapshot.ema_weight, snapshot.weight)  # the EMA copy was taken after the whitening
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["callbacks"]["patch_whitening_init"] == {"done": True}
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0] and result.history[-1]["val_acc"] > 0.45
    # a resumed run (here: extended by an epoch) continues from the trained filters instead of re-whitening
    resumed = WhiteningSnapshot()
    with single_thread():
        api.train(
            resume=result.run_dir, overrides=["train.epochs=4"], evaluate_after=False, callbacks=[resumed]
        )
    assert torch.equal(resumed.weight, ckpt["model"]["backbone.whiten.weight"])
