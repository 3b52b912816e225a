"""Knowledge distillation (seed 004, SPEC §5.4; issue 10): KD losses against hand-computed values, α schedules,
token-grid resize, L_tok/L_rel, frozen teachers (imgcls runs and timm models, own vs student normalisation), the
distillation objective inside the real trainer on Fashion-MNIST (loss goes down, teacher frozen and outside the
student's checkpoint, projectors in their own optimiser group and restored on resume, warm-up = plain training
bit for bit), the evaluation extension, and the seed-004 / Fashion-MNIST configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imgcls.config import DistillConfig, load_config
from imgcls.data.prepare import make_loader, prepare_data
from imgcls.engine.callbacks import Checkpointer
from imgcls.engine.distillation import DistillationObjective
from imgcls.engine.objective import HeadObjective, build_objective
from imgcls.engine.trainer import Trainer
from imgcls.errors import ConfigError
from imgcls.losses.distillation import (
    alpha_at,
    hard_distillation,
    relation_loss,
    resize_token_grid,
    soft_distillation,
    token_cosine_loss,
)
from imgcls.models.classifier import build_model, count_parameters
from imgcls.runtime import checkpoint as ckpt_io
from imgcls.runtime.batch import Batch
from imgcls.teacher import FrozenTeacher, load_teacher
from tiny_runs import TINY_OVERRIDES, requires_fashion_mnist, shared_run, single_thread

CPU = torch.device("cpu")
CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


# ----------------------------------------------------------------------------------------- losses
def test_hard_distillation_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.1, 3.0, 0.0], [0.0, 0.0, 5.0]])  # argmax 1 and 2
    expected = (-math.log(math.exp(0) / (math.exp(2) + 1 + math.exp(-1))) - math.log(1 / (2 + math.e))) / 2
    assert float(hard_distillation(student, teacher)) == pytest.approx(expected, rel=1e-6)


def test_soft_distillation_by_hand():
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 3.0], [3.0, 0.0]])
    tau = 3.0

    def softmax(v):
        e = [math.exp(x / tau) for x in v]
        return [x / sum(e) for x in e]

    total = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        ps, pt = softmax(s), softmax(t)
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    expected = tau**2 * total / 2
    assert float(soft_distillation(student, teacher, tau)) == pytest.approx(expected, rel=1e-5)
    assert float(soft_distillation(teacher, teacher, tau)) == pytest.approx(0.0, abs=1e-6)


def test_alpha_schedules_endpoints_and_midpoint():
    kw = dict(alpha_start=0.1, alpha_end=0.5, warmup_epochs=5)
    for schedule in ("linear", "cosine"):
        assert alpha_at(4, 25, schedule, **kw) == 0.0  # warm-up: CE only
        assert alpha_at(5, 25, schedule, **kw) == pytest.approx(0.1)  # progress 0
        assert alpha_at(15, 25, schedule, **kw) == pytest.approx(0.3)  # progress ½: both give the mean
        assert alpha_at(25, 25, schedule, **kw) == pytest.approx(0.5)  # progress 1
        assert alpha_at(40, 25, schedule, **kw) == pytest.approx(0.5)  # clamped
    assert alpha_at(10, 25, "linear", **kw) == pytest.approx(0.1 + 0.4 * 0.25)
    assert alpha_at(10, 25, "cosine", **kw) == pytest.approx(0.1 + 0.4 * (1 - math.cos(math.pi / 4)) / 2)
    assert alpha_at(0, 25, "constant", alpha=0.6) == 0.6
    assert alpha_at(2, 25, "constant", alpha=0.6, warmup_epochs=3) == 0.0
    with pytest.raises(ValueError):
        alpha_at(0, 10, "step")


def test_token_grid_resize_shapes_and_values():
    tokens = torch.randn(2, 256, 384)  # DINOv2/14 at 224 px: 16×16
    assert resize_token_grid(tokens, 64).shape == (2, 64, 384)  # → the CIFAR student's 8×8
    assert resize_token_grid(torch.randn(3, 16, 8), 49).shape == (3, 49, 8)  # CNN 4×4 → 7×7 (upsampling)
    assert resize_token_grid(tokens, 256) is tokens
    constant = torch.ones(1, 16, 4) * torch.arange(4.0)
    torch.testing.assert_close(resize_token_grid(constant, 64), torch.ones(1, 64, 4) * torch.arange(4.0))
    # token n of the grid is row n // side, column n % side: a horizontal ramp stays a horizontal ramp
    ramp = torch.arange(4.0).repeat(4).view(1, 16, 1)
    out = resize_token_grid(ramp, 64).view(8, 8)
    assert torch.all(out[:, 1:] >= out[:, :-1]) and torch.allclose(out[0], out[7])
    with pytest.raises(ValueError, match="square"):
        resize_token_grid(torch.randn(1, 10, 2), 4)


def test_token_cosine_loss():
    a = torch.randn(2, 5, 8)
    assert float(token_cosine_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(token_cosine_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)
    assert float(token_cosine_loss(a, 3 * a)) == pytest.approx(0.0, abs=1e-6)


def test_relation_loss_finite_with_identical_samples():
    same = torch.randn(1, 10, 16).expand(8, -1, -1).contiguous().requires_grad_(True)
    teacher = torch.randn(8, 20, 32)
    for pooled in (True, False):
        t = teacher if pooled else resize_token_grid(teacher[:, :16], 16)[:, :10]
        loss = relation_loss(same, t, temperature=0.1, pooled=pooled)
        assert torch.isfinite(loss) and float(loss) >= 0
        loss.backward()
        assert torch.isfinite(same.grad).all()
        same.grad = None
    # a collapsed teacher batch too (all similarities 1): log_softmax keeps it finite; equal relations → 0
    collapsed = torch.ones(8, 5, 4)
    assert float(relation_loss(collapsed, collapsed * 2)) == pytest.approx(0.0, abs=1e-6)
    # the seed's softmax(..).log() underflows to -inf for a sharp distribution, ours does not
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert torch.isinf(torch.softmax(far @ far.T / 0.01, -1).log()).any()
    assert torch.isfinite(relation_loss(far, far.flip(0), temperature=0.01))


# ----------------------------------------------------------------------------------------- teachers
def tiny_timm_cfg(**kw) -> DistillConfig:
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 2, "in_chans": 3}
    return DistillConfig(teacher="timm:vit_tiny_patch16_224", pretrained=False, teacher_args=args, **kw)


def test_timm_teacher_normalises_resizes_and_gives_tokens():
    torch.manual_seed(0)
    teacher = load_teacher(tiny_timm_cfg(), class_names=[str(i) for i in range(10)])
    assert teacher.input_size == 32 and teacher.channels == 3
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.model.training
    # grayscale data: repeated to RGB, resized to 32, normalised with the teacher's own statistics
    unit = torch.rand(4, 1, 28, 28)
    x = teacher.prepare(unit)
    rgb = F.interpolate(unit.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", align_corners=False)
    mean, std = (
        torch.tensor(teacher.model.pretrained_cfg["mean"]),
        torch.tensor(teacher.model.pretrained_cfg["std"]),
    )
    assert mean.tolist() == [0.5, 0.5, 0.5]  # this timm ViT's own statistics (augreg), not the student's
    torch.testing.assert_close(x, (rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert teacher.logits(unit).shape == (4, 10)
    tokens = teacher.tokens(unit, [0, 2])
    assert tokens[0].shape == (4, 16, 48) and tokens[2].shape == (4, 16, 48)  # 4×4 patches, CLS dropped
    # norm=True applies the ViT's final LayerNorm to intermediate tokens (DINOv2's get_intermediate_layers)
    raw = teacher.tokens(unit, [2], norm=False)[2]
    torch.testing.assert_close(tokens[2], teacher.model.norm(raw))
    # the seed's option: the student-normalised tensor goes in as it is (resized only)
    seed = load_teacher(
        tiny_timm_cfg(teacher_normalization="student"), class_names=[str(i) for i in range(10)]
    )
    student_x = (unit - 0.2860) / 0.3530
    torch.testing.assert_close(
        seed.prepare(unit, student_x),
        F.interpolate(student_x.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear"),
    )
    with pytest.raises(ConfigError, match="teacher_num_classes"):
        load_teacher(tiny_timm_cfg(), class_names=None)


def test_dinov2_recipe_teacher_builds_without_weights():
    """The seed's DINOv2 ViT-S/14 through the real code path (random weights: the hub is unreachable here)."""
    cfg = load_config(CONFIGS / "cifar10" / "deit_ss_distill_cifar.yaml", ["distill.pretrained=false"])
    teacher = load_teacher(cfg.distill, class_names=None)
    assert teacher.input_size == 224 and teacher.channels == 3 and teacher.kind == "timm"
    assert teacher.token_dims([6, 11]) == {6: 384, 11: 384}
    # ViT-S/14 with a 16×16 positional embedding
    assert count_parameters(teacher.model) == pytest.approx(21.6e6, rel=0.01)


