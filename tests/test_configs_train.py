"""Every shipped recipe trains (issue 17, "shipped recipes must run"): each config under ``configs/`` is
trained through ``api.train`` for one epoch per stage on a generated stand-in of its data (the real data set's
class names, channels and image size, a few random images per class) and its saved model then predicts a
handful of images. New configs are picked up by the glob.

To stay fast the stand-in is tiny (3 training images per class, batch 4), hub weights are off (``pretrained: false``:
no internet here), and heavy backbones run at reduced width/depth through their own constructor arguments
(ResNet-18 with 1 block of 16..128 channels per stage, ViT-B/16 with 2 blocks of width 64, EfficientNetV2-S
at a quarter of its channels and depth, GFNet with 2 blocks): the same code paths, the config's input shape. The fast suite trains a subset of configs that together cover
every backbone, head (and FCH adjacency), feature cache, stage pattern, taxonomy, sampler, augmentation preset
and weight averaging found in the shipped configs, preferring small inputs; the others repeat covered code
with other data or numbers and are marked slow (`pytest -m slow` runs them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from imgcls import api
from imgcls.config import build_config, parse_yaml
from imgcls.data.images import ImageData
from imgcls.data.sources import FASHION_MNIST_CLASSES, DataSource
from imgcls.registry import DATASETS
from tiny_runs import single_thread

CONFIGS = Path(__file__).parent.parent / "configs"
SHIPPED = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("taxonomies", "sweeps"))
FASHION_TREE = CONFIGS / "taxonomies" / "fashion_mnist.yaml"

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10 = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
#: data set name → (class names, native channels, native image size) of the real data
STAND_INS: dict[str, tuple[list[str], int, int]] = {
    "fashion_mnist": (FASHION_MNIST_CLASSES, 1, 28),
    "mnist": ([str(i) for i in range(10)], 1, 28),
    "cifar10": (CIFAR10, 3, 32),
    "cifar100": ([f"class_{i}" for i in range(100)], 3, 32),
    "stl10": (STL10, 3, 96),
    # real WordNet ids (a few of tiny-ImageNet's 200), so its recipes build their WordNet taxonomy for real
    "tiny_imagenet": (["n01443537", "n01629819", "n01641577", "n02085620", "n02094433", "n07920052"], 3, 64),
    "imagefolder": ([chr(ord("A") + i) for i in range(26)] + ["del", "space"], 3, 200),  # the ASL tree
}

#: backbone → backbone_args that shrink it (same layers and code paths, less compute)
REDUCED: dict[str, dict] = {
    "timm:resnet18": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16},
    "timm:vit_base_patch16_224": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    "timm:tf_efficientnetv2_s": {"channel_multiplier": 0.25, "depth_multiplier": 0.25},
    "gfnet": {"depth": 2, "embed_dim": 32},
    "adaptive_cnn": {"width_mult": 0.25},
}


def stand_in(name: str, cfg) -> DataSource:
    """Random uint8 images with the real data set's classes, channels and native size (3 training and 1 test image per class)."""
    names, channels, size = STAND_INS.get(name, ([f"c{i}" for i in range(4)], 3, 32))
    gen = torch.Generator().manual_seed(0)

    def part(per_class: int) -> ImageData:
        labels = torch.arange(len(names)).repeat_interleave(per_class)
        images = torch.randint(0, 256, (len(labels), channels, size, size), dtype=torch.uint8, generator=gen)
        return ImageData(labels=labels, class_names=list(names), images=images)

    return DataSource(part(3), part(1), mean=[0.5] * channels, std=[0.25] * channels)


def quick_config(path: Path, out: Path) -> dict:
    raw = parse_yaml(path.read_text())
    data = raw.setdefault("data", {})
    data.update(download=False, train_subset=None, test_subset=None, num_workers=0, val_fraction=0.2)
    if data.get("samples_per_class"):
        data["samples_per_class"] = 2
    if data.get("holdout_per_class"):  # the stand-in has 3 training images per class
        data["holdout_per_class"] = 1
    if data.get("taxonomy") == "wordnet" and data.get("name", "fashion_mnist") == "fashion_mnist":
        # the file tree has the WordNet tree's shape and needs no WordNet data
        data["taxonomy"] = str(FASHION_TREE)
    model = raw.setdefault("model", {})
    model.update(pretrained=False, pretrained_file=None)
    model["backbone_args"] = {
        **model.get("backbone_args", {}),
        **REDUCED.get(model.get("backbone", "adaptive_cnn"), {}),
    }
    train = raw.setdefault("train", {})
    train.update(
        epochs=1,
        batch_size=4,
        accumulate=1,
        progress=False,
        precision="fp32",
        compile=False,
        channels_last=False,
        threads=None,
    )
    raw.setdefault("eval", {}).update(batch_size=4, plots=False, gradcam=False, embeddings_plot=False)
    raw["output"] = {"dir": str(out), "name": path.stem, "tensorboard": False}
    for stage in raw.get("stages") or []:
        stage["epochs"] = 1
    return raw


