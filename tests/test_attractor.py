"""DRA-Net (seed 003, issue 13): the attractor head's aggregation against hand-computed values, the
attractor count, the regularisers (the seed's learned one collapses to exactly 0; diversity moves only
the attractors), class-mean initialisation, the geometry the evaluation measures, the frozen stage and
a short real two-stage run, and the shipped configs."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from imgcls.config import load_config
from imgcls.engine.attractor_init import ClassMeanInit, class_mean_init_callbacks
from imgcls.engine.callbacks import Callback
from imgcls.errors import ConfigError
from imgcls.evaluation.embedding_metrics import embedding_metrics_extension
from imgcls.losses.attractor import mean_pairwise_cosine, mean_pairwise_distance
from imgcls.models.classifier import Classifier, build_head, build_model
from imgcls.models.heads.attractor import DRAHead, aggregate
from imgcls.runs import model_as_of_stage
from imgcls.runtime.batch import Batch
from imgcls.runtime.distributed import DistInfo
from tiny_runs import requires_fashion_mnist, single_thread

CONFIGS = Path(__file__).parent.parent / "configs"
W = torch.tensor([[0.5, 0.25, 0.25]])
A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])


def test_aggregation_hand_computed():
    # squared: 0.25·(1,0) + 0.0625·(0,1) + 0.0625·(2,2) = (0.375, 0.1875)
    assert torch.allclose(aggregate(W, A, "squared"), torch.tensor([[0.375, 0.1875]]))
    # linear: 0.5·(1,0) + 0.25·(0,1) + 0.25·(2,2) = (1.0, 0.75)
    assert torch.allclose(aggregate(W, A, "linear"), torch.tensor([[1.0, 0.75]]))
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(W, A, "cubic")


def hand_head(mode: str) -> DRAHead:
    """in = H = 2, C = 3: identity projections, weights fixed to softmax(log w) = w for every input."""
    head = DRAHead(2, 3, high_dim=2, weights_hidden=4, hidden_dim=4, aggregate=mode)
    with torch.no_grad():
        for lin in (head.up, head.down):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
        head.weights_net[2].weight.zero_()
        head.weights_net[2].bias.copy_(W[0].log())
        head.attractors.copy_(A)
    return head.eval()


@pytest.mark.parametrize(("mode", "mixed"), [("squared", [0.375, 0.1875]), ("linear", [1.0, 0.75])])
def test_head_forward_is_residual_plus_aggregate_then_mlp(mode, mixed):
    head = hand_head(mode)
    f = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    out = head(f)
    assert torch.allclose(out.extras["attractor_weights"], W.expand(2, 3))
    combined = f + torch.tensor(mixed)
    assert torch.allclose(out.embeddings, combined)  # embeddings are the refined features
    assert torch.allclose(out.logits, head.classifier(combined))


def test_attractor_count_follows_the_classes_and_seed_init():
    for classes in (3, 7):
        head = build_head("dra", {"high_dim": 16}, 8, classes, 0.0)
        assert head.attractors.shape == (classes, 16)
        assert head(torch.randn(5, 8)).extras["attractor_weights"].shape == (5, classes)
    # kaiming_normal_(mode="fan_out") on a (C, H) tensor: std √(2/C) (SPEC §4.2)
    torch.manual_seed(0)
    head = DRAHead(512, 10)
    assert float(head.attractors.std()) == pytest.approx(math.sqrt(2 / 10), rel=0.05)
    with pytest.raises(ConfigError, match="aggregate"):
        DRAHead(8, 3, aggregate="cubic")
    with pytest.raises(ConfigError, match="lambda_reg"):
        build_head("dra", {"lambda_reg": 1e-3}, 8, 3, 0.0)


def test_learned_regulariser_is_driven_to_exactly_zero_by_its_own_mlp():
    torch.manual_seed(0)
    head = build_head("dra", {"high_dim": 32, "regularizer": "learned", "reg_weight": 1.0}, 8, 5, 0.0)
    attractors = head.attractors.detach().clone()
    opt = torch.optim.Adam(head.regularizer.parameters(), lr=1e-2)  # only the "distance" MLP moves
    start = float(head.regularizer_value())
    for _ in range(1000):
        value = head.regularizer_value()
        if float(value) == 0.0:
            break
        opt.zero_grad()
        value.backward()
        opt.step()
    assert start > 0 and float(head.regularizer_value()) == 0.0  # exactly zero: dead final ReLU
    assert torch.equal(head.attractors.detach(), attractors)
    head.zero_grad()
    head.regularizer_value().backward()
    assert head.attractors.grad is None or not head.attractors.grad.any()  # no signal left for the attractors


@pytest.mark.parametrize("kind", ["diversity", "compact"])
def test_diversity_and_compact_depend_on_the_attractors_only(kind):
    torch.manual_seed(0)
    head = build_head("dra", {"high_dim": 16, "regularizer": kind, "reg_weight": 1.0}, 8, 4, 0.0)
    out = head(torch.randn(6, 8), torch.arange(6) % 4)
    terms = head.loss(out, Batch(torch.zeros(6, 1), torch.arange(6) % 4))
    assert set(terms) == {"ce", "attractor_reg"}
    terms["attractor_reg"].backward()
    for name, p in head.named_parameters():
        moved = p.grad is not None and bool(p.grad.any())
        assert moved == (name == "attractors"), name
    assert not list(head.regularizer.parameters())  # nothing but the attractors to move


def test_minimising_diversity_spreads_the_attractors_and_compact_pulls_them_together():
    torch.manual_seed(0)
    a = torch.randn(4, 8) + 3.0  # all in one orthant: high mutual cosine
    assert float(mean_pairwise_cosine(a)) == pytest.approx(
        float(mean_pairwise_cosine(5 * a)), abs=1e-6
    )  # scale-free
    spread = a.clone().requires_grad_(True)
    opt = torch.optim.Adam([spread], lr=0.05)
    before = float(mean_pairwise_cosine(spread))
    for _ in range(300):
        opt.zero_grad()
        mean_pairwise_cosine(spread).backward()
        opt.step()
    after = float(mean_pairwise_cosine(spread))
    assert before > 0.5 and after < -0.3 and after >= -1 / 3 - 1e-4  # the simplex bound −1/(C−1)
    # the README's "minimise pairwise distances" pulls them together instead
    d = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert float(mean_pairwise_distance(d)) == pytest.approx(5.0)
    pulled = a.clone().requires_grad_(True)
    opt = torch.optim.SGD([pulled], lr=0.1)
    start = float(mean_pairwise_distance(pulled))
    for _ in range(60):
        opt.zero_grad()
        mean_pairwise_distance(pulled).backward()
        opt.step()
    assert float(mean_pairwise_distance(pulled)) < 0.5 * start


class IdentityBackbone(nn.Module):
    num_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_class_mean_init_on_a_hand_made_set():
    torch.manual_seed(0)
    head = DRAHead(2, 4, high_dim=3, attractor_init="class_means")
    model = Classifier(IdentityBackbone(), head)
    untouched = head.attractors.detach()[3].clone()
    # class 0: (1,0), (3,0) → mean (2,0); class 1: (0,2), (0,4) → (0,3); class 2: (1,1); class 3: absent
    batches = [
        Batch(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])),
        Batch(torch.tensor([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]]), torch.tensor([0, 1, 2])),
    ]
    trainer = SimpleNamespace(
        model=model,
        train_loader=batches,
        device=torch.device("cpu"),
        prep=lambda x: x,
        autocast=nullcontext,
        dist=DistInfo(),
        state=SimpleNamespace(stage=1),
    )
    callback = ClassMeanInit()
    callback.on_stage_start(trainer)
    means = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    expected = means @ head.up.weight.detach().T + head.up.bias.detach()
    assert torch.allclose(head.attractors.detach()[:3], expected, atol=1e-6)
    assert torch.equal(head.attractors.detach()[3], untouched)  # a class without samples keeps its attractor
    assert callback.state_dict() == {"initialised_stages": [1]} and model.training
    # heads that do not ask are left alone
    plain = DRAHead(2, 4, high_dim=3)
    before = plain.attractors.detach().clone()
    callback.on_stage_start(
        SimpleNamespace(**{**vars(trainer), "model": Classifier(IdentityBackbone(), plain)})
    )
    assert torch.equal(plain.attractors.detach(), before)


def test_class_mean_callback_is_added_only_when_a_head_asks():
    cfg = load_config(CONFIGS / "fashion_mnist" / "dra.yaml")
    assert class_mean_init_callbacks(cfg) == []
    cfg.stages[1].head_args["attractor_init"] = "class_means"
    assert [type(c) for c in class_mean_init_callbacks(cfg)] == [ClassMeanInit]


def test_evaluation_measures_backbone_features_and_refined_embeddings():
    head = hand_head("linear")
    # two tight hand-made clusters: class 0 around (2, 0), class 1 around (0, 2), each point at distance 1
    f = torch.tensor([[2.0, 1.0], [2.0, -1.0], [1.0, 2.0], [-1.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    refined = head(f).embeddings  # f + (1.0, 0.75): a translation, so compactness is unchanged
    ctx = SimpleNamespace(
        preds=SimpleNamespace(features=f, embeddings=refined, targets=y, features_name="backbone features"),
        metrics={},
    )
    embedding_metrics_extension(ctx)
    geo = ctx.metrics["embedding_geometry"]
    assert geo["features"]["compactness"] == pytest.approx(1.0)
    assert geo["features"]["separation"] == pytest.approx(1.0)  # orthogonal class means
    assert geo["head_embeddings"]["compactness"] == pytest.approx(1.0)
    # class means (3, 0.75) and (1, 2.75): 1 − cos = 1 − (3 + 2.0625) / (|·|·|·|)
    cos = (3 * 1 + 0.75 * 2.75) / (math.hypot(3, 0.75) * math.hypot(1, 2.75))
    assert geo["head_embeddings"]["separation"] == pytest.approx(1 - cos)


TWO_STAGE = {
    "data": {"name": "fashion_mnist", "train_subset": 600, "val_fraction": 0.2, "test_subset": 200},
    "model": {
        "backbone": "adaptive_cnn",
        "backbone_args": {"layout": "mnist", "width_mult": 0.25},
        "head": "linear",
        "cache_features": True,
    },
    "optim": {"name": "adamw", "lr": 3.0e-3},
    "train": {"batch_size": 60, "precision": "fp32", "progress": False},
    "stages": [
        {"name": "pretrain", "epochs": 1},
        {
            "name": "attract",
            "epochs": 3,
            "freeze": ["backbone"],
            "head": "dra",
            "head_args": {
                "high_dim": 64,
                "weights_hidden": 32,
                "hidden_dim": 32,
                "attractor_init": "class_means",
            },
            "optim": {"lr": 3.0e-3, "weight_decay": 0.01},
        },
    ],
    "eval": {"plots": False, "checkpoint": "last"},
    "output": {"tensorboard": False},
}


class StageSnapshot(Callback):
    """Records the backbone state and the head's attractors when the attract stage starts (after class-mean init)."""

    name = "snapshot"

    def __init__(self) -> None:
        self.backbone = self.attractors = None

    def on_stage_start(self, trainer) -> None:
        if trainer.state.stage == 1:
            self.backbone = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
            self.attractors = trainer.model.head.attractors.detach().clone()