# ----------------------------------------------------------------------------------------- objective + trainer
STUDENT = [
    "model.backbone=deit",
    "model.backbone_args={img_size: 28, patch_size: 7, embed_dim: 32, depth: 2, num_heads: 2, stem_channels: [8], "
    "distillation_token: true, drop_path_rate: 0.0}",
    "model.head=deit_dist",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.deterministic=true",
    "optim.lr=3e-3",
    "schedule.name=constant",
]
TOKENS = "distill.tokens={student_layers: [0, 1], teacher_layers: [3, 5], projector_hidden: 16, projector_dim: 8, relation_warmup_epochs: 0}"


@pytest.fixture(scope="module")
def data():
    return prepare_data(
        load_config(None, ["data.train_subset=600", "data.test_subset=100", "data.val_fraction=0.2"])
    )


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return shared_run(tmp_path_factory)


def make_trainer(
    data, overrides: list[str], epochs: int = 1, checkpoints: Path | None = None
) -> tuple[Trainer, object]:
    cfg = load_config(
        None, [*TINY_OVERRIDES, *STUDENT, f"train.epochs={epochs}", "train.batch_size=60", *overrides]
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, len(data.class_names), data.channels)
    objective = build_objective(cfg, model, device=CPU, data=data)
    trainer = Trainer(
        cfg,
        model,
        make_loader(data.train, data, cfg, train=True, batch_size=60),
        make_loader(data.val, data, cfg, train=False, batch_size=60),
        device=CPU,
        preprocess_meta=data.preprocess,
        class_names=data.class_names,
        objective=objective,
        callbacks=[Checkpointer(checkpoints, "val_acc")] if checkpoints is not None else [],
    )
    return trainer, objective


