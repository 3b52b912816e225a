"""The seeds' remaining recipes (issue 15) validate and build: seed 000's baselines (EfficientNetV2-L and
DeiT-B through timm with pretrained weights off, and VGG-5), and seed 002's tiny-ImageNet hierarchical
recipes (WordNet taxonomy over tiny-ImageNet's noun ids, frozen EfficientNetV2-S trunk with cached
features) on a generated tiny-ImageNet-shaped folder, since the real data cannot be downloaded here.

The large timm models are built on the ``meta`` device (shapes without memory or initialisation), which
is enough to check the architecture and its parameter count against the seed's complexity table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config import load_config
from imgcls.errors import ConfigError, DataError
from imgcls.models.backbones.vgg import VGG5
from imgcls.models.classifier import build_backbone, build_head, build_model
from imgcls.registry import BACKBONES

CONFIGS = Path(__file__).parent.parent / "configs"
DATASETS = ("cifar10", "mnist", "stl10")
#: seed 000's "Params (MB)" (fp32 MiB of the ImageNet model with its 1000-way head, SPEC §1.3) per config
SEED_MB = {"effnetv2_l": 454.05, "deit_b": 330.22}
TINY_IMAGENET_WNIDS = ["n01443537", "n01629819", "n01641577", "n02085620", "n02094433", "n07920052"]
TINY_IMAGENET_RECIPES = sorted((CONFIGS / "tiny_imagenet").glob("*.yaml"))


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: intra-op threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", sorted(SEED_MB))
def test_timm_baseline_configs_build_with_pretrained_off_and_match_the_seeds_size(dataset, name):
    cfg = load_config(CONFIGS / dataset / f"{name}.yaml", ["model.pretrained=false"])
    assert cfg.model.head == "linear" and cfg.data.image_size == 224 and cfg.data.channels == 3
    with torch.device("meta"):
        backbone = build_backbone(cfg.model, 3)
    params = sum(p.numel() for p in backbone.parameters())
    with_imagenet_head = params + backbone.num_features * 1000 + 1000
    mib = with_imagenet_head * 4 / 2**20
    assert mib == pytest.approx(SEED_MB[name], rel=0.01)  # 452.1 vs 454.05; 330.2 vs 330.22
    head = build_head(cfg.model.head, cfg.model.head_args, backbone.num_features, 10, 0.0)
    assert head(torch.randn(2, backbone.num_features)).logits.shape == (2, 10)


@pytest.mark.parametrize("dataset", DATASETS)
def test_vgg5_configs_build_and_classify(dataset):
    cfg = load_config(CONFIGS / dataset / "vgg5.yaml")
    in_chans = cfg.data.channels or 3
    model = build_model(cfg.model, 10, in_chans)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and [c.out_channels for c in convs] == [64, 128, 256, 256, 512]
    size = {"cifar10": 32, "mnist": 28, "stl10": 96}[dataset]
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_chans, size, size)).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_vgg5_layout_arguments_and_errors():
    net = VGG5(in_chans=3)
    # 3·64·9 + 64·128·9 + 128·256·9 + 256·256·9 + 256·512·9 conv weights + 2·(64+128+256+256+512) BN
    assert sum(p.numel() for p in net.parameters()) == 2_142_272
    maps = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: maps.append(o.shape[-1]))
        for m in net.features
        if isinstance(m, torch.nn.ReLU)
    ]
    net(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert maps == [32, 16, 8, 8, 4]  # pools after convs 1, 2, 4 (and 5: 4 → 2 before the global pool)
    plain = BACKBONES.build(
        "vgg5", in_chans=1, channels=[8, 8, 16, 16, 32], pool_after=[2, 4], batch_norm=False
    )
    assert plain.num_features == 32 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.zeros(2, 1, 5, 5)).shape == (2, 32)  # pools skip 1-px maps
    with pytest.raises(ConfigError, match="five"):
        BACKBONES.build("vgg5", in_chans=3, channels=[64, 128])
    with pytest.raises(ConfigError, match="pool_after"):
        BACKBONES.build("vgg5", in_chans=3, pool_after=[0, 6])
    assert BACKBONES.args_model("vgg5").model_fields["channels"].description


def test_vgg5_trains():
    torch.manual_seed(0)
    net = torch.nn.Sequential(VGG5(in_chans=1, channels=[8, 8, 16, 16, 16]), torch.nn.Linear(16, 2))
    x = torch.rand(16, 1, 12, 12)
    y = (x[:, 0, :6].mean(dim=(1, 2)) > x[:, 0, 6:].mean(dim=(1, 2))).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------------------- tiny-ImageNet
def fake_tiny_imagenet(root: Path, wnids: list[str], per_class: int = 6) -> Path:
    """A folder with tiny-ImageNet's layout: train/<wnid>/images/*.JPEG and val/val_annotations.txt."""
    rng = np.random.default_rng(0)
    lines = []
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG")
        (root / "val" / "images").mkdir(parents=True, exist_ok=True)
        name = f"val_{k}.JPEG"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / name
        )
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def wordnet_available():
    from imgcls.taxonomy import wordnet

    try:
        wordnet.load_wordnet()
    except DataError as exc:
        pytest.skip(f"WordNet is not installed: {exc}")


def test_tiny_imagenet_recipes_are_shipped():
    assert {p.stem for p in TINY_IMAGENET_RECIPES} == {
        "linear",
        "arcface",
        "sphere_multi",
        "sphere_hier",
        "arcface_multihead",
    }


@pytest.mark.parametrize("path", TINY_IMAGENET_RECIPES, ids=lambda p: p.stem)
def test_tiny_imagenet_recipe_validates_and_builds_on_a_generated_folder(path, tmp_path, wordnet_available):
    from imgcls.api import build_taxonomy_for
    from imgcls.data.prepare import prepare_data

    root = fake_tiny_imagenet(tmp_path / "tiny-imagenet-200", TINY_IMAGENET_WNIDS)
    cfg = load_config(
        path, [f"data.root={root}", "model.pretrained=false", "data.image_size=32", "data.num_workers=0"]
    )
    assert (
        cfg.data.taxonomy == "wordnet" and cfg.model.cache_features and cfg.stages[0].freeze == ["backbone"]
    )
    assert cfg.model.backbone == "timm:tf_efficientnetv2_s"
    data = prepare_data(cfg)
    assert data.class_names == sorted(TINY_IMAGENET_WNIDS) and len(data.test) == len(TINY_IMAGENET_WNIDS)
    taxonomy = build_taxonomy_for(cfg, data)
    assert taxonomy.num_classes == len(TINY_IMAGENET_WNIDS)
    assert "goldfish.n.01" in taxonomy.render() and "dog.n.01" in taxonomy.render()
    with torch.device("meta"):
        backbone = build_backbone(cfg.model, 3)
    assert backbone.num_features == 1280  # EfficientNetV2-S's pooled features, the seed's DevNet input
    head = build_head(cfg.model.head, cfg.model.head_args, 1280, len(data.class_names), 0.0, taxonomy)
    out = head.train()(torch.randn(4, 1280), torch.tensor([0, 1, 2, 3]))
    from imgcls.runtime.batch import Batch

    terms = head.loss(out, Batch(images=torch.zeros(4, 3, 2, 2), targets=torch.tensor([0, 1, 2, 3])))
    assert terms and all(torch.isfinite(v) for v in terms.values())
    if path.stem == "sphere_multi":
        assert set(terms) == {"focal"}
