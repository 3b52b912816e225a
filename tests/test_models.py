"""Tests of the model builder (DESIGN "contracts"): AdaptiveCNN (seed 004, SPEC §5.1) parameter counts and
shapes, timm backbones on 1-channel 28×28 inputs, head_args / backbone_args errors, and the base head's
cross-entropy (hard labels, soft targets, label smoothing) against hand-computed values and torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imgcls.config import ModelConfig
from imgcls.errors import ConfigError
from imgcls.models.backbones.adaptive_cnn import AdaptiveCNN, ResidualBlock, SEBlock, norm_layer
from imgcls.models.classifier import Classifier, build_model, count_parameters
from imgcls.models.heads.base import HeadOutput, cross_entropy
from imgcls.models.heads.linear import LinearHead, MLPHead
from imgcls.runtime.batch import Batch
from tiny_runs import single_thread


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


def seed_model(layout: str) -> Classifier:
    hidden = {"mnist": [64], "cifar": [256]}[layout]
    cfg = ModelConfig(
        backbone="adaptive_cnn",
        backbone_args={"layout": layout},
        head="mlp",
        head_args={"hidden": hidden, "dropout": 0.3},
    )
    return build_model(cfg, num_classes=10, in_chans=1 if layout == "mnist" else 3)


# ------------------------------------------------------------------------------- AdaptiveCNN
def test_adaptive_cnn_mnist_parameter_count():
    model = seed_model("mnist")
    n = count_parameters(model)
    assert n == pytest.approx(709e3, rel=0.01)
    assert n == 709_034
    assert count_parameters(model.head) == 128 * 64 + 64 + 64 * 10 + 10


def test_adaptive_cnn_cifar_parameter_count():
    model = seed_model("cifar")
    n = count_parameters(model)
    assert n == pytest.approx(17.6e6, rel=0.01)
    assert n == 17_629_514
    assert count_parameters(model.head) == 512 * 256 + 256 + 256 * 10 + 10


def test_adaptive_cnn_shapes():
    model = seed_model("mnist").eval()
    x = torch.randn(3, 1, 28, 28)
    assert model.forward_features(x).shape == (3, 128)
    out = model(x)
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (3, 10) and out.embeddings.shape == (3, 64)
    probs = model.predict_proba(x)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3))

    cifar = seed_model("cifar").eval()
    assert cifar.backbone.num_features == 512
    assert cifar(torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)


def test_adaptive_cnn_width_mult_and_spatial_reduction():
    small = AdaptiveCNN("mnist", in_chans=1, width_mult=0.25)
    assert small.num_features == 32  # 128 × 0.25
    # stem max-pool (28 → 14), two stride-2 blocks (14 → 7 → 4)
    assert small.features(torch.randn(1, 1, 28, 28)).shape == (1, 32, 4, 4)
    assert AdaptiveCNN("cifar", in_chans=3, width_mult=0.25).features(torch.randn(1, 3, 32, 32)).shape == (
        1,
        128,
        4,
        4,
    )


def test_adaptive_cnn_custom_blocks_and_stem_pool():
    # the layout's stem (32 channels, max-pool) with 256 channels in the last stage
    wide = AdaptiveCNN("mnist", blocks=[[32, 1], [32, 1], [64, 2], [64, 1], [256, 2], [256, 1]])
    assert wide.num_features == 256
    assert wide.features(torch.randn(1, 1, 28, 28)).shape == (1, 256, 4, 4)
    stages = [(b.conv1.in_channels, b.conv2.out_channels, b.conv1.stride[0]) for b in wide.features[4:]]
    assert stages == [(32, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 256, 2), (256, 256, 1)]
    # the same blocks as the layout's give the very same parameter count
    layout_blocks = [[32, 1], [32, 1], [64, 2], [64, 1], [128, 2], [128, 1]]
    assert count_parameters(AdaptiveCNN("mnist", blocks=layout_blocks)) == count_parameters(
        AdaptiveCNN("mnist")
    )
    # no stem pool: the first stage keeps 28×28; width_mult still scales custom blocks
    full = AdaptiveCNN("mnist", blocks=[[16, 1], [32, 2]], stem_pool=False, width_mult=0.5)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in full.features)
    assert full.features(torch.randn(1, 1, 28, 28)).shape == (1, 16, 14, 14)
    # cifar's stem has no pool; stem_pool=true adds it (32 → 16 before the blocks)
    pooled = AdaptiveCNN("cifar", in_chans=3, blocks=[[64, 1]], stem_pool=True)
    assert pooled.features(torch.randn(1, 3, 32, 32)).shape == (1, 64, 16, 16)


@pytest.mark.parametrize(
    "blocks, expected",
    [
        ([], "adaptive_cnn.blocks"),
        ([[0, 1]], "out channels must be positive"),
        ([[32, 3]], "must be 1 or 2"),
        ([[32]], "adaptive_cnn.blocks.0"),
    ],
)
def test_adaptive_cnn_bad_blocks_name_the_key(blocks, expected):
    with pytest.raises(ConfigError, match=expected):
        AdaptiveCNN("mnist", blocks=blocks)


def test_adaptive_cnn_without_se_has_fewer_parameters():
    with_se = count_parameters(AdaptiveCNN("mnist", use_se=True))
    without = count_parameters(AdaptiveCNN("mnist", use_se=False))
    # SE: Linear(C, C/16) + Linear(C/16, C), no bias, for blocks of 32, 32, 64, 64, 128, 128 channels
    se = sum(2 * c * (c // 16) for c in (32, 32, 64, 64, 128, 128))
    assert with_se - without == se


def test_se_block_scales_channels_in_unit_interval():
    se = SEBlock(32)
    x = torch.rand(2, 32, 5, 5)
    y = se(x)
    ratio = y / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)  # one scale per channel
    assert bool(((ratio > 0) & (ratio < 1)).all())


def test_residual_block_shortcut_only_when_shape_changes():
    assert isinstance(ResidualBlock(32, 32, 1).shortcut, torch.nn.Identity)
    block = ResidualBlock(32, 64, 2)
    assert not isinstance(block.shortcut, torch.nn.Identity)
    assert block(torch.randn(1, 32, 8, 8)).shape == (1, 64, 4, 4)


def test_group_norm_variant_is_batch_independent_and_same_size():
    torch.manual_seed(0)
    model = AdaptiveCNN("mnist", width_mult=0.25, norm="group").train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    groups = {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {8}  # widths 8, 16, 32 are multiples of 8
    assert norm_layer("group", 10).num_groups == 1  # otherwise one group (layer norm over C, H, W)
    x = torch.randn(6, 1, 28, 28)
    # in train mode a sample's output does not depend on the rest of the batch (BatchNorm's would)
    assert torch.allclose(model(x)[:2], model(x[:2]), atol=1e-5)
    batch_norm = AdaptiveCNN("mnist", width_mult=0.25).train()
    assert not torch.allclose(batch_norm(x)[:2], batch_norm(x[:2]), atol=1e-3)
    same_size = sum(p.numel() for p in AdaptiveCNN("mnist").parameters())
    assert sum(p.numel() for p in AdaptiveCNN("mnist", norm="group").parameters()) == same_size
    with pytest.raises(ConfigError, match=r"'layer' for 'adaptive_cnn\.norm'"):
        AdaptiveCNN("mnist", norm="layer")


def test_unknown_layout_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'imagenet' for 'model\.backbone_args\.layout'"):
        build_model(ModelConfig(backbone_args={"layout": "imagenet"}), 10, 1)


def test_unknown_adaptive_cnn_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="width_multt"):
        build_model(ModelConfig(backbone_args={"layout": "mnist", "width_multt": 0.25}), 10, 1)


def test_adaptive_cnn_has_no_pretrained_weights():
    with pytest.raises(ConfigError, match="pretrained"):
        build_model(ModelConfig(pretrained=True), 10, 1)


# ------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:resnet18"])
def test_timm_backbone_on_one_channel_28px(name):
    model = build_model(ModelConfig(backbone=name), num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    features = model.forward_features(x)
    assert features.shape == (2, model.backbone.num_features)
    out = model(x)
    assert out.logits.shape == (2, 10)
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    assert model.backbone.num_features == (
        512 if name.endswith("resnet18") else model.backbone.model.num_features
    )


def test_unknown_timm_model_is_a_config_error():
    with pytest.raises(ConfigError, match="timm has no model 'resnet1800'"):
        build_model(ModelConfig(backbone="timm:resnet1800"), 10, 1)


def test_bad_timm_backbone_args_is_a_config_error():
    with pytest.raises(ConfigError, match=r"bad model\.backbone_args for timm:test_resnet"):
        build_model(ModelConfig(backbone="timm:test_resnet", backbone_args={"no_such_arg": 1}), 10, 1)


def test_missing_pretrained_file_is_reported(tmp_path):
    from imgcls.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        build_model(
            ModelConfig(backbone="timm:test_resnet", pretrained_file=str(tmp_path / "none.safetensors")),
            10,
            1,
        )


# ------------------------------------------------------------------------------- heads
def test_unknown_head_arg_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(head="mlp", head_args={"hiden": [64]}), 10, 1)
    message = str(info.value)
    assert (
        "'model.head_args.hiden'" in message
        and "mlp" in message
        and "hidden" in message
        and "dropout" in message
    )
    with pytest.raises(ConfigError, match=r"'model\.head_args\.hidden'\. Valid keys of head 'linear': none"):
        build_model(ModelConfig(head="linear", head_args={"hidden": [64]}), 10, 1)


def test_unknown_head_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'mlp'"):
        build_model(ModelConfig(head="mpl"), 10, 1)


def test_bad_mlp_activation_is_a_config_error():
    with pytest.raises(ConfigError, match="relux"):
        build_model(ModelConfig(head="mlp", head_args={"activation": "relux"}), 10, 1)


def test_mlp_head_layers_and_dropout_before_head():
    head = MLPHead(32, 5, hidden=[16, 8], dropout=0.5, activation="gelu")
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 16), (16, 8), (8, 5)]
    out = head.eval()(torch.randn(4, 32))
    assert out.logits.shape == (4, 5) and out.embeddings.shape == (4, 8)
    model = build_model(ModelConfig(drop_rate=0.5), 10, 1)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.5


def test_head_rejects_degenerate_sizes():
    with pytest.raises(ValueError):
        LinearHead(0, 10)
    with pytest.raises(ValueError):
        LinearHead(8, 1)


def test_label_smoothing_reaches_the_head():
    model = build_model(ModelConfig(head="linear"), 10, 1, label_smoothing=0.1)
    assert model.head.label_smoothing == 0.1


# ------------------------------------------------------------------------------- cross-entropy
def make_batch(targets: torch.Tensor, soft: torch.Tensor | None = None) -> Batch:
    return Batch(images=torch.zeros(len(targets), 1, 1, 1), targets=targets, soft_targets=soft)


def test_cross_entropy_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    targets = torch.tensor([0, 1])
    # −log(1/2) and −log(1/(1+e²))
    expected = (torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(2.0)))) / 2
    assert cross_entropy(logits, make_batch(targets)) == pytest.approx(float(expected), rel=1e-6)


def test_soft_one_hot_targets_equal_hard_label_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    targets = torch.tensor([0, 1, 2, 3, 1, 0])
    one_hot = F.one_hot(targets, 4).float()
    hard = cross_entropy(logits, make_batch(targets))
    soft = cross_entropy(logits, make_batch(targets, one_hot))
    assert soft == pytest.approx(float(hard), rel=1e-6)
    assert hard == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_label_smoothing_matches_torch(epsilon):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, generator=g)
    targets = torch.randint(0, 7, (5,), generator=g)
    expected = float(F.cross_entropy(logits, targets, label_smoothing=epsilon))
    assert cross_entropy(logits, make_batch(targets), epsilon) == pytest.approx(expected, rel=1e-6)
    # smoothing also applies to soft (mixed) targets: one-hot soft targets give the same value
    soft = F.one_hot(targets, 7).float()
    assert cross_entropy(logits, make_batch(targets, soft), epsilon) == pytest.approx(expected, rel=1e-6)


def test_mixed_soft_targets_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    soft = torch.tensor([[0.25, 0.75, 0.0]])
    log_p = logits.log_softmax(-1)[0]
    expected = -(0.25 * log_p[0] + 0.75 * log_p[1])
    assert cross_entropy(logits, make_batch(torch.tensor([1]), soft)) == pytest.approx(
        float(expected), rel=1e-6
    )


def test_soft_target_gradient_is_softmax_minus_target():
    logits = torch.randn(3, 4, requires_grad=True)
    soft = torch.softmax(torch.randn(3, 4), dim=-1)
    cross_entropy(logits, make_batch(soft.argmax(-1), soft)).backward()
    expected = (logits.detach().softmax(-1) - soft) / 3
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_cross_entropy_computes_in_fp32_for_low_precision_logits():
    logits = torch.randn(4, 3).to(torch.bfloat16)
    loss = cross_entropy(logits, make_batch(torch.tensor([0, 1, 2, 0])))
    assert loss.dtype == torch.float32


def test_default_head_loss_and_predict():
    head = LinearHead(8, 3, label_smoothing=0.2)
    features = torch.randn(4, 8)
    targets = torch.tensor([0, 1, 2, 1])
    out = head(features)
    terms = head.loss(out, make_batch(targets))
    assert list(terms) == ["ce"]
    expected = float(F.cross_entropy(out.logits, targets, label_smoothing=0.2))
    assert float(terms["ce"]) == pytest.approx(expected, rel=1e-6)
    probs = head.predict(out)
    assert torch.allclose(probs, out.logits.softmax(-1)) and head.inference_mode == "sample"
