"""Batched augmentation: every op's contract, hand-computed cases, torchvision parity, presets."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from imgcls.config import AugmentConfig
from imgcls.data.augment import PRESETS, BatchAugment, build_train_augment, resolve_augment
from imgcls.data.augment_ops import (
    ColorJitter,
    Cutout,
    GeometryChain,
    RandomAffine,
    RandomCropPad,
    RandomErasing,
    RandomGrayscale,
    RandomHFlip,
    RandomPerspective,
    RandomResizedCrop,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_sharpness,
    affine_matrices,
    box_mask,
    crop_with_padding,
    hflip,
    homography_matrices,
    posterize,
    solarize,
    warp,
)
from imgcls.data.augment_policies import OP_NAMES, AutoAugment, RandAugment, TrivialAugment, apply_op_program
from imgcls.errors import ConfigError
from imgcls.runtime.batch import Batch

BILINEAR = TF.InterpolationMode.BILINEAR


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(channels: int = 3, batch: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=gen(seed))


def smooth_image(size: int = 32) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([xs, ys, xs * ys])[None]


ACTIVE_OPS = {
    "crop_pad": lambda: RandomCropPad(4),
    "hflip": lambda: RandomHFlip(0.5),
    "resized_crop": lambda: RandomResizedCrop(True),
    "affine": lambda: RandomAffine(15, 0.1, (0.9, 1.1), 10),
    "perspective": lambda: RandomPerspective(0.3, 1.0),
    "color_jitter": lambda: ColorJitter(0.4, 0.4),
    "grayscale": lambda: RandomGrayscale(0.5),
    "cutout": lambda: Cutout(1, 8),
    "erasing": lambda: RandomErasing(1.0),
    "randaugment": lambda: RandAugment(2, 9),
    "autoaugment_cifar10": lambda: AutoAugment("cifar10"),
    "autoaugment_imagenet": lambda: AutoAugment("imagenet"),
    "autoaugment_svhn": lambda: AutoAugment("svhn"),
    "trivialaugment": lambda: TrivialAugment(True),
}
IDENTITY_OPS = {
    "crop_pad": lambda: RandomCropPad(0),
    "hflip": lambda: RandomHFlip(0.0),
    "resized_crop": lambda: RandomResizedCrop(False),
    "affine": lambda: RandomAffine(0, 0, (1.0, 1.0), 0),
    "perspective": lambda: RandomPerspective(0.0),
    "perspective_p0": lambda: RandomPerspective(0.3, 0.0),
    "color_jitter": lambda: ColorJitter(0.0, 0.0),
    "grayscale": lambda: RandomGrayscale(0.0),
    "cutout": lambda: Cutout(0, 8),
    "erasing": lambda: RandomErasing(0.0),
    "randaugment": lambda: RandAugment(0, 9),
    "autoaugment": lambda: AutoAugment(None),
    "trivialaugment": lambda: TrivialAugment(False),
}


# --------------------------------------------------------------------------------------------
# The contract every op keeps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(ACTIVE_OPS))
def test_op_keeps_shape_dtype_range_and_is_seeded(name: str, channels: int) -> None:
    op = ACTIVE_OPS[name]()
    x = images(channels, batch=16)
    out = op(x, gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(out, op(x, gen(1))), "same seed must give the same output"
    assert torch.equal(x, images(channels, batch=16)), "the input must not be modified"
    if name == "grayscale" and channels == 1:
        assert torch.equal(out, x)  # nothing to convert
        return
    assert not torch.equal(out, x), "an active op must change something"
    assert not torch.equal(out, op(x, gen(2))), "a different seed must give a different output"


@pytest.mark.parametrize("name", list(IDENTITY_OPS))
def test_op_at_magnitude_or_probability_zero_is_identity(name: str) -> None:
    op = IDENTITY_OPS[name]()
    x = images(3)
    assert op.is_identity
    assert op(x, gen(0)) is x


def test_ops_draw_parameters_per_sample() -> None:
    same = images(3, batch=1).expand(32, 3, 16, 16).contiguous()
    for name in ["affine", "perspective", "color_jitter", "randaugment", "autoaugment_cifar10", "cutout"]:
        out = ACTIVE_OPS[name]()(same, gen(3))
        distinct = {tuple(o.flatten().tolist()) for o in out}
        assert len(distinct) > 4, f"{name}: samples should get different parameters"


# --------------------------------------------------------------------------------------------
# Kernels on hand-made images
# --------------------------------------------------------------------------------------------


def test_hflip_on_hand_made_image() -> None:
    x = torch.arange(6.0).view(1, 1, 1, 6).repeat(2, 1, 2, 1) / 10
    out = hflip(x, torch.tensor([True, False]))
    assert out[0, 0, 0].tolist() == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert torch.equal(out[1], x[1])


def test_crop_with_padding_shifts_content() -> None:
    x = torch.rand(3, 2, 8, 8, generator=gen(0))
    p = 2
    out = crop_with_padding(x, p, torch.tensor([[p, p], [0, 0], [2 * p, 1]]))
    assert torch.equal(out[0], x[0])  # centre window = identity
    # offset (0, 0): content moves down-right by p, zeros enter from the top/left
    assert torch.equal(out[1, :, p:, p:], x[1, :, :-p, :-p])
    assert out[1, :, :p].abs().sum() == 0 and out[1, :, :, :p].abs().sum() == 0
    # offset (2p, 1): content moves up by p and right by p - 1
    assert torch.equal(out[2, :, :-p, 1:], x[2, :, p:, :-1])
    assert out[2, :, -p:].abs().sum() == 0


def test_random_crop_pad_offsets_cover_the_range() -> None:
    x = torch.zeros(512, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    out = RandomCropPad(2)(x, gen(0))
    rows, cols = (
        out[:, 0].flatten(1).argmax(1).div(8, rounding_mode="floor"),
        out[:, 0].flatten(1).argmax(1) % 8,
    )
    assert set(rows.tolist()) == {2, 3, 4, 5, 6} and set(cols.tolist()) == {2, 3, 4, 5, 6}


def test_cutout_area_and_fill() -> None:
    x = torch.rand(64, 3, 20, 20, generator=gen(0)) * 0.5 + 0.25
    op = Cutout(1, 6)
    boxes = op.sample_boxes(64, 20, 20, gen(5))
    out = op(x, gen(5))
    changed = (out != x).any(dim=1).flatten(1).sum(1)
    areas = (boxes[:, 0, 2] - boxes[:, 0, 0]) * (boxes[:, 0, 3] - boxes[:, 0, 1])
    assert torch.equal(changed, areas)
    inside = (boxes[:, 0, 0] > 0) & (boxes[:, 0, 1] > 0) & (boxes[:, 0, 2] < 20) & (boxes[:, 0, 3] < 20)
    assert inside.any() and (areas[inside] == 36).all()  # a hole away from the border is size × size
    assert (areas <= 36).all() and (areas > 0).all()
    top, left = int(boxes[0, 0, 0]), int(boxes[0, 0, 1])
    assert torch.allclose(out[0, :, top, left], x[0].mean(dim=(1, 2)))  # filled with the image's mean colour


def test_box_mask_union_of_holes() -> None:
    mask = box_mask(4, 5, torch.tensor([[[0, 0, 2, 2], [1, 1, 3, 4]]]), "cpu")
    expected = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool
    )
    assert torch.equal(mask[0, 0], expected)


def test_random_erasing_area_within_scale() -> None:
    op = RandomErasing(1.0)
    boxes = op.sample_boxes(200, 32, 32, gen(0))[:, 0]
    fraction = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double() / 1024
    assert (fraction > 0).all()  # p = 1: every sample is erased
    assert fraction.min() >= 0.015 and fraction.max() <= 0.36  # (0.02, 0.33) up to integer rounding


def test_random_resized_crop_boxes() -> None:
    boxes = RandomResizedCrop(True).sample_boxes(500, 24, 32, gen(0))
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 32).all() and (y0 + h <= 24).all()
    area = w * h / (24 * 32)
    assert area.min() >= 0.06 and area.max() <= 1.0
    # aspect in (3/4, 4/3) before rounding w and h to integers
    assert ((w + 0.5) / (h - 0.5)).min() >= 0.75 and ((w - 0.5) / (h + 0.5)).max() <= 4 / 3


def test_grayscale_keeps_channels() -> None:
    x = images(3)
    out = RandomGrayscale(1.0)(x, gen(0))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    expected = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(out[:, 0], expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Parity with torchvision's kernels (per-sample parameters vs one call per sample)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"angle": 30.0},
        {"translate": (3.0, -2.0)},
        {"scale": 1.2},
        {"shear": (7.0, -5.0)},
        {"angle": 20.0, "translate": (2.0, 1.0), "scale": 0.9, "shear": (5.0, 3.0)},
    ],
)
def test_affine_matches_torchvision(params: dict) -> None:
    x = smooth_image()
    angle = params.get("angle", 0.0)
    translate, scale, shear = (
        params.get("translate", (0.0, 0.0)),
        params.get("scale", 1.0),
        params.get("shear", (0.0, 0.0)),
    )
    matrices = affine_matrices(
        32, 32, torch.tensor([angle]), torch.tensor([translate]), torch.tensor([scale]), torch.tensor([shear])
    )
    ours = warp(x, matrices)
    # torchvision's F.affine counts angles clockwise (F.rotate counter-clockwise, like ours)
    ref = TF.affine(
        x, angle=-angle, translate=list(translate), scale=scale, shear=list(shear), interpolation=BILINEAR
    )
    assert torch.allclose(ours[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4], atol=1e-5)
    rotated = warp(x, affine_matrices(32, 32, torch.tensor([angle])))
    ref_rot = TF.rotate(x, angle, interpolation=BILINEAR)
    assert torch.allclose(rotated[..., 4:-4, 4:-4], ref_rot[..., 4:-4, 4:-4], atol=1e-5)


def test_warp_identity_and_integer_translation_are_exact() -> None:
    x = images(3, batch=2)
    assert torch.allclose(warp(x, torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)), x, atol=1e-6)
    shifted = warp(
        x, affine_matrices(16, 16, torch.zeros(2), translate=torch.tensor([[3.0, 0.0], [0.0, -2.0]]))
    )
    assert torch.allclose(shifted[0, :, :, 3:], x[0, :, :, :-3], atol=1e-6)
    assert shifted[0, :, :, :3].abs().max() < 1e-6
    assert torch.allclose(shifted[1, :, :-2], x[1, :, 2:], atol=1e-6)


def test_homography_maps_the_four_points() -> None:
    source = torch.tensor([[[0.0, 0.0], [16.0, 0.0], [16.0, 16.0], [0.0, 16.0]]])
    target = torch.tensor([[[2.0, 1.0], [13.0, 2.0], [15.0, 14.0], [1.0, 13.0]]])
    h = homography_matrices(source, target)[0]
    points = torch.cat([source[0], torch.ones(4, 1)], dim=1).double() @ h.T
    assert torch.allclose(points[:, :2] / points[:, 2:], target[0].double(), atol=1e-9)


def test_perspective_matches_torchvision() -> None:
    x = smooth_image()
    start, end = [[0, 0], [31, 0], [31, 31], [0, 31]], [[2, 1], [28, 2], [30, 29], [1, 28]]
    # torchvision fits the map on the points as given and evaluates it at pixel centres (j + 0.5), as we do
    ours = warp(x, homography_matrices(torch.tensor([start]), torch.tensor([end])))
    ref = TF.perspective(x, startpoints=start, endpoints=end, interpolation=BILINEAR)
    assert torch.allclose(ours[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4], atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_kernels_match_torchvision_per_sample(channels: int) -> None:
    x = images(channels, batch=4)
    factors = torch.tensor([0.0, 0.5, 1.0, 1.7])
    cases = [
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
        (adjust_sharpness, TF.adjust_sharpness),
    ]
    for ours, theirs in cases:
        out = ours(x, factors)
        for i, f in enumerate(factors.tolist()):
            assert torch.allclose(out[i], theirs(x[i], f), atol=1e-5), ours.__name__
    bits = torch.tensor([1, 4, 7, 8])
    out = posterize(x, bits)
    for i, b in enumerate(bits.tolist()):
        assert torch.allclose(out[i], TF.posterize(x[i], b), atol=1e-6)
    thresholds = torch.tensor([0.0, 0.3, 0.7, 1.01])
    out = solarize(x, thresholds)
    for i, t in enumerate(thresholds.tolist()[:3]):
        assert torch.equal(out[i], TF.solarize(x[i], t))
    assert torch.equal(out[3], x[3])  # threshold above 1: identity


def test_colour_kernels_neutral_factor_is_identity() -> None:
    x = images(3, batch=2)
    ones = torch.ones(2)
    for kernel in (adjust_brightness, adjust_contrast, adjust_saturation, adjust_sharpness):
        assert torch.allclose(kernel(x, ones), x, atol=1e-6)
    quantised = torch.randint(0, 256, (2, 3, 4, 4), generator=gen(0)) / 256
    assert torch.equal(posterize(quantised, torch.tensor([8, 8])), quantised)


def test_color_jitter_factor_range() -> None:
    x = torch.full((256, 1, 4, 4), 0.5)
    out = ColorJitter(brightness=0.2)(x, gen(0))
    factors = out[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6
    assert factors.max() - factors.min() > 0.3


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------


def test_op_program_applies_each_sample_its_own_op() -> None:
    x = images(3, batch=4, size=12)
    ids = torch.tensor([[OP_NAMES.index(n)] for n in ["Invert", "Identity", "TranslateX", "Rotate"]])
    magnitudes = torch.tensor([[0.0], [0.0], [3.7], [90.0]], dtype=torch.float64)
    out = apply_op_program(x, ids, magnitudes, torch.ones(4, 1, dtype=torch.bool))
    assert torch.allclose(out[0], 1 - x[0])
    assert torch.equal(out[1], x[1])
    assert torch.allclose(out[2, :, :, 3:], x[2, :, :, :-3], atol=1e-6)  # int(3.7) = 3 px, like torchvision
    assert torch.allclose(out[3], torch.rot90(x[3], 1, dims=(1, 2)), atol=1e-5)  # 90° counter-clockwise
    inactive = apply_op_program(x, ids, magnitudes, torch.zeros(4, 1, dtype=torch.bool))
    assert torch.equal(inactive, x)


def test_randaugment_rejects_bad_magnitude() -> None:
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(2, 31)


# --------------------------------------------------------------------------------------------
# Geometry fusion and the pipeline
# --------------------------------------------------------------------------------------------


def test_geometry_chain_multiplies_maps_in_order() -> None:
    first, second = RandomAffine(20, 0.1), RandomPerspective(0.3, 1.0)
    chain = GeometryChain([first, second]).sample_matrices(6, 16, 16, gen(4))
    g = gen(4)
    a = first.sample_matrices(6, 16, 16, g)
    b = second.sample_matrices(6, 16, 16, g)
    assert torch.allclose(chain, b @ a)


def test_presets_resolve_and_explicit_fields_win() -> None:
    for name, values in PRESETS.items():
        resolved = resolve_augment(AugmentConfig(preset=name))
        for key, value in values.items():
            assert getattr(resolved, key) == (tuple(value) if isinstance(value, list) else value)
    cifar = resolve_augment(AugmentConfig(preset="cifar", hflip=0.0, cutout_size=8))
    assert cifar.hflip == 0.0 and cifar.cutout_size == 8  # explicitly set, even to the default, wins
    assert cifar.crop_padding == 4 and cifar.autoaugment == "cifar10" and cifar.cutmix_alpha == 1.0
    asl = resolve_augment(AugmentConfig.model_validate({"preset": "asl", "rotation": 5}))
    assert asl.rotation == 5 and asl.grayscale and asl.scale == (0.9, 1.1) and asl.perspective == 0.2
    assert resolve_augment(asl) == asl  # idempotent
    mnist = resolve_augment(AugmentConfig(preset="mnist"))
    assert (mnist.rotation, mnist.translate, mnist.cutout_holes, mnist.cutout_size) == (10.0, 0.1, 1, 8)


def test_unknown_preset_is_a_config_error_listing_the_presets() -> None:
    with pytest.raises(ConfigError, match="asl, cifar, mnist"):
        resolve_augment(AugmentConfig(preset="imagenet"))
    with pytest.raises(ConfigError):
        build_train_augment(AugmentConfig(preset="cifar100"), 10)


def test_bad_fields_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cutout"):
        build_train_augment(AugmentConfig(cutout_holes=1), 10)
    with pytest.raises(ConfigError, match="randaugment"):
        build_train_augment(AugmentConfig(randaugment=(2, 40)), 10)
    with pytest.raises(ConfigError, match="scale"):
        build_train_augment(AugmentConfig(scale=(1.2, 0.8)), 10)


def test_pipeline_identity_and_structure() -> None:
    assert build_train_augment(AugmentConfig(), 10).is_identity
    assert not build_train_augment(AugmentConfig(mixup_alpha=0.2), 10).is_identity
    asl = build_train_augment(AugmentConfig(preset="asl"), 28)
    assert [type(op).__name__ for op in asl.ops] == ["RandomGrayscale", "GeometryChain", "ColorJitter"]
    cifar = build_train_augment(AugmentConfig(preset="cifar"), 10)
    assert [type(op).__name__ for op in cifar.ops] == [
        "RandomCropPad",
        "RandomHFlip",
        "AutoAugment",
        "Cutout",
    ]


@pytest.mark.parametrize("preset", ["mnist", "cifar", "asl"])
def test_pipeline_on_a_batch(preset: str) -> None:
    channels = 3 if preset == "cifar" else 1
    x = images(channels, batch=9, size=32)
    batch = Batch(x, torch.arange(9) % 10, index=torch.arange(9))
    augment = BatchAugment(resolve_augment(AugmentConfig(preset=preset)), num_classes=10)
    out = augment(batch, gen(0), epoch=0)
    assert out is not batch and out.images.shape == x.shape and out.images.dtype == torch.float32
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert torch.equal(out.index, batch.index)
    again = augment(batch, gen(0), epoch=0)
    assert torch.equal(out.images, again.images)
    if preset == "cifar":
        assert out.soft_targets is not None and torch.allclose(out.soft_targets.sum(1), torch.ones(9))
    else:
        assert out.soft_targets is None and torch.equal(out.targets, batch.targets)


def test_pipeline_rejects_uint8() -> None:
    augment = build_train_augment(AugmentConfig(hflip=0.5), 10)
    with pytest.raises(TypeError, match="float"):
        augment(
            Batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)), gen(0), 0
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_result_on_gpu_and_cpu() -> None:
    cfg = AugmentConfig(
        crop_padding=2, hflip=0.5, rotation=10, translate=0.1, perspective=0.2, brightness=0.2,
        contrast=0.2, randaugment=(2, 9), cutout_holes=1, cutout_size=6, erasing=0.5, cutmix_alpha=1.0,
    )  # fmt: skip
    augment = build_train_augment(cfg, 10)
    batch = Batch(images(3, batch=16, size=24), torch.arange(16) % 10)
    cpu = augment(batch, gen(7), 0)
    gpu = augment(batch.to("cuda"), gen(7), 0)
    assert torch.allclose(cpu.images, gpu.images.cpu(), atol=2e-3)
    assert torch.equal(cpu.targets, gpu.targets.cpu())
