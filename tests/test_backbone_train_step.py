"""Every registered backbone trains one step with the linear head under every precision × memory-format
combination the engine can choose on CPU (fp32 / bf16 autocast × contiguous / channels_last), through the
real :class:`Trainer` (its channels_last model conversion, autocast, grad clipping and optimiser step).

This guards issue 14's GFNet crash (a 4-D filter parameter given channels-last strides broke
``view_as_complex``) and any measured-default change of precision or memory format. To cover a new
backbone, add one row to ``BACKBONE_CASES``: ``test_every_registered_backbone_has_a_case`` fails until then.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from imgcls.config import load_config
from imgcls.data.images import ImageData
from imgcls.data.loader import InMemoryLoader
from imgcls.engine.trainer import Trainer
from imgcls.models.classifier import build_model
from imgcls.registry import BACKBONES
from tiny_runs import single_thread

#: (case id, backbone name, tiny backbone_args, input channels, input side)
BACKBONE_CASES: list[tuple[str, str, dict[str, Any], int, int]] = [
    ("adaptive_cnn-mnist", "adaptive_cnn", {"layout": "mnist", "width_mult": 0.125}, 1, 28),
    ("adaptive_cnn-cifar", "adaptive_cnn", {"layout": "cifar", "width_mult": 0.0625}, 3, 32),
    ("vgg5", "vgg5", {"channels": [8, 8, 16, 16, 16]}, 3, 32),
    ("airbench", "airbench", {"widths": [8, 16, 16]}, 1, 28),
    (
        "gfnet-seed",
        "gfnet",
        {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 2, "block_style": "seed"},
        1,
        16,
    ),
    (
        "gfnet-original",
        "gfnet",
        {
            "img_size": 16,
            "patch_size": 4,
            "embed_dim": 16,
            "depth": 2,
            "block_style": "original",
            "filter_init": "original",
        },
        1,
        16,
    ),
    (
        "deit-convstem",
        "deit",
        {
            "img_size": 16,
            "patch_size": 4,
            "embed_dim": 16,
            "depth": 2,
            "num_heads": 2,
            "stem_channels": [8, 16],
        },
        1,
        16,
    ),
    (
        "deit-patch",
        "deit",
        {
            "img_size": 16,
            "patch_size": 4,
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
            "conv_stem": False,
        },
        3,
        16,
    ),
    ("timm-cnn", "timm:test_resnet", {}, 3, 32),
    ("timm-vit", "timm:test_vit", {"img_size": 32, "patch_size": 8}, 1, 32),
]

#: precision × memory format the engine can pick on a CPU (``train.precision``, ``train.channels_last``)
CPU_MODES = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def test_every_registered_backbone_has_a_case():
    covered = {name for _, name, *_ in BACKBONE_CASES}
    registered = {n for n in BACKBONES.names() if not n.endswith(":<name>")}
    missing = sorted(registered - covered)
    assert not missing, f"add a tiny BACKBONE_CASES row for the registered backbone(s) {missing}"
    assert any(n.startswith("timm:") for n in covered)


@pytest.mark.parametrize(
    ("precision", "channels_last"), CPU_MODES, ids=[f"{p}-{'cl' if c else 'nchw'}" for p, c in CPU_MODES]
)
@pytest.mark.parametrize(
    ("case", "backbone", "args", "chans", "size"), BACKBONE_CASES, ids=[c[0] for c in BACKBONE_CASES]
)
def test_backbone_trains_one_step(case, backbone, args, chans, size, precision, channels_last, tmp_path):
    n, classes = 8, 3
    cfg = load_config(
        None,
        [
            f"model.backbone={backbone}",
            f"model.backbone_args={args}",
            "model.head=linear",
            f"train.precision={precision}",
            f"train.channels_last={str(channels_last).lower()}",
            "train.device=cpu",
            f"train.batch_size={n}",
            "train.epochs=1",
            "train.progress=false",
            "train.grad_clip=1.0",
            "optim.name=adamw",
            "optim.lr=1e-3",
            "schedule.warmup_epochs=0",
            "output.tensorboard=false",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, classes, chans)
    gen = torch.Generator().manual_seed(0)
    data = ImageData(
        labels=torch.arange(n) % classes,
        class_names=["a", "b", "c"],
        images=torch.randint(0, 256, (n, chans, size, size), dtype=torch.uint8, generator=gen),
    )
    loader = InMemoryLoader(data, n, shuffle=True, drop_last=True, seed=0)
    meta = {"image_size": size, "channels": chans, "mean": [0.5] * chans, "std": [0.25] * chans}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with single_thread():
        trainer = Trainer(
            cfg,
            model,
            loader,
            None,
            device=torch.device("cpu"),
            preprocess_meta=meta,
            class_names=data.class_names,
        )
        assert trainer.amp_dtype == (torch.bfloat16 if precision == "bf16" else None)
        trainer.fit()
    assert trainer.state.step == 1
    assert torch.isfinite(torch.tensor(trainer.last_loss()))
    params = dict(trainer.model.named_parameters())
    changed = [k for k, v in before.items() if not torch.equal(v, params[k].detach())]
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("head.") for k in changed)
    assert all(torch.isfinite(p).all() for p in params.values())