def fixed_batch(trainer: Trainer, data) -> Batch:
    batch = next(iter(make_loader(data.train, data, trainer.cfg, train=False, batch_size=120)))
    unit = trainer.prep.to_unit(batch.images)
    return Batch(images=trainer.prep.normalize(unit), targets=batch.targets, unit_images=unit)


def weighted_loss(trainer: Trainer, batch: Batch) -> float:
    trainer.model.eval()
    trainer.objective.eval()
    with torch.no_grad():
        result = trainer.objective(trainer.model, trainer.model.head, batch)
    return float(trainer._weighted_sum(result.terms))


@requires_fashion_mnist
def test_distillation_run_lowers_loss_keeps_teacher_frozen_and_out_of_checkpoint(data, teacher_run, tmp_path):
    overrides = [f"distill.teacher={teacher_run}", "distill.logits=soft", TOKENS]
    trainer, objective = make_trainer(data, overrides, epochs=2, checkpoints=tmp_path)
    assert isinstance(objective, DistillationObjective)
    teacher: FrozenTeacher = objective.teacher
    teacher_before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    objective.on_epoch_start(0, 2)
    batch = fixed_batch(trainer, data)
    before = weighted_loss(trainer, batch)
    history = trainer.fit()
    after = weighted_loss(trainer, batch)
    assert after < before - 0.2, (before, after)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    row = history[-1]
    assert {"train_kd", "train_tok", "train_rel", "val_kd", "val_tok", "val_rel", "distill_alpha"} <= set(row)
    assert "train_ce_dist" not in row  # the DIST classifier learns from the teacher, not the labels
    assert 0 < row["val_teacher_agreement"] <= 1 and row["train_proj_var_student"] > 0
    # the teacher: frozen, no gradient, eval mode although the objective was in train mode, weights unchanged
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.model.training
    teacher.model.train()  # even if someone flips it, the next teacher call runs in eval mode
    objective.train()
    objective(trainer.model, trainer.model.head, batch)
    assert not teacher.model.training
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    # the projectors: their own optimiser group; nothing of the teacher in parameters(), state_dict or checkpoint
    groups = {g["name"]: g["params"] for g in trainer.optimizer.param_groups}
    assert {id(p) for p in groups["objective"]} == {id(p) for p in objective.parameters()}
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in objective.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    ckpt = ckpt_io.load_checkpoint(tmp_path / "last.pt")
    assert set(ckpt["model"]) == set(trainer.model.state_dict())
    assert set(ckpt["objective"]) == set(objective.state_dict())
    assert all(k.startswith(("student_proj.", "teacher_proj.")) for k in ckpt["objective"])
    n_stored = sum(v.numel() for v in ckpt["model"].values()) + sum(
        v.numel() for v in ckpt["objective"].values()
    )
    assert n_stored == sum(v.numel() for v in trainer.model.state_dict().values()) + count_parameters(
        objective
    )


