"""Tests of the experiment config (DESIGN "config.py"): defaults, YAML files, dotted overrides, and the
one-line ConfigError messages for unknown keys, wrong types, out-of-range values and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imgcls.config import (
    ExperimentConfig,
    apply_overrides,
    build_config,
    config_to_yaml,
    load_config,
)
from imgcls.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def config_error(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, "config errors are one line"
    return message


# ------------------------------------------------------------------------------- defaults and files
def test_defaults_load_and_match_the_schema():
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    assert cfg == ExperimentConfig()
    assert cfg.data.name == "fashion_mnist"
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.output.name is None  # no file, no name
    assert cfg.resolved_stages()[0].epochs == cfg.train.epochs
    assert cfg.total_epochs() == cfg.train.epochs


def test_yaml_file_is_loaded_and_named_after_its_stem():
    cfg = load_config(QUICKSTART)
    raw = yaml.safe_load(QUICKSTART.read_text())
    assert cfg.output.name == "quickstart"
    assert cfg.model.backbone == raw["model"]["backbone"]
    assert cfg.model.head_args == raw["model"]["head_args"]
    assert cfg.optim.lr == pytest.approx(float(raw["optim"]["lr"]))
    assert cfg.train.epochs == raw["train"]["epochs"]
    # a key the file does not set keeps its default
    assert cfg.train.seed == ExperimentConfig().train.seed


def test_explicit_output_name_wins_over_the_file_stem():
    assert load_config(QUICKSTART, ["output.name=mine"]).output.name == "mine"


def test_overrides_parse_numbers_bools_lists_and_null():
    cfg = load_config(
        QUICKSTART,
        [
            "optim.lr=0.25",
            "train.epochs=7",
            "train.progress=false",
            "optim.nesterov=true",
            "eval.top_k=[1, 3]",
            "augment.scale=[0.8, 1.2]",
            "train.grad_clip=1",
            "data.image_size=null",
            "model.head_args={hidden: [32, 16], dropout: 0.1}",
            "stages=[{name: warm, epochs: 1, freeze: [backbone]}, {name: all, epochs: 2}]",
        ],
    )
    assert cfg.optim.lr == 0.25 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.train.progress is False
    assert cfg.optim.nesterov is True
    assert cfg.eval.top_k == [1, 3]
    assert cfg.augment.scale == (0.8, 1.2)
    assert cfg.train.grad_clip == 1.0
    assert cfg.data.image_size is None
    assert cfg.model.head_args == {"hidden": [32, 16], "dropout": 0.1}
    assert [s.name for s in cfg.stages] == ["warm", "all"]
    assert cfg.stages[0].freeze == ["backbone"]
    assert cfg.total_epochs() == 3


def test_override_value_with_equals_sign_and_string_fallback():
    cfg = load_config(None, ["output.name=a=b", "data.root=/some/where"])
    assert cfg.output.name == "a=b"
    assert cfg.data.root == "/some/where"


def test_scientific_notation_is_a_float_for_typed_fields():
    assert load_config(None, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)


def test_scientific_notation_is_a_float_in_component_args():
    cfg = load_config(
        None, ["model.backbone_args.width_mult=5e-1", "model.head=mlp", "model.head_args.dropout=1e-1"]
    )
    assert cfg.model.backbone_args["width_mult"] == 0.5
    assert cfg.model.head_args["dropout"] == 0.1


@pytest.mark.parametrize("value", ["no", "yes"])
def test_in_memory_yes_no_literal(value, tmp_path):
    assert load_config(None, [f"data.in_memory={value}"]).data.in_memory == value
    path = tmp_path / "streaming.yaml"
    path.write_text(f"data:\n  in_memory: {value}\n")
    assert load_config(path).data.in_memory == value


def test_apply_overrides_creates_nested_sections():
    raw = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=2", "train.epochs=3"])
    assert raw == {"optim": {"lr": 2}, "train": {"epochs": 3}}


def test_override_without_equals_sign_is_a_config_error():
    message = config_error(["optim.lr"])
    assert "optim.lr" in message and "section.key=value" in message


def test_override_into_a_value_is_a_config_error():
    message = config_error(["optim.lr.x=1"], QUICKSTART)
    assert "optim.lr" in message and "not a section" in message


# ------------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("optim.lrr=0.1", "optim.lrr", "optim.lr"),
        ("model.backbon=resnet", "model.backbon", "model.backbone"),
        ("schedule.warmupepochs=1", "schedule.warmupepochs", "schedule.warmup_epochs"),
        ("optimm.lr=0.1", "optimm", "optim"),
    ],
)
def test_unknown_key_names_the_key_and_suggests_the_closest(override, key, suggestion):
    message = config_error([override])
    assert f"unknown config key '{key}'" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_key_lists_the_valid_keys_of_its_section():
    message = config_error(["optim.lrr=0.1"])
    for valid in ("lr", "weight_decay", "momentum", "head_lr_mult"):
        assert valid in message


def test_unknown_key_inside_a_stage_is_located_and_suggested():
    message = config_error(["stages=[{name: a, freez: [backbone]}]"])
    assert "stages.0.freez" in message
    assert "did you mean 'stages.0.freeze'?" in message


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  epoch: 3\n")
    message = config_error([], path)
    assert "'train.epoch'" in message and "did you mean 'train.epochs'?" in message


# ------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("override", "key", "shown"),
    [
        ("optim.lr=abc", "optim.lr", "'abc'"),  # wrong type
        ("optim.lr=-1", "optim.lr", "-1"),  # out of range (gt 0)
        ("train.batch_size=0", "train.batch_size", "0"),
        ("data.val_fraction=1.0", "data.val_fraction", "1.0"),  # lt 1
        ("train.epochs=2.5", "train.epochs", "2.5"),  # not an integer
        ("train.progress=maybe", "train.progress", "'maybe'"),
        ("data.channels=2", "data.channels", "2"),  # custom validator
        ("augment.hflip=1.5", "augment.hflip", "1.5"),
    ],
)
def test_bad_value_names_key_and_value(override, key, shown):
    message = config_error([override])
    assert f"'{key}'" in message
    assert f"invalid value {shown}" in message


def test_out_of_range_message_states_the_bound():
    assert "greater than 0" in config_error(["optim.lr=-1"])
    assert "less than 1" in config_error(["data.val_fraction=1.0"])
    assert "must be 1 or 3" in config_error(["data.channels=2"])


def test_literal_choices_are_listed():
    message = config_error(["train.precision=fp64"])
    assert "'train.precision'" in message and "'fp64'" in message
    for choice in ("'auto'", "'fp32'", "'bf16'", "'fp16'"):
        assert choice in message
    message = config_error(["optim.name=adamax"])
    for choice in ("'sgd'", "'adamw'", "'adam'", "'rmsprop'"):
        assert choice in message


def test_cross_field_rule_ema_checkpoint_needs_ema_decay():
    message = config_error(["eval.checkpoint=ema"])
    assert "train.ema_decay" in message
    assert load_config(None, ["eval.checkpoint=ema", "train.ema_decay=0.99"]).eval.checkpoint == "ema"
    assert "train.swa_start" in config_error(["eval.checkpoint=swa"])


def test_several_problems_are_counted():
    message = config_error(["optim.lr=-1", "train.epochs=-2"])
    assert "1 more problem" in message


def test_validate_assignment_rejects_bad_values_after_loading():
    cfg = load_config()
    with pytest.raises(ValueError):
        cfg.optim.lr = -1.0


# ------------------------------------------------------------------------------- bad files
def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    message = config_error([], missing)
    assert str(missing) in message and "not found" in message


def test_invalid_yaml_is_a_config_error_with_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  name: fashion_mnist\noptim: {lr: [1, 2\n")
    message = config_error([], path)
    assert str(path) in message and "not valid YAML" in message and "line" in message


def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- data\n- model\n")
    assert "mapping" in config_error([], path)


def test_empty_file_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    cfg = load_config(path)
    assert cfg.model_dump(exclude={"output"}) == ExperimentConfig().model_dump(exclude={"output"})
    assert cfg.output.name == "empty"


def test_config_errors_are_user_errors():
    assert issubclass(ConfigError, UserError)


# ------------------------------------------------------------------------------- round trip
def test_config_to_yaml_round_trips():
    cfg = load_config(QUICKSTART, ["optim.lr=0.1", "eval.top_k=[1, 3]", "stages=[{name: a, epochs: 1}]"])
    text = config_to_yaml(cfg)
    again = build_config(yaml.safe_load(text))
    assert again == cfg
    assert yaml.safe_load(text)["optim"]["lr"] == 0.1


def test_saved_config_file_reloads_identically(tmp_path):
    cfg = load_config(QUICKSTART, ["train.epochs=1", "augment.scale=[0.9, 1.1]"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