@requires_fashion_mnist
def test_two_stage_run_keeps_the_frozen_backbone_bit_identical_and_lowers_the_loss(tmp_path, monkeypatch):
    from imgcls import api

    snapshot = StageSnapshot()
    original = api.build_callbacks
    monkeypatch.setattr(api, "build_callbacks", lambda cfg, run_dir: [*original(cfg, run_dir), snapshot])
    path = tmp_path / "dra.yaml"
    path.write_text(yaml.safe_dump(TWO_STAGE))
    with single_thread():
        result = api.train(
            str(path), [f"output.dir={tmp_path}/runs", "output.name=dra"], evaluate_after=False
        )
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    final = {k[len("backbone.") :]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    assert snapshot.backbone is not None and set(final) == set(snapshot.backbone)
    assert any("running_mean" in k for k in final)  # BatchNorm statistics are part of the comparison
    for key, value in snapshot.backbone.items():
        assert torch.equal(final[key], value), key  # weights and BN statistics bit-identical
    assert not torch.equal(ckpt["model"]["head.attractors"], snapshot.attractors)  # the head did train
    attract = [row for row in result.history if row["stage"] == "attract"]
    assert len(attract) == 3 and all("train_attractor_reg" in row for row in attract)
    assert attract[-1]["train_loss"] < attract[0]["train_loss"]
    assert ckpt["callbacks"]["class_mean_init"] == {"initialised_stages": [1]}


@pytest.mark.parametrize("name", ["fashion_mnist/dra.yaml", "cifar10/dra_resnet18.yaml"])
def test_shipped_dra_configs_validate_and_build(name):
    cfg = load_config(CONFIGS / name)
    stages = cfg.resolved_stages()
    assert [s.name for s in stages] == ["pretrain", "attract"] and stages[1].freeze == ["backbone"]
    assert cfg.model.cache_features and cfg.eval.calibration == "temperature"
    model_cfg = cfg.model.model_copy(update={"pretrained": False})  # no hub weights offline
    model = build_model(model_cfg, 10, cfg.data.channels or 1)
    model_as_of_stage(model, cfg, 1)
    head = model.head
    assert isinstance(head, DRAHead) and head.attractors.shape == (10, 1024)
    assert head.in_features == (512 if "resnet18" in name else 128)
    size = min(cfg.data.image_size or 28, 64)  # the ResNet is size-agnostic: keep the forward cheap
    with torch.no_grad():
        out = model.eval()(torch.randn(2, cfg.data.channels or 1, size, size))
    assert out.logits.shape == (2, 10) and out.embeddings.shape == (2, head.in_features)
    copy.deepcopy(model)  # averaging callbacks copy the model
