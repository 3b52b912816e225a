"""Every malformed config value, override or YAML file is refused with one line (config.py, registry.py).

NaN and ±inf are refused in every float of every section (found by walking the schema) and in untyped
component arguments; numbers have ranges (std > 0, betas in [0, 1), seeds up to 2**32 − 1, image sizes
8 … 4096, a run of at least one epoch in total, ...) and a refused value names its key and range;
overrides index lists (``stages.0.epochs=3``) and malformed ones (empty key, empty key part, empty value,
bad index) say what is wrong; bad YAML files (a list, binary, syntax errors, NUL characters) are one line
with the line number; and ``imgcls train`` stops with exit code 2 before anything is written.
"""

from __future__ import annotations

import logging
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from imgcls.config import ExperimentConfig, apply_overrides, load_config
from imgcls.errors import ConfigError
from imgcls.registry import HEADS
from test_cli import QUICKSTART, start
from test_config import config_error

STAGED = ["stages=[{name: warm, epochs: 1, freeze: [backbone]}, {name: all, epochs: 2, optim: {lr: 1.0e-4}}]"]


def float_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of every float field (``float``, ``float | None``) under ``model``, nested sections included."""
    keys = []
    for name, info in model.model_fields.items():
        union = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
        members = (
            [a for a in typing.get_args(info.annotation) if a is not type(None)]
            if union
            else [info.annotation]
        )
        section = next((a for a in members if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if section is not None:
            keys += float_keys(section, f"{prefix}{name}.")
        elif members == [float]:
            keys.append(f"{prefix}{name}")
    return keys


FLOAT_KEYS = float_keys(ExperimentConfig)


# ------------------------------------------------------------------------------- NaN and infinity
def test_the_schema_walk_finds_the_float_keys():
    assert {"optim.lr", "train.label_smoothing", "train.grad_clip", "distill.tokens.lambda_tok"} <= set(
        FLOAT_KEYS
    )
    assert len(FLOAT_KEYS) > 40


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_nan_is_refused_in_every_float_key(key):
    message = config_error([f"{key}=.nan"])
    assert f"invalid value nan for '{key}'" in message and "finite number" in message


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("optim.lr=nan", "optim.lr", "(allowed: value > 0)"),  # YAML reads 'nan' as a string, pydantic as NaN
        ("optim.lr=inf", "optim.lr", "(allowed: value > 0)"),
        ("optim.lr=.inf", "optim.lr", "(allowed: value > 0)"),
        ("optim.lr=1e999", "optim.lr", "(allowed: value > 0)"),  # overflows to inf
        ("train.label_smoothing=-inf", "train.label_smoothing", "(allowed: 0 <= value < 1)"),
        ("optim.betas=[.nan, 0.999]", "optim.betas.0", "(allowed: 0 <= value < 1)"),
        ("data.std=[.inf]", "data.std.0", "(allowed: value > 0)"),
        ("augment.scale=[1.0, .inf]", "augment.scale.1", "finite number"),
    ],
)
def test_nan_and_inf_name_the_key_and_the_allowed_range(override, key, allowed):
    message = config_error([override], QUICKSTART)
    assert f"for '{key}': Input should be a finite number" in message
    assert allowed in message


def test_nan_is_refused_inside_stages():
    message = config_error(["stages=[{epochs: 1, label_smoothing: .nan}]"])
    assert "'stages.0.label_smoothing'" in message and "finite number" in message
    message = config_error(["stages=[{epochs: 1, optim: {lr: .inf}}]"])
    assert "'stages.0.optim.lr'" in message and "(allowed: value > 0)" in message
    message = config_error(["stages=[{epochs: 1, loss_weights: {ce: .nan}}]"])
    assert "'stages.0.loss_weights.ce'" in message and "finite number" in message


def test_nan_is_refused_in_typed_and_untyped_component_arguments():
    message = config_error(["model.head=mlp", "model.head_args.dropout=.nan"])
    assert "'model.head_args.dropout'" in message and "finite number" in message
    message = config_error(["model.backbone=timm:resnet18", "model.backbone_args={my_rate: .inf}"])
    assert message == "invalid model.backbone_args: my_rate is inf; use a finite number"
    message = config_error(["distill.teacher_args={scale: [1.0, .nan]}"])
    assert "'distill.teacher_args'" in message and "scale.1 is nan" in message
    with pytest.raises(ConfigError, match=r"model\.head_args\.dropout.*finite number"):
        HEADS.validate_args("mlp", {"dropout": float("nan")}, "model.head_args")


def test_finite_values_still_load():
    cfg = load_config(QUICKSTART, ["optim.lr=1e-5", "train.grad_clip=1e3", "optim.betas=[0, 0.999]"])
    assert (cfg.optim.lr, cfg.train.grad_clip, cfg.optim.betas) == (1e-5, 1000.0, (0.0, 0.999))


# ------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize(
    ("override", "key", "bound"),
    [
        ("optim.lr=0", "optim.lr", "greater than 0"),
        ("optim.weight_decay=-0.1", "optim.weight_decay", "greater than or equal to 0"),
        ("optim.betas=[0.9, 1.0]", "optim.betas.1", "less than 1"),
        ("optim.betas=[-0.1, 0.9]", "optim.betas.0", "greater than or equal to 0"),
        ("schedule.gamma=0", "schedule.gamma", "greater than 0"),
        ("schedule.step_epochs=[3, -1]", "schedule.step_epochs.1", "greater than or equal to 0"),
        ("train.seed=-1", "train.seed", "greater than or equal to 0"),
        ("train.seed=4294967296", "train.seed", "less than or equal to 4294967295"),
        ("data.split_seed=-5", "data.split_seed", "greater than or equal to 0"),
        ("train.threads=-1", "train.threads", "greater than or equal to 0"),
        ("train.threads=1025", "train.threads", "less than or equal to 1024"),
        ("data.num_workers=1025", "data.num_workers", "less than or equal to 1024"),
        ("data.image_size=7", "data.image_size", "greater than or equal to 8"),
        ("data.image_size=4097", "data.image_size", "less than or equal to 4096"),
        ("distill.teacher_input_size=4", "distill.teacher_input_size", "greater than or equal to 8"),
        ("train.label_smoothing=1", "train.label_smoothing", "less than 1"),
        ("train.batch_size=0", "train.batch_size", "greater than 0"),
        ("train.epochs=-1", "train.epochs", "greater than or equal to 0"),
        ("eval.top_k=[1, 0]", "eval.top_k.1", "greater than or equal to 1"),
        ("model.drop_rate=1", "model.drop_rate", "less than 1"),
        ("augment.mix_prob=1.5", "augment.mix_prob", "less than or equal to 1"),
        ("augment.erasing=-0.5", "augment.erasing", "greater than or equal to 0"),
        ("data.std=[0.5, 0, 0.5]", "data.std.1", "greater than 0"),
        ("data.mean=[1.5]", "data.mean.0", "less than or equal to 1"),
        ("augment.crop_padding=5000", "augment.crop_padding", "less than or equal to 4096"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_bound(override, key, bound):
    message = config_error([override])  # a value is checked before the rules between values (mean ↔ std)
    assert f"for '{key}'" in message and bound in message


def test_a_bound_that_needs_the_whole_number_names_the_range():
    message = config_error(["train.seed=abc"])
    assert "'train.seed'" in message and "(allowed: 0 <= value <= 4294967295)" in message


@pytest.mark.parametrize(
    "override",
    [
        "train.seed=0",
        "train.seed=4294967295",
        "data.image_size=8",
        "data.image_size=4096",
        "train.threads=0",
        "data.num_workers=1024",
        "optim.betas=[0.0, 0.999]",
        "eval.top_k=[1]",
        "schedule.gamma=2.0",
        "stages=[{epochs: 0}, {epochs: 1}]",
    ],
)
def test_values_on_the_bounds_are_accepted(override):
    load_config(QUICKSTART, [override])


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        (["train.epochs=0"], "(train.epochs=0)"),
        (["stages=[{epochs: 0}, {epochs: 0}]"], "(stages' epochs: 0, 0)"),
        (["train.epochs=0", "stages=[{name: a}]"], "(stages' epochs: 0)"),  # a stage inherits train.epochs
    ],
)
def test_a_run_of_zero_epochs_in_total_is_refused(overrides, shown):
    message = config_error(overrides, QUICKSTART)
    assert message.startswith("invalid config: the run would train 0 epochs in total")
    assert shown in message and "to 1 or more" in message


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["data.mean=[0.5]"], ["data.mean is set but data.std is not", "set both"]),
        (["data.std=[0.5]"], ["data.std is set but data.mean is not"]),
        (["data.mean=[0.5, 0.5]", "data.std=[0.2, 0.2]"], ["need 1 or 3 values each", "got 2 and 2"]),
        (["data.mean=[0.5]", "data.std=[0.2, 0.2, 0.2]"], ["got 1 and 3"]),
        (["data.channels=3", "data.mean=[0.5]", "data.std=[0.2]"], ["need 3 (data.channels) values"]),
    ],
)
def test_normalisation_statistics_come_in_pairs_of_the_right_length(overrides, words):
    message = config_error(overrides)
    for word in words:
        assert word in message


def test_augment_pairs_are_checked_when_the_config_loads():
    message = config_error(["augment.scale=[1.2, 0.8]"])
    assert message.startswith("invalid value [1.2, 0.8] for 'augment.scale'") and "0 < low <= high" in message
    message = config_error(["augment.randaugment=[2, 31]"])
    assert "'augment.randaugment'" in message and "0 <= M <= 30" in message


# ------------------------------------------------------------------------------- override syntax
def test_list_index_overrides_set_one_entry(tmp_path):
    cfg = load_config(
        QUICKSTART, [*STAGED, "stages.0.epochs=3", "stages.1.optim.lr=5e-5", "stages.1.name=polish"]
    )
    assert [(s.name, s.epochs) for s in cfg.stages] == [("warm", 3), ("polish", 2)]
    assert cfg.stages[1].optim == {"lr": 5e-5}
    assert cfg.total_epochs() == 5
    staged = tmp_path / "staged.yaml"
    staged.write_text("train: {epochs: 2}\nstages:\n  - {name: a, epochs: 1}\n  - {name: b}\n")
    cfg = load_config(staged, ["stages.1.epochs=4", "stages.0={name: z, epochs: 2}"])
    assert [(s.name, s.epochs) for s in cfg.stages] == [("z", 2), ("b", 4)]
    assert load_config(None, ["eval.top_k=[1, 3]", "eval.top_k.1=5"]).eval.top_k == [1, 5]


@pytest.mark.parametrize(
    ("index", "words"),
    [
        ("2", ["index 2 is out of range", "'stages' has indices 0..1", "stages=[...]"]),
        ("x", ["'stages' is a list (indices 0..1)", "'x' must be an index such as stages.0"]),
        ("-1", ["'-1' must be an index"]),
    ],
)
def test_a_bad_list_index_is_one_line(index, words):
    message = config_error([*STAGED, f"stages.{index}.epochs=3"])
    assert message.startswith(f"override 'stages.{index}.epochs=3'")
    for word in words:
        assert word in message


def test_an_index_into_an_unset_or_empty_list_says_to_set_the_whole_list():
    message = config_error(["stages.0.epochs=3"], QUICKSTART)
    assert "'stages' is not set, so it has no entry 0" in message and "stages=[...]" in message
    message = config_error(["stages=[]", "stages.0.epochs=3"])
    assert "index 0 is out of range, 'stages' has no entries" in message


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("=3", ["override '=3' has no key before '='", "section.key=value"]),
        (" =3", ["has no key before '='"]),
        ("train..epochs=1", ["key 'train..epochs' has an empty part", "train.epochs=1"]),
        (".epochs=1", ["key '.epochs' has an empty part"]),
        ("train.=1", ["key 'train.' has an empty part"]),
        (
            "train.epochs=",
            ["override 'train.epochs=' has no value", "train.epochs=null", "\"train.epochs=''\""],
        ),
        ("train.epochs=  ", ["has no value"]),
        ("train.epochs", ["is not of the form section.key=value"]),
        ("trian.epochs=1", ["unknown config key 'trian'", "did you mean 'train'?"]),
        ("train.epochs.max=1", ["'train.epochs' is a value, not a section"]),
        ("model.head_args={a: 1, a: 2}", ["override 'model.head_args={a: 1, a: 2}'", "duplicate key 'a'"]),
    ],
)
def test_a_malformed_override_is_one_line(override, words):
    message = config_error([override], QUICKSTART)
    for word in words:
        assert word in message, (word, message)


def test_the_last_of_two_equal_override_keys_wins():
    assert load_config(QUICKSTART, ["train.epochs=1", "train.epochs=7"]).train.epochs == 7
    assert apply_overrides({}, ["optim.lr=1", " optim.lr=2"]) == {"optim": {"lr": 2}}


def test_null_and_the_empty_string_are_spelled_out():
    cfg = load_config(QUICKSTART, ["data.root=null", "output.name=''"])
    assert cfg.data.root is None and cfg.output.name == ""


# ------------------------------------------------------------------------------- YAML files
@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"- data\n- model\n", ["must hold a mapping of sections"]),
        (b"just a sentence\n", ["must hold a mapping of sections"]),
        (b"data:\n  name: fashion_mnist\ntrain:\n\tepochs: 2\n", ["not valid YAML at line 4", "'\\t'"]),
        (b"optim: {lr: [1, 2\n", ["not valid YAML at line 2", "expected ',' or ']'"]),
        (b"train: {epochs: 1}\n---\ntrain: {epochs: 2}\n", ["at line 2", "expected a single document"]),
        (b"data:\n  name: x\x00y\n", ["not valid YAML at line 2", "U+0000", "binary file?"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00", ["is not UTF-8 text (byte 0x89 at offset 0)"]),
        (b"? [1, 2]\n: 3\n", ["the key at line 1 is a list"]),
        (b"train:\n  epochs: 1\n  epochs: 2\n", ["duplicate key 'epochs' at line 3 (first at line 2)"]),
    ],
)
def test_a_bad_yaml_file_is_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    message = config_error([], path)
    assert f"config file '{path}'" in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("train: 5\n", ["invalid value 5 for 'train'"]),
        ("train:\n  epochs: abc\n", ["invalid value 'abc' for 'train.epochs'"]),
        ("optim:\n  lrr: 0.1\n", ["unknown config key 'optim.lrr'"]),
    ],
)
def test_a_schema_error_in_a_file_names_the_file_and_one_in_an_override_does_not(tmp_path, content, words):
    path = tmp_path / "schema.yaml"
    path.write_text(content)
    message = config_error([], path)
    assert message.startswith(f"config file '{path}': ")
    for word in words:
        assert word in message, (word, message)
    # the same file with an override that fixes nothing still names the file
    assert config_error(["data.val_fraction=0.2"], path).startswith(f"config file '{path}': ")
    valid = tmp_path / "valid.yaml"
    valid.write_text("train:\n  epochs: 2\n")
    overridden = config_error(["train.epochs=abc"], valid)
    assert "train.epochs" in overridden and str(valid) not in overridden  # the override is at fault


def test_an_empty_file_warns_once_and_loads_the_defaults(tmp_path, caplog):
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_config(path)
    assert cfg.train == ExperimentConfig().train
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "\n" not in record.getMessage() and "is empty" in record.getMessage()


# ------------------------------------------------------------------------------- the command line
CLI_CASES = {
    "nan-lr": (["optim.lr=nan"], ["'optim.lr'", "finite number", "value > 0"]),
    "zero-epochs": (["train.epochs=0"], ["0 epochs in total", "train.epochs=0"]),
    "index-without-list": (["stages.0.epochs=3"], ["'stages' is not set", "stages=[...]"]),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, tuple[int, str, str, Path]]:
    """``imgcls train configs/quickstart.yaml KEY=VALUE`` per case, run as concurrent subprocesses."""
    out = tmp_path_factory.mktemp("cli_runs")
    started = {
        name: (start("train", str(QUICKSTART), *args, f"output.dir={out / name}"), out / name)
        for name, (args, _) in CLI_CASES.items()
    }
    results = {}
    for name, (process, folder) in started.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr, folder)
    return results


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_imgcls_train_refuses_a_bad_value_before_training(cli_runs, case):
    code, stdout, stderr, folder = cli_runs[case]
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    flat = " ".join(stderr.split())
    for word in CLI_CASES[case][1]:
        assert word in flat, (word, stderr)
    assert stdout == "" and not folder.exists()  # nothing trained, no run directory
