"""Tests of the name → factory registry (DESIGN "registry.py"): lookups, prefixes, typo suggestions,
double registration, and the project's BACKBONES / HEADS / DATASETS tables."""

from __future__ import annotations

import pytest

from imgcls.errors import ConfigError
from imgcls.registry import BACKBONES, DATASETS, HEADS, Registry


@pytest.fixture
def things() -> Registry:
    reg = Registry("thing")

    @reg.register("linear")
    def linear(**kw):
        return ("linear", kw)

    @reg.register("mlp")
    def mlp(**kw):
        return ("mlp", kw)

    @reg.register("lib", prefix=True)
    def lib(name: str, **kw):
        return ("lib", name, kw)

    return reg


def test_build_calls_the_registered_factory_with_kwargs(things):
    assert things.build("linear", a=1) == ("linear", {"a": 1})
    assert things.get("mlp")() == ("mlp", {})


def test_prefix_resolves_the_rest_of_the_name(things):
    assert things.build("lib:resnet18", in_chans=1) == ("lib", "resnet18", {"in_chans": 1})
    assert things.build("lib:vit_small:extra") == ("lib", "vit_small:extra", {})
    assert "lib:anything" in things


def test_prefix_without_a_name_is_unknown(things):
    with pytest.raises(ConfigError):
        things.get("lib:")
    assert "lib:" not in things


def test_unknown_name_suggests_the_closest(things):
    with pytest.raises(ConfigError) as info:
        things.get("mpl")
    message = str(info.value)
    assert "unknown thing 'mpl'" in message
    assert "Did you mean 'mlp'?" in message
    assert "linear" in message and "lib:<name>" in message
    assert "\n" not in message


def test_unknown_name_without_a_close_match_lists_the_valid_names(things):
    with pytest.raises(ConfigError) as info:
        things.get("zzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "linear, mlp, lib:<name>" in str(info.value)


def test_unknown_prefix_is_unknown(things):
    assert "other:resnet18" not in things
    with pytest.raises(ConfigError):
        things.build("other:resnet18")


def test_double_registration_raises(things):
    with pytest.raises(ValueError, match="registered twice"):
        things.register("linear")(lambda **kw: None)
    with pytest.raises(ValueError, match="registered twice"):
        things.register("lib", prefix=True)(lambda **kw: None)
    # the original factory survives
    assert things.build("linear") == ("linear", {})


def test_same_name_as_item_and_prefix_are_separate_tables(things):
    things.register("linear", prefix=True)(lambda name, **kw: ("prefix", name))
    assert things.build("linear") == ("linear", {})
    assert things.build("linear:x") == ("prefix", "x")


def test_names_are_sorted_with_prefixes_last(things):
    assert things.names() == ["linear", "mlp", "lib:<name>"]


def test_project_registries_hold_the_foundation_components():
    import imgcls.data.sources  # registers data sets
    import imgcls.models.classifier  # noqa: F401  (registers backbones and heads)

    assert "adaptive_cnn" in BACKBONES
    assert "timm:resnet18" in BACKBONES
    assert {"linear", "mlp"} <= set(HEADS.names())
    assert {"fashion_mnist", "mnist", "cifar10", "imagefolder"} <= set(DATASETS.names())


def test_timm_prefix_resolves_in_the_backbone_registry():
    import imgcls.models.classifier  # noqa: F401

    backbone = BACKBONES.build("timm:test_resnet", in_chans=1)
    assert backbone.num_features > 0
    with pytest.raises(ConfigError, match="Did you mean 'adaptive_cnn'"):
        BACKBONES.get("adaptive_cn")