#: timm models that run the same code as a smaller one at another size (timm's EfficientNet class; DeiT-B is
#: timm's VisionTransformer at ViT-B's size), so they do not need their own fast case: -m slow trains them
SAME_CODE = {
    "timm:tf_efficientnetv2_l": "timm:tf_efficientnetv2_s",
    "timm:deit_base_patch16_224": "timm:vit_base_patch16_224",
}


def features(path: Path) -> set[tuple]:
    """What decides the code a config runs: backbone, head (+ FCH adjacency), feature cache, stage pattern,
    taxonomy, sampler, augmentation preset, weight averaging."""
    raw = parse_yaml(path.read_text())
    model, data, train = raw.get("model", {}), raw.get("data", {}), raw.get("train", {})
    stages = tuple(
        (s.get("head"), bool(s.get("freeze") or s.get("train_only")), bool(s.get("stop_at_val_acc")))
        for s in raw.get("stages") or []
    )
    return {
        ("backbone", SAME_CODE.get(model.get("backbone"), model.get("backbone", "adaptive_cnn"))),
        ("head", model.get("head", "linear"), model.get("head_args", {}).get("adjacency")),
        ("cache", bool(model.get("cache_features"))),
        ("stages", stages),
        ("taxonomy", data.get("taxonomy") is not None),
        ("sampler", data.get("sampler", "random")),
        ("augment", (raw.get("augment") or {}).get("preset")),
        ("averaging", train.get("ema_decay") is not None, train.get("swa_start") is not None),
    }


def input_pixels(path: Path) -> int:
    data = parse_yaml(path.read_text()).get("data", {})
    return data.get("image_size") or STAND_INS.get(data.get("name", "fashion_mnist"), ([], 3, 32))[2]


def covering_subset(paths: list[Path]) -> set[Path]:
    """Greedy set cover: configs that together exercise every feature above, preferring small inputs."""
    todo = set().union(*(features(p) for p in paths))
    chosen: set[Path] = set()
    while todo:
        best = max(paths, key=lambda p: (len(features(p) & todo), -input_pixels(p), str(p)))
        chosen.add(best)
        todo -= features(best)
    return chosen


#: the fast subset covers every feature; the configs that only repeat covered features run with -m slow
FAST = covering_subset(SHIPPED)
CASES = [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in SHIPPED]


def test_every_config_is_covered():
    assert len(SHIPPED) >= 30
    missing = sorted(
        {yaml.safe_load(p.read_text()).get("data", {}).get("name", "fashion_mnist") for p in SHIPPED}
        - set(STAND_INS)
    )
    assert not missing, f"add the class names, channels and size of {missing} to STAND_INS"


def with_stand_in_teacher(raw: dict, recipe: Path, out: Path) -> dict:
    """A distillation recipe's teacher, made runnable offline: a teacher named as an imgcls run
    (``runs/<name>``) is the shipped config ``<name>.yaml`` trained the same quick way on the stand-in;
    a hub teacher (``timm:…``) is randomly initialised (no weights can be downloaded here)."""
    distill = raw.get("distill") or {}
    teacher = distill.get("teacher")
    if not teacher:
        return raw
    if str(teacher).startswith("timm:"):
        distill.update(pretrained=False, pretrained_file=None)
        return raw
    same_folder = recipe.parent / f"{Path(teacher).name}.yaml"
    teacher_config = (
        same_folder if same_folder.is_file() else next(CONFIGS.rglob(f"{Path(teacher).name}.yaml"))
    )
    with single_thread():
        run = api.train(build_config(quick_config(teacher_config, out)), evaluate_after=False).run_dir
    distill["teacher"] = str(run)
    return raw


@pytest.mark.parametrize("path", CASES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_trains_and_predicts(path, tmp_path, monkeypatch):
    monkeypatch.setitem(
        DATASETS._items,
        parse_yaml(path.read_text()).get("data", {}).get("name", "fashion_mnist"),
        lambda cfg: stand_in(cfg.name, cfg),
    )
    raw = with_stand_in_teacher(quick_config(path, tmp_path / "runs"), path, tmp_path / "teacher_runs")
    cfg = build_config(raw)
    with single_thread():
        result = api.train(cfg, evaluate_after=False)
    stages = cfg.resolved_stages()
    history = result.history
    assert len(history) >= 1 and history[0]["step"] >= 1  # at least one optimiser step
    assert [row["stage"] for row in history] == [s.name for s in stages][: len(history)]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    predictor = api.load(result.run_dir, "last")
    names, channels, size = STAND_INS[cfg.data.name]
    images = torch.randint(0, 256, (3, channels, size, size), dtype=torch.uint8)
    probs = predictor.predict_proba(list(images))
    assert probs.shape == (3, len(names))
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-4)
    assert (result.run_dir / "model.safetensors").is_file()