@requires_fashion_mnist
def test_projector_optimizer_state_restored_mid_run(data, teacher_run, tmp_path):
    """Stop after epoch 1 of 2, resume from last.pt: the projectors end exactly where an uninterrupted run ends."""
    overrides = [f"distill.teacher={teacher_run}", "distill.logits=none", TOKENS]
    full, full_obj = make_trainer(data, overrides, epochs=2)
    full.fit()
    # constant lr: epoch 1 of a 1-epoch run = epoch 1 of the 2-epoch run
    first, _ = make_trainer(data, overrides, epochs=1, checkpoints=tmp_path)
    first.fit()
    second, second_obj = make_trainer(data, overrides, epochs=2)
    second.fit(resume=ckpt_io.load_checkpoint(tmp_path / "last.pt"))
    for (k, a), b in zip(second_obj.state_dict().items(), full_obj.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    for (k, a), b in zip(second.model.state_dict().items(), full.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


@requires_fashion_mnist
def test_default_objective_and_distillation_warmup_are_bit_identical_to_plain_training(data, teacher_run):
    one_token = ["model.backbone_args.distillation_token=false", "model.head=linear"]
    plain, plain_obj = make_trainer(data, one_token, epochs=1)
    assert type(plain_obj) is HeadObjective
    plain.fit()
    # during the distillation warm-up α = 0: the KD term weighs exactly 0 and CE 1 — the same weights, bit for bit
    kd = [f"distill.teacher={teacher_run}", "distill.logits=hard", "distill.warmup_epochs=5"]
    warm, warm_obj = make_trainer(data, [*one_token, *kd])
    assert isinstance(warm_obj, DistillationObjective)
    history = warm.fit()
    assert history[0]["distill_alpha"] == 0.0 and history[0]["train_kd"] > 0
    for (k, a), b in zip(warm.model.state_dict().items(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@requires_fashion_mnist
def test_evaluation_reports_cls_dist_and_teacher_agreement(tmp_path, teacher_run):
    from imgcls import api

    result = api.train(
        None,
        [
            *TINY_OVERRIDES,
            *STUDENT,
            "data.train_subset=300",
            "data.test_subset=100",
            "train.epochs=1",
            "train.batch_size=50",
            f"output.dir={tmp_path}",
            f"distill.teacher={teacher_run}",
            "distill.logits=hard",
        ],
    )
    d = result.metrics["distillation"]
    assert d["inference"] == "avg" and result.metrics["accuracy"] == pytest.approx(d["avg_acc"])
    assert 0 <= d["cls_acc"] <= 1 and 0 <= d["dist_acc"] <= 1
    assert 0.5 < d["teacher_acc"] <= 1 and 0 < d["teacher_agreement"] <= 1


def test_student_without_tokens_is_a_clear_error(tmp_path):
    cfg = load_config(None, ["model.backbone=adaptive_cnn", "model.backbone_args={width_mult: 0.25}"])
    model = build_model(cfg.model, 10, 1)
    teacher = load_teacher(
        tiny_timm_cfg(logits="none", tokens={"student_layers": [0], "teacher_layers": [0]})
    )
    with pytest.raises(ConfigError, match="token student"):
        DistillationObjective(
            tiny_timm_cfg(logits="none", tokens={"student_layers": [0], "teacher_layers": [0]}),
            teacher,
            model,
        )
    with pytest.raises(ConfigError, match="nothing to distill"):
        load_config(None, ["distill.teacher=runs/x", "distill.logits=none"])
    with pytest.raises(ConfigError, match="same length"):
        load_config(
            None, ["distill.teacher=runs/x", "distill.tokens={student_layers: [0, 1], teacher_layers: [0]}"]
        )
    with pytest.raises(ConfigError, match=r"distill\.alpha"):
        load_config(None, ["distill.alpha=1.5"])
    with pytest.raises(Exception, match="neither a run directory"):
        load_teacher(DistillConfig(teacher=str(tmp_path / "missing")), class_names=["a", "b"])


# ----------------------------------------------------------------------------------------- configs
SEED_CONFIGS = {
    "mnist/vit_mnist.yaml": (3.92e6, 1),
    "mnist/deit_mnist.yaml": (3.92e6, 1),
    "cifar10/vit_cifar.yaml": (4.34e6, 3),
    "cifar10/deit_cifar.yaml": (4.34e6, 3),
    "cifar10/deit_ss_distill_cifar.yaml": (4.34e6, 3),
    "cifar10/deit_ss_distill_cifar_ablation_ce_only.yaml": (4.34e6, 3),
}
FMNIST = ["distill_teacher", "deit_student", "deit_hard_kd", "deit_soft_kd", "deit_cst"]


@pytest.mark.parametrize("name", sorted(SEED_CONFIGS))
def test_seed_configs_validate_and_build(name):
    cfg = load_config(CONFIGS / name)
    params, chans = SEED_CONFIGS[name]
    model = build_model(cfg.model, 10, chans)
    assert count_parameters(model) == pytest.approx(params, rel=0.01)
    assert model.backbone.num_prefix_tokens == (2 if cfg.model.head == "deit_dist" else 1)
    if "ss_distill" in name and "ablation" not in name:
        assert cfg.distill.tokens.teacher_layers == [6, 11] and cfg.distill.logits == "none"
    elif "deit_" in name and "ablation" not in name:
        assert (
            cfg.distill.logits == "hard"
            and cfg.distill.alpha_schedule == "cosine"
            and cfg.distill.warmup_epochs == 5
        )
    else:
        assert cfg.distill.teacher is None


@pytest.mark.parametrize("name", FMNIST)
def test_fashion_mnist_configs_validate_and_build(name):
    cfg = load_config(CONFIGS / "fashion_mnist" / f"{name}.yaml")
    model = build_model(cfg.model, 10, 1)
    assert model(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)
    if name.startswith("deit_") and name != "deit_student":
        assert cfg.distill.teacher == "runs/distill_teacher"


# ----------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = load_config(None, STUDENT)
        distill = tiny_timm_cfg(
            logits="none",
            tokens={"student_layers": [1], "teacher_layers": [2], "projector_hidden": 8, "projector_dim": 4},
        )
        torch.manual_seed(0)  # same student, teacher and projectors on both ranks
        model = build_model(cfg.model, 10, 1)
        teacher = load_teacher(distill)
        objective = DistillationObjective(distill, teacher, model)
        objective.on_epoch_start(0, 1)
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(100 + rank)  # different data per rank
        unit = torch.rand(6, 1, 28, 28)
        batch = Batch(images=(unit - 0.5) / 0.5, targets=torch.randint(0, 10, (6,)), unit_images=unit)
        result = objective(wrapped, model.head, batch)
        sum(result.terms.values()).backward()
        grads = {f"model.{k}": p.grad for k, p in model.named_parameters() if p.grad is not None}
        grads.update({f"objective.{k}": p.grad for k, p in objective.named_parameters()})
        torch.save(grads, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_averages_student_and_projector_gradients(tmp_path):
    """Pitfall §5.9.3: the student's tokens come from the forward through the DDP wrapper and the projectors'
    gradients are averaged too — both ranks end the step with the same gradients (different data per rank)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    g0, g1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert any(k.startswith("objective.student_proj") for k in g0) and any(
        k.startswith("model.backbone.blocks.0") for k in g0
    )
    for k in g0:
        torch.testing.assert_close(g0[k], g1[k], msg=k)
    assert g0["objective.teacher_proj.0.net.0.weight"].abs().sum() > 0


def test_teacher_view_undoes_the_students_inversion():
    from imgcls.teacher import teacher_view

    x = torch.rand(2, 1, 4, 4)
    assert teacher_view("none", "none", "own", "t") is None
    assert torch.allclose(teacher_view("always", "none", "own", "t")(1.0 - x), x)
    assert torch.allclose(teacher_view("none", "always", "own", "t")(x), 1.0 - x)
    dark = torch.full((1, 1, 4, 4), 0.2)  # auto leaves a dark image alone and inverts a bright one
    assert torch.allclose(
        teacher_view("none", "auto", "own", "t")(torch.cat([dark, 1 - dark])), torch.cat([dark, dark])
    )
    for student, normalization in (("auto", "own"), ("always", "student")):
        with pytest.raises(
            ConfigError, match=r"trained with data\.invert=none, the student uses data\.invert="
        ):
            teacher_view(student, "none", normalization, "t")


@requires_fashion_mnist
def test_an_imgcls_teacher_sees_images_as_it_was_trained_whatever_the_students_invert(teacher_run):
    cfg = DistillConfig(teacher=str(teacher_run))
    plain = load_teacher(cfg, student_invert="none")
    inverting_student = load_teacher(cfg, student_invert="always")
    unit = torch.rand(4, 1, 28, 28)
    assert torch.allclose(plain.logits(unit), inverting_student.logits(1.0 - unit), atol=1e-5)
