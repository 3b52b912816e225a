"""DeiT hybrid backbone and two-token head (seed 004, SPEC §5.2): parameter counts of the seed's two sizes,
feature/token shapes, CLS-token dropout only in training, drop-path schedule, the ``avg`` inference as the mean
of both classifiers, the head's loss terms, and the backbone/head pairing check."""

from __future__ import annotations

import pytest
import torch

from imgcls.config import ModelConfig
from imgcls.errors import ConfigError
from imgcls.models.backbones.deit import DeiT
from imgcls.models.classifier import build_model, count_parameters
from imgcls.models.heads.two_token import DIST_LABEL_TERM, TwoTokenHead
from imgcls.runtime.batch import Batch
from tiny_runs import single_thread


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


def seed_deit(size: int, patch: int, in_chans: int, dist: bool = True):
    head = "deit_dist" if dist else "linear"
    args = {
        "img_size": size,
        "patch_size": patch,
        "distillation_token": dist,
        "channel_expand": in_chans == 1,
    }
    return build_model(
        ModelConfig(backbone="deit", backbone_args=args, head=head), num_classes=10, in_chans=in_chans
    )


def tiny(**kw) -> DeiT:
    args = dict(
        in_chans=1,
        img_size=28,
        patch_size=7,
        embed_dim=32,
        depth=3,
        num_heads=2,
        stem_channels=[8],
        drop_path_rate=0.0,
    )
    return DeiT(**{**args, **kw})


def test_seed_sizes_parameter_counts():
    mnist, cifar = seed_deit(28, 2, 1), seed_deit(32, 4, 3)
    # seed README: 3.9 M (MNIST, 28 px / patch 2) and 4.3 M (CIFAR-10, 32 px / patch 4)
    assert count_parameters(mnist) == pytest.approx(3.9e6, rel=0.01)
    assert count_parameters(cifar) == pytest.approx(4.3e6, rel=0.01)
    # by hand: 12 blocks × 297,024 + stem + patch conv + tokens + pos-embed + norm + two heads
    block = (192 * 576 + 576) + (192 * 192 + 192) + (192 * 384 + 384) + (384 * 192 + 192) + 4 * 192
    stem = lambda c: 9 * c * 96 + 2 * 96 + 9 * 96 * 192 + 2 * 192  # noqa: E731
    heads = 2 * (192 * 10 + 10)
    assert (
        count_parameters(mnist)
        == 12 * block + 3 + stem(3) + 192 * 192 * 4 + 192 + 2 * 192 + 198 * 192 + 384 + heads
    )
    assert (
        count_parameters(cifar)
        == 12 * block + stem(3) + 192 * 192 * 16 + 192 + 2 * 192 + 66 * 192 + 384 + heads
    )
    assert mnist.backbone.grid == 14 and cifar.backbone.grid == 8


def test_feature_and_token_shapes():
    x = torch.randn(2, 1, 28, 28)
    plain, two = tiny().eval(), tiny(distillation_token=True).eval()
    assert plain.forward_features(x).shape == (2, 32) and plain.num_features == 32
    assert two.forward_features(x).shape == (2, 64) and two.num_features == 64 and two.num_prefix_tokens == 2
    tokens = two.forward_tokens(x, [0, -1])
    assert set(tokens) == {0, -1} and tokens[0].shape == (2, 16, 32) and tokens[-1].shape == (2, 16, 32)
    # forward_tokens gives block outputs *before* the final norm; the features are the normed CLS/DIST tokens
    captured = {}
    two.norm.register_forward_hook(lambda m, i, o: captured.update(inp=i[0], out=o))
    feats = two.forward_features(x)
    torch.testing.assert_close(tokens[-1], captured["inp"][:, 2:])
    torch.testing.assert_close(feats, torch.cat([captured["out"][:, 0], captured["out"][:, 1]], dim=-1))
    with pytest.raises(ConfigError, match=r"blocks 0\.\.2"):
        two.forward_tokens(x, [3])
    with pytest.raises(ValueError, match=r"28×28"):
        two.forward_features(torch.randn(1, 1, 32, 32))


def test_drop_path_schedule_is_linear():
    model = tiny(depth=5, drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_cls_token_dropout_only_in_training():
    torch.manual_seed(0)
    # no BatchNorm: train and eval outputs differ only by the CLS-token dropout
    model = tiny(conv_stem=False, cls_token_dropout=1.0)
    x = torch.randn(4, 1, 28, 28)
    captured = {}
    model.norm.register_forward_hook(lambda m, i, o: captured.update(out=o))
    model.eval()
    out_eval = model.forward_features(x)
    torch.testing.assert_close(out_eval, captured["out"][:, 0])  # the CLS token, untouched
    model.train()
    out_train = model.forward_features(x)
    torch.testing.assert_close(out_train, captured["out"][:, 1:].mean(dim=1))  # p=1: every CLS → patch mean
    model.cls_token_dropout = 0.0
    torch.testing.assert_close(model.forward_features(x), out_eval)  # p=0: training output = eval output
    model.cls_token_dropout = 0.5
    torch.manual_seed(1)
    out = model.forward_features(torch.randn(64, 1, 28, 28))
    normed = captured["out"]
    replaced = torch.isclose(out, normed[:, 1:].mean(1)).all(-1)
    assert 10 < int(replaced.sum()) < 54  # about half of the samples


def test_two_token_head_inference_modes_and_loss():
    torch.manual_seed(0)
    feats = torch.randn(5, 64)
    head = TwoTokenHead(64, 10, inference="avg")
    out = head(feats)
    cls, dist = out.extras["cls_logits"], out.extras["dist_logits"]
    torch.testing.assert_close(cls, feats[:, :32] @ head.head.weight.T + head.head.bias)
    torch.testing.assert_close(dist, feats[:, 32:] @ head.head_dist.weight.T + head.head_dist.bias)
    torch.testing.assert_close(out.logits, (cls + dist) / 2)
    head.inference = "cls"
    torch.testing.assert_close(head(feats).logits, cls)
    head.inference = "dist"
    torch.testing.assert_close(head(feats).logits, dist)
    targets = torch.randint(0, 10, (5,))
    terms = head.loss(out, Batch(images=torch.zeros(5, 1, 2, 2), targets=targets))
    assert set(terms) == {"ce", DIST_LABEL_TERM}
    torch.testing.assert_close(terms["ce"], torch.nn.functional.cross_entropy(cls, targets))
    torch.testing.assert_close(terms[DIST_LABEL_TERM], torch.nn.functional.cross_entropy(dist, targets))
    with pytest.raises(ConfigError, match="inference"):
        TwoTokenHead(64, 10, inference="max")


def test_backbone_and_head_token_counts_must_match():
    args = {
        "img_size": 28,
        "patch_size": 7,
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "stem_channels": [8],
    }
    with pytest.raises(ConfigError, match="deit_dist"):
        build_model(
            ModelConfig(backbone="deit", backbone_args={**args, "distillation_token": True}, head="linear"),
            10,
            1,
        )
    with pytest.raises(ConfigError, match="distillation_token=true"):
        build_model(ModelConfig(backbone="deit", backbone_args=args, head="deit_dist"), 10, 1)
    model = build_model(
        ModelConfig(backbone="deit", backbone_args={**args, "distillation_token": True}, head="deit_dist"),
        10,
        1,
    )
    assert model(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)


def test_bad_geometry_is_a_config_error():
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        DeiT(img_size=28, patch_size=3)
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        DeiT(embed_dim=100, num_heads=3)
