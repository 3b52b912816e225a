"""Every malformed config value, override or YAML file is refused with one line (config.py, registry.py).

NaN and ±inf are refused in every float of every section (found by walking the schema) and in untyped
component arguments; numbers have ranges (std > 0, betas in [0, 1), seeds up to 2**32 − 1, image sizes
8 … 4096, a run of at least one epoch in total, ...) and a refused value names its key and range;
overrides index lists (``stages.0.epochs=3``) and malformed ones (empty key, empty key part, empty value,
bad index) say what is wrong; bad YAML files (a list, binary, syntax errors, NUL characters) are one line
with the line number; and ``imgcls train`` stops with exit code 2 before anything is written. Hostile or
unusual YAML too: alias bombs, deep nesting (files, overrides, sweep spaces, taxonomies), recursive anchors,
merge keys (which work), booleans where numbers belong, run names that are paths, a pipe or an override in
place of the config file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from imgcls.config import MAX_YAML_DEPTH, ExperimentConfig, apply_overrides, load_config, parse_yaml
from imgcls.engine.search_space import load_space
from imgcls.errors import ConfigError, UserError
from imgcls.registry import BACKBONES, HEADS
from imgcls.taxonomy import build_taxonomy
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
    cfg = load_config(QUICKSTART, ["data.root=null", "data.train_dir=''"])
    assert cfg.data.root is None and cfg.data.train_dir == ""


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


# ------------------------------------------------------------------------------- hostile and unusual YAML
@contextlib.contextmanager
def deadline(seconds: float):
    """Fail the block (instead of hanging the suite) once it has run ``seconds``, and assert it took less."""
    if not hasattr(signal, "setitimer"):
        pytest.skip("needs signal.setitimer")

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - started < seconds


def alias_bomb(indent: str, levels: int = 9, width: int = 10) -> str:
    """ "Billion laughs": level i lists level i − 1 ``width`` times, so 90 aliases expand to 10**9 values."""
    lines = [f"{indent}a0: &a0 [lol]"]
    for i in range(1, levels + 1):
        lines.append(f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "head",
    [
        'model:\n  backbone: "timm:resnet18"\n  backbone_args:\n',  # untyped (extra) backbone arguments
        "distill:\n  teacher_args:\n",
    ],
    ids=["backbone_args", "teacher_args"],
)
def test_an_alias_bomb_is_refused_at_once(tmp_path, head):
    BACKBONES.names()  # import the backbones first: only the config's own cost is timed
    path = tmp_path / "bomb.yaml"
    path.write_text(head + alias_bomb("    "))
    with deadline(1.0):
        message = config_error([], path)
    assert message.startswith(f"config file '{path}': its aliases (*name) expand to ")
    assert "an alias bomb?" in message
    with deadline(1.0):  # the same in an override value
        message = config_error(["distill.teacher_args={" + alias_bomb("").replace("\n", ", ") + "}"])
    assert message.startswith("override 'distill.teacher_args=") and "an alias bomb?" in message


def test_a_few_aliases_and_a_recursive_one(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "train: {epochs: 2}\n"
        "stages:\n"
        "  - {name: a, epochs: 1, optim: &slow {lr: 1.0e-4, weight_decay: 0.01}, freeze: &trunk [backbone]}\n"
        "  - {name: b, epochs: 1, optim: *slow, train_only: *trunk}\n"
        "  - {name: c, optim: *slow, freeze: *trunk}\n"
    )
    cfg = load_config(path)
    assert [s.optim for s in cfg.stages] == [{"lr": 1e-4, "weight_decay": 0.01}] * 3
    assert cfg.stages[1].train_only == cfg.stages[2].freeze == ["backbone"]
    cfg = load_config(path, ["stages.0.optim.lr=0.5", "stages.1.train_only.0=head"])  # one place, not all
    assert [s.optim["lr"] for s in cfg.stages] == [0.5, 1e-4, 1e-4]
    assert [(s.freeze, s.train_only) for s in cfg.stages] == [
        (["backbone"], []),
        ([], ["head"]),
        (["backbone"], []),
    ]
    path.write_text("distill:\n  teacher_args: &a {x: [1, *a]}\n")
    message = config_error([], path)
    assert "anchor at line 2 contains an alias of itself" in message


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "content",
    [
        "train: {epochs: " + nested(2000) + "}\n",  # flow style
        "".join(f"{' ' * i}a{i}:\n" for i in range(2000)) + " " * 2000 + "1\n",  # block style
    ],
    ids=["flow", "block"],
)
def test_a_deeply_nested_config_file_is_one_line(tmp_path, content):
    path = tmp_path / "deep.yaml"
    path.write_text(content)
    with deadline(1.0):
        message = config_error([], path)
    assert message.startswith(f"config file '{path}': the YAML is nested too deeply at line ")
    assert f"(more than {MAX_YAML_DEPTH} levels" in message


def test_deep_nesting_is_refused_in_overrides_space_files_and_taxonomies(tmp_path):
    with deadline(1.0):
        message = config_error(["train.epochs=" + nested(3000)])
    assert message.startswith("override 'train.epochs=[[[") and "nested too deeply" in message
    assert len(message) < 400  # the 6000-character value is shortened
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {choice: " + nested(3000) + "}\n")
    with deadline(1.0), pytest.raises(ConfigError) as info:
        load_space(space)
    assert str(info.value).startswith(f"search space file '{space}': the YAML is nested too deeply")
    for name, text in [
        ("deep.yaml", "a: " + nested(3000) + "\n"),
        ("deep.json", '{"a": ' + nested(3000) + "}"),
    ]:
        taxonomy = tmp_path / name
        taxonomy.write_text(text)
        with deadline(1.0), pytest.raises(UserError) as info:
            build_taxonomy(str(taxonomy), ["a", "b"])
        message = str(info.value)
        assert message.startswith(f"cannot read taxonomy parent map '{taxonomy}'"), message
        assert "nested too deeply" in message and "\n" not in message
    # aliases that nest an anchor inside another go past the limit too
    chained = "a0: &a0 " + nested(60) + "\n" + "a1: &a1 " + "[" * 60 + "*a0" + "]" * 60 + "\n"
    with pytest.raises(ConfigError, match=r"nested too deeply .* with its aliases expanded"):
        parse_yaml(chained)
    assert parse_yaml("x: " + nested(20)) == {"x": [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}


def test_yaml_merge_keys_work_and_explicit_keys_override(tmp_path):
    assert parse_yaml("base: &b {epochs: 1, seed: 2}\ntrain: {<<: *b, seed: 3}\n")["train"] == {
        "epochs": 1,
        "seed": 3,
    }
    # of several merged mappings the earlier wins; a merged mapping contributes its own merged-and-overridden values
    raw = parse_yaml(
        "a: &a {lr: 1, momentum: 0.5}\nb: &b {lr: 5, nesterov: false}\nc: &c {<<: [*a, *b], name: sgd}\n"
        "d: {<<: *c, lr: 7}\ne: &e {<<: *a, lr: 2}\nf: {<<: *e}\n"
    )
    assert raw["c"] == {"lr": 1, "momentum": 0.5, "nesterov": False, "name": "sgd"}
    assert raw["d"] == {"lr": 7, "momentum": 0.5, "nesterov": False, "name": "sgd"}
    assert raw["f"] == {"lr": 2, "momentum": 0.5}
    path = tmp_path / "merge.yaml"
    path.write_text(
        "optim: &opt {name: sgd, lr: 0.1, momentum: 0.8}\n"
        "stages:\n"
        "  - {name: warm, epochs: 1, optim: {<<: *opt, lr: 0.01}}\n"
        "  - name: main\n"
        "    epochs: 2\n"
        "    optim:\n"
        "      <<: *opt\n"
        "      momentum: 0.9\n"
    )
    cfg = load_config(path)
    assert cfg.stages[0].optim == {"name": "sgd", "lr": 0.01, "momentum": 0.8}
    assert cfg.stages[1].optim == {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    path.write_text(
        "optim: &opt {lr: 0.1}\nstages:\n  - {epochs: 1, optim: {<<: *opt, lr: 0.01, lr: 0.02}}\n"
    )
    assert "duplicate key 'lr' at line 3" in config_error([], path)  # explicit keys stay unique
    path.write_text("train: {<<: 3}\n")
    message = config_error([], path)
    assert (
        "not valid YAML at line 1" in message
        and "expected a mapping or list of mappings for merging" in message
    )


def test_a_bad_search_space_file_is_one_line_naming_the_file(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_bytes(b"optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_space(space)
    assert str(info.value) == (
        f"search space file '{space}' is not UTF-8 text (byte 0xe9 at offset 47); "
        "pass a YAML file such as configs/sweeps/linear.yaml"
    )
    space.write_text("optim.lr: {uniform: [0.1, 0.2]}\noptim.lr: {uniform: [0.3, 0.4]}\n")
    with pytest.raises(ConfigError) as info:
        load_space(space)
    assert str(info.value).startswith(f"search space file '{space}': duplicate key 'optim.lr' at line 2")


@pytest.mark.parametrize(
    ("overrides", "key", "shown"),
    [
        (["optim.lr=true"], "optim.lr", "True"),
        (["train.epochs=true"], "train.epochs", "True"),
        (["train.threads=false"], "train.threads", "False"),  # int | None
        (["train.grad_clip=true"], "train.grad_clip", "True"),  # float | None
        (["data.channels=true"], "data.channels", "True"),
        (["optim.betas=[true, 0.9]"], "optim.betas", "[True, 0.9]"),  # tuple of numbers
        (["eval.top_k=[1, true]"], "eval.top_k", "[1, True]"),  # list of numbers
        (["stages=[{epochs: 1, loss_weights: {ce: true}}]"], "stages.0.loss_weights", "{...}"),
        (["stages=[{epochs: 1, optim: {lr: true}}]"], "stages.0.optim.lr", "True"),
        (["model.head=mlp", "model.head_args.dropout=true"], "model.head_args.dropout", "True"),
        (
            ["model.backbone_args={blocks: [[32, true]]}"],
            "model.backbone_args.blocks",
            "[[32, True]]",
        ),  # Literal[1, 2]
    ],
)
def test_a_boolean_is_not_a_number(overrides, key, shown):
    message = config_error(overrides)
    assert message.startswith(f"invalid value {shown} for '{key}': ")
    assert "a boolean (true/false), which is not a number here; write a number" in message


def test_booleans_still_work_where_they_belong():
    cfg = load_config(
        None,
        [
            "optim.fused=true",  # bool | None
            "train.channels_last=false",
            "data.download=true",
            "model.backbone=timm:resnet18",
            "model.backbone_args={drop_path_rate: 0.1, features_only: false}",  # untyped extras take anything
            "distill.teacher_args={global_pool: true}",
        ],
    )
    assert cfg.optim.fused is True and cfg.train.channels_last is False and cfg.data.download is True
    assert cfg.model.backbone_args["features_only"] is False
    assert load_config(None, ["optim.lr=1", "train.epochs=1.0"]).optim.lr == 1.0  # numbers stay numbers


@pytest.mark.parametrize(
    "name", ["../../escape", "runs/mine", "/tmp/elsewhere", "..", ".", "a\\b", "C:mine", "''", "' '"]
)
def test_output_name_is_a_run_name_not_a_path(name):
    message = config_error([f"output.name={name}"])
    assert "for 'output.name': output.name " in message
    if name in ("''", "' '"):
        assert "is empty; write a run name" in message
    else:
        assert "is a run name, not a path; use output.dir for the folder" in message


def test_ordinary_run_names_are_accepted():
    for name in ["baseline", "lr=3e-4", "a..b", "v1.2", "ünïcode"]:
        assert load_config(None, [f"output.name={name}"]).output.name == name


def test_a_pipe_or_an_override_in_place_of_the_config_file_says_so(tmp_path):
    fifo = tmp_path / "q.yaml"
    os.mkfifo(fifo)
    message = config_error([], fifo)
    assert message.startswith(f"config file '{fifo}' is not a regular file (a pipe, process substitution")
    assert "save the config to a .yaml file" in message
    message = config_error([], "train.epochs=3")
    assert message == (
        "config file 'train.epochs=3' not found: it looks like an override (section.key=value); the config file "
        "comes first and the overrides after it, e.g. configs/quickstart.yaml train.epochs=3"
    )


def test_imgcls_config_show_refuses_hostile_yaml_in_one_line(tmp_path):
    bomb, deep = tmp_path / "bomb.yaml", tmp_path / "deep.yaml"
    bomb.write_text('model:\n  backbone: "timm:resnet18"\n  backbone_args:\n' + alias_bomb("    "))
    deep.write_text("train: {epochs: " + nested(2000) + "}\n")
    processes = [start("config", "show", str(path)) for path in (bomb, deep)]
    try:
        for process, words in zip(processes, ["an alias bomb?", "nested too deeply"], strict=True):
            stdout, stderr = process.communicate(timeout=60)
            assert process.returncode == 2, stderr
            (line,) = stderr.strip().splitlines()
            assert line.startswith("error: config file ") and words in line, stderr
            assert stdout == ""
    finally:
        for process in processes:  # a hanging one (the bomb, unrefused) must not outlive the test
            if process.poll() is None:
                process.kill()
                process.wait()
