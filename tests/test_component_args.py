"""Typed head/backbone arguments (registry.ComponentArgs): every built-in component declares an argument
model; ``model.head_args``, ``model.backbone_args``, ``stages[i].head_args`` and the stages' ``optim`` /
``schedule`` overrides are checked when the config loads, with the config's one-line errors (unknown key
with the closest key, wrong type, out of range, rules between fields); ``imgcls config show`` lists every
argument with its default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.config import build_config, load_config
from imgcls.errors import ConfigError
from imgcls.models.backbones.timm_backbone import TimmArgs
from imgcls.models.classifier import build_backbone, build_head
from imgcls.models.heads.fch import FCHArgs, FCHHead
from imgcls.registry import BACKBONES, HEADS, ComponentArgs

REPO = Path(__file__).resolve().parents[1]
FCH_RBF = REPO / "configs" / "fashion_mnist" / "fch_rbf.yaml"


def load_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------- every component is typed
def test_every_builtin_head_and_backbone_declares_an_argument_model():
    for name in HEADS.names():
        assert issubclass(HEADS.args_model(name), ComponentArgs), name
    for name in BACKBONES.names():
        name = name.replace("<name>", "resnet18")
        assert issubclass(BACKBONES.args_model(name), ComponentArgs), name


def test_config_module_does_not_import_the_models_until_a_lookup():
    code = (
        "import sys; import imgcls.config\n"
        "assert not any(m.startswith('imgcls.models') for m in sys.modules), 'config imported models'\n"
        "from imgcls.registry import HEADS\n"
        "assert 'fch' in HEADS.names() and 'imgcls.models.heads.fch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_start_up_leaves_the_slow_imports_to_the_commands_that_need_them():
    """torchmetrics (3-6 s: it imports all its domains) and sklearn.model_selection (1.6 s) are imported when
    metrics are computed or a split is made, not by every command (predict, export, a config error)."""
    code = (
        "import sys; import imgcls.api, imgcls.evaluation.evaluate, imgcls.data.prepare\n"
        "slow = [m for m in ('torchmetrics', 'sklearn', 'scipy.signal') if m in sys.modules]\n"
        "assert not slow, slow\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# ------------------------------------------------------------------------------- head args at load time
def test_head_unknown_key_is_suggested_at_load():
    message = load_error("model.head=fch", "model.head_args.knn_kk=4")
    assert message.startswith(
        "unknown config key 'model.head_args.knn_kk'; did you mean 'model.head_args.knn_k'?"
    )
    assert "Valid keys of head 'fch':" in message and "structure_weight" in message


def test_head_wrong_type_and_out_of_range_at_load():
    message = load_error("model.head=fch", "model.head_args.order=two")
    assert message.startswith("invalid value 'two' for 'model.head_args.order'") and "integer" in message
    message = load_error("model.head=fch", "model.head_args.graph_dropout=1.5")
    assert message == "invalid value 1.5 for 'model.head_args.graph_dropout': Input should be less than 1"
    message = load_error("model.head=fch", "model.head_args.adjacency=cosine")
    assert "'model.head_args.adjacency'" in message and "'cosine_topk'" in message and "'knn'" in message


def test_head_rule_between_fields_at_load():
    message = load_error("model.head=fch", "model.head_args={conv: gcn, order: 3}")
    assert message == (
        "invalid model.head_args: fch conv=gcn is a one-hop layer; set order: 1 (got 3) or use conv: chebyshev"
    )
    assert "memory_size > 0" in load_error(
        "model.head=fch", "model.head_args={eval_graph: memory, memory_size: 0}"
    )


def test_head_without_arguments_rejects_any():
    message = load_error("model.head=linear", "model.head_args.hidden=[64]")
    assert message == "unknown config key 'model.head_args.hidden'. Valid keys of head 'linear': none."


def test_unknown_head_name_is_caught_at_load():
    message = load_error("model.head=arcfase")
    assert message.startswith("invalid value 'arcfase' for 'model.head': unknown head 'arcfase'")
    assert "Did you mean 'arcface'?" in message


def test_the_same_errors_when_a_head_is_built_directly():
    with pytest.raises(ConfigError, match=r"^invalid value 2\.0 for 'fch\.graph_dropout'"):
        FCHHead(16, 4, graph_dropout=2.0)
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.head_args\.ordr'; did you mean"):
        build_head("fch", {"ordr": 2}, 16, 4, 0.0)


# ------------------------------------------------------------------------------- backbone args at load time
def test_backbone_unknown_key_wrong_type_out_of_range_at_load():
    message = load_error("model.backbone_args.width_mul=0.5")
    assert message.startswith(
        "unknown config key 'model.backbone_args.width_mul'; did you mean 'model.backbone_args.width_mult'?"
    )
    assert (
        "Valid keys of backbone 'adaptive_cnn': layout, use_se, width_mult, norm, blocks, stem_pool."
        in message
    )
    assert load_error("model.backbone_args.use_se=perhaps").startswith(
        "invalid value 'perhaps' for 'model.backbone_args.use_se'"
    )
    assert load_error("model.backbone_args.width_mult=0") == (
        "invalid value 0 for 'model.backbone_args.width_mult': Input should be greater than 0"
    )
    message = load_error("model.backbone=gfnet", "model.backbone_args={img_size: 30, patch_size: 8}")
    assert message == "invalid model.backbone_args: gfnet: img_size 30 must be a multiple of patch_size 8"


def test_timm_args_are_typed_where_known_and_passed_through_otherwise():
    # a typed key is checked at load; an untyped key is timm's business (today's behaviour)
    assert "'model.backbone_args.drop_path_rate'" in load_error(
        "model.backbone=timm:test_vit", "model.backbone_args.drop_path_rate=1.5"
    )
    cfg = load_config(
        None, ["model.backbone=timm:test_vit", "model.backbone_args={drop_path_rate: 0.1, qkv_bias: false}"]
    )
    typed = BACKBONES.validate_args(cfg.model.backbone, cfg.model.backbone_args, "model.backbone_args")
    assert isinstance(typed, TimmArgs) and typed.kwargs() == {"drop_path_rate": 0.1, "qkv_bias": False}
    backbone = build_backbone(cfg.model, 1)
    assert backbone.model.blocks[0].attn.qkv.bias is None
    assert "in_chans is set by imgcls" in load_error(
        "model.backbone=timm:test_vit", "model.backbone_args.in_chans=3"
    )


# ------------------------------------------------------------------------------- stages
def test_stage_head_args_are_checked_at_load():
    message = load_error("stages=[{name: a}, {name: b, head: fch, head_args: {orderr: 2}}]")
    assert message.startswith(
        "unknown config key 'stages.1.head_args.orderr'; did you mean 'stages.1.head_args.order'?"
    )
    assert load_error("stages=[{name: a, head_args: {hidden: [8]}}]") == (
        "stages.0.head_args is set but stages.0.head is not: name the head the stage switches to"
    )


def test_bad_stage_optim_and_schedule_overrides_are_rejected_at_load():
    message = load_error("stages=[{name: a, epochs: 1}, {name: b, optim: {lrr: 0.1}}]")
    assert message.startswith("unknown config key 'stages.1.optim.lrr'; did you mean 'stages.1.optim.lr'?")
    assert load_error("stages=[{name: a, optim: {lr: -1}}]") == (
        "invalid value -1 for 'stages.0.optim.lr': Input should be greater than 0"
    )
    message = load_error("stages=[{name: a, schedule: {name: cosin}}]")
    assert message.startswith("invalid value 'cosin' for 'stages.0.schedule.name': must be 'cosine'")
    # a valid override loads, and is merged onto the experiment's section
    cfg = load_config(None, ["optim.name=sgd", "stages=[{name: a, optim: {lr: 0.5}}]"])
    assert cfg.stages[0].optim == {"lr": 0.5}


# ------------------------------------------------------------------------------- config show
def test_config_show_lists_every_fch_argument_with_its_default():
    result = CliRunner().invoke(app, ["config", "show", str(FCH_RBF)])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    args = shown["model"]["head_args"]
    written = yaml.safe_load(FCH_RBF.read_text())["model"]["head_args"]
    assert list(args) == list(FCHArgs.model_fields)  # every argument, in declaration order
    for name, field in FCHArgs.model_fields.items():
        assert args[name] == written.get(name, field.default), name
    assert args["memory_size"] == 1024 and args["knn_k"] is None and args["attention_dim"] == 64
    assert shown["model"]["backbone_args"] == {
        "layout": "mnist",
        "use_se": True,
        "width_mult": 1.0,
        "norm": "batch",
        "blocks": None,
        "stem_pool": None,
    }
    assert build_config(shown).resolved_component_args() == load_config(FCH_RBF).resolved_component_args()


def test_loaded_config_keeps_the_arguments_as_written():
    cfg = load_config(FCH_RBF)
    assert cfg.model.head_args == yaml.safe_load(FCH_RBF.read_text())["model"]["head_args"]
