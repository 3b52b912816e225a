"""Experiment configuration: a pydantic schema, YAML files and dotted command-line overrides.

One :class:`ExperimentConfig` describes a whole run (data, augmentation, model, optimiser,
schedule, training, evaluation, output, stages). Every section forbids unknown keys and NaN/inf,
and every number has a range; a bad key or value becomes a one-line
:class:`~imgcls.errors.ConfigError` naming the key, the value, what is allowed (the whole range
for a number), and the closest valid key for typos. Overrides are ``section.key=value`` with
list indices (``stages.0.epochs=3``); the last of two equal keys wins.

YAML (files, override values, sweep spaces) is read safely (no tags that run code) with limits: nesting deeper
than :data:`MAX_YAML_DEPTH` levels, aliases that expand to more than :data:`MAX_ALIAS_VALUES` values beyond the
file's own (an "alias bomb") and an anchor that contains itself are one-line errors; keys are unique per
mapping, and merge keys (``<<: *base``) follow YAML (explicit keys override merged ones, the earlier of
several merged mappings wins). Booleans are true/false only, and only for on/off fields: ``optim.lr=true``
is refused instead of read as 1.0.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path, PureWindowsPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from imgcls.errors import ConfigError, describe_validation_error
from imgcls.recipes import resolve_config
from imgcls.registry import (
    BACKBONES,
    HEADS,
    Registry,
    first_nonfinite,
    refuse_bool_as_number,
    with_allowed_ranges,
)

log = logging.getLogger(__name__)

#: seeds go to NumPy's legacy seeding too, which takes 0 … 2**32 − 1
MAX_SEED = 2**32 - 1
#: image sides (data.image_size, distill.teacher_input_size) and pixel counts of augmentations
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096
#: worker processes and threads
MAX_WORKERS = 1024

UnitInterval = Annotated[float, Field(ge=0.0, le=1.0)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, NaN/inf refused, and
    a boolean is refused where a number is expected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """true/false are booleans for on/off fields only: pydantic would read ``optim.lr=true`` as 1.0."""
        return refuse_bool_as_number(cls, info.field_name, value)


class DataConfig(Section):
    name: str = Field(
        "fashion_mnist", description="registered data set name (fashion_mnist, mnist, cifar10, ...)"
    )
    root: str | None = Field(None, description="folder holding the data; default: search the standard places")
    download: bool = Field(False, description="download the data set when it is not found locally")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="stratified validation split of the training data"
    )
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    image_size: int | None = Field(
        None,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description="resize images to this square size, 8 … 4096 (None: native)",
    )
    channels: int | None = Field(
        None, description="convert to 1 (grayscale) or 3 (RGB) channels (None: native)"
    )
    mean: list[UnitInterval] | None = Field(
        None,
        description="normalisation mean per channel, in [0, 1] units like the images (None: data set default)",
    )
    std: list[PositiveFloat] | None = Field(
        None, description="normalisation std per channel (> 0), set together with mean"
    )
    train_subset: int | None = Field(
        None, gt=0, description="use only this many training images (stratified)"
    )
    test_subset: int | None = Field(None, gt=0, description="use only this many test images (stratified)")
    in_memory: Literal["auto", "yes", "no"] = "auto"
    num_workers: int = Field(2, ge=0, le=MAX_WORKERS)
    sampler: Literal["random", "balanced", "m_per_class", "confusion"] = "random"
    samples_per_class: int | None = Field(
        None, gt=0, description="balanced: images per class per epoch; m_per_class: m"
    )
    confusion_floor: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="confusion sampler: share of draws spread evenly over classes (1: balanced)",
    )
    train_dir: str | None = Field(
        None, description="imagefolder: training folder (relative to data.root), else found"
    )
    test_dir: str | None = Field(
        None,
        description="imagefolder: test folder, a class tree or flat files named <class>_*.jpg; else found or carved",
    )
    holdout_per_class: int | None = Field(
        None,
        gt=0,
        description="set aside this many unused training images per class, evaluated once beside the test set",
    )
    taxonomy: str | None = Field(
        None, description="'wordnet', or a path to a parent-map YAML/JSON or label-path CSV"
    )
    taxonomy_rule: Literal["first_path", "shortest_path"] = "first_path"
    invert: Literal["none", "auto", "always"] = Field(
        "none",
        description="auto: invert each image whose mean is above 127/255 (dark-on-white → MNIST-like); stored for predict",
    )
    exclude_manifest: str | None = Field(
        None, description="dedup manifest (imgcls data dedup --out FILE): the files it removed are skipped"
    )
    test_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="no test split (e.g. one cache): stratified fraction carved out as the test set",
    )

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int | None) -> int | None:
        if v not in (None, 1, 3):
            raise ValueError("must be 1 or 3")
        return v

    @model_validator(mode="after")
    def _normalisation(self) -> DataConfig:
        """mean and std come as a pair, one value per channel (a single one of them used to be ignored)."""
        if (self.mean is None) != (self.std is None):
            given, missing = ("data.mean", "data.std") if self.std is None else ("data.std", "data.mean")
            raise ConfigError(
                f"{given} is set but {missing} is not: set both (one value per channel) or neither"
            )
        if self.mean is not None and self.std is not None:
            counts = (self.channels,) if self.channels else (1, 3)
            if len(self.mean) != len(self.std) or len(self.mean) not in counts:
                wanted = f"{self.channels} (data.channels)" if self.channels else "1 or 3"
                raise ConfigError(
                    f"invalid data.mean/data.std: they need {wanted} values each, one per channel; "
                    f"got {len(self.mean)} and {len(self.std)}"
                )
        return self


class AugmentConfig(Section):
    """Batched training augmentation (applied to whole batches on the device)."""

    preset: str | None = Field(
        None, description="mnist | cifar | asl: the seeds' recipes; fields below override"
    )
    crop_padding: int = Field(
        0, ge=0, le=MAX_IMAGE_SIZE, description="random crop after zero-padding by this many pixels"
    )
    random_resized_crop: bool = False
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="horizontal flip probability")
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max rotation in degrees")
    translate: float = Field(0.0, ge=0.0, le=0.5, description="max translation as a fraction of size")
    scale: tuple[float, float] = (1.0, 1.0)
    shear: float = Field(0.0, ge=0.0, le=45.0)
    perspective: float = Field(0.0, ge=0.0, le=1.0, description="distortion scale (probability 0.5)")
    brightness: float = Field(0.0, ge=0.0, le=1.0)
    contrast: float = Field(0.0, ge=0.0, le=1.0)
    saturation: float = Field(
        0.0, ge=0.0, le=1.0, description="colour saturation factor U(1 ± value) (RGB only)"
    )
    hue: float = Field(0.0, ge=0.0, le=0.5, description="hue shift U(± value) in turns (RGB only)")
    grayscale: bool = False
    randaugment: tuple[int, int] | None = Field(None, description="(num_ops N 0..16, magnitude M 0..30)")
    autoaugment: Literal["cifar10", "imagenet", "svhn"] | None = None
    trivialaugment: bool = False
    cutout_holes: int = Field(0, ge=0, le=1024)
    cutout_size: int = Field(0, ge=0, le=MAX_IMAGE_SIZE, description="side of each cutout hole in pixels")
    erasing: float = Field(0.0, ge=0.0, le=1.0, description="random erasing probability")
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability of mixing a batch")
    mix_switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability of CutMix when both are on")
    mix_off_epoch: int | None = Field(None, ge=0, description="stop mixing from this epoch on")
    resize_min: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGE_SIZE,
        description="progressive resizing: train at this shorter-side size (px) first, growing to full size",
    )
    resize_epochs: tuple[int, int] = Field(
        (0, 0),
        description="progressive resizing ramp [start, end]: resize_min before epoch start, full size from "
        "epoch end on, linear in between (epochs counted from 0)",
    )

    @field_validator("resize_epochs")
    @classmethod
    def _ordered_ramp(cls, ramp: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= ramp[0] <= ramp[1]:
            raise ValueError(f"needs [start, end] with 0 <= start <= end, got {list(ramp)}")
        return ramp

    @model_validator(mode="after")
    def _resize_ramp_set(self) -> AugmentConfig:
        if self.resize_min is not None and self.resize_epochs[1] == 0:
            raise ConfigError(
                f"augment.resize_min={self.resize_min} has no effect without a ramp: set "
                "augment.resize_epochs=[start, end] with end > 0 (full size from epoch end on)"
            )
        return self


class ModelConfig(Section):
    backbone: str = Field("adaptive_cnn", description="registered backbone, or timm:<model name>")
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = False
    pretrained_file: str | None = Field(
        None, description="local weights (.safetensors or .pt) for the backbone"
    )
    head: str = "linear"
    head_args: dict[str, Any] = Field(default_factory=dict)
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the head")
    cache_features: bool = Field(
        False, description="frozen-trunk training: compute a frozen backbone's features once per image"
    )
    cache_features_max_mb: float = Field(4096.0, gt=0, description="memory bound of the feature cache")


class OptimConfig(Section):
    name: Literal["sgd", "adamw", "adam", "rmsprop"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam(W) betas, each in [0, 1)")
    decay_norm_and_bias: bool = Field(False, description="apply weight decay to norm weights and biases too")
    head_lr_mult: float = Field(1.0, gt=0.0, description="learning-rate multiplier for the head's parameters")
    fused: bool | None = Field(
        None,
        description="fused optimizer kernels (None: the faster by measurement on the CPU, fused on CUDA)",
    )


class ScheduleConfig(Section):
    name: Literal["cosine", "constant", "step", "linear", "exponential", "cyclic", "plateau"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_start_factor: float = Field(0.1, ge=0.0, le=1.0, description="warm-up starts at lr × this (not 0)")
    min_lr_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="cosine/linear end at lr × this; exponential/plateau floor; cyclic low end",
    )
    step_epochs: list[NonNegativeInt] = Field(
        default_factory=list, description="step: multiply lr by gamma at these epochs"
    )
    gamma: float = Field(
        0.1, gt=0.0, description="step: lr multiplier at each of step_epochs (> 0; above 1 raises the lr)"
    )
    exp_gamma: float = Field(
        0.95, gt=0.0, le=1.0, description="exponential: lr multiplier per epoch after warm-up"
    )
    cyclic_step_epochs: float = Field(
        2.0, gt=0.0, description="cyclic: half-cycle length (low → high) in epochs"
    )
    cyclic_mode: Literal["triangular", "triangular2"] = Field(
        "triangular", description="triangular2 halves each cycle"
    )
    plateau_monitor: Literal["val_loss", "val_acc"] = Field(
        "val_loss", description="plateau: the metric watched"
    )
    plateau_factor: float = Field(0.1, gt=0.0, lt=1.0, description="plateau: lr multiplier on a plateau")
    plateau_patience: int = Field(10, ge=0, description="plateau: epochs without improvement tolerated")
    plateau_threshold: float = Field(1e-4, ge=0.0, description="plateau: relative improvement that counts")
    plateau_cooldown: int = Field(
        0, ge=0, description="plateau: epochs after a reduction before counting again"
    )


class TrainConfig(Section):
    epochs: int = Field(
        10, ge=0, description="epochs of a run without stages; the run's total (over stages) must be >= 1"
    )
    batch_size: int = Field(128, gt=0)
    time_budget_s: float | None = Field(
        None,
        gt=0.0,
        description="fit the epoch count to this wall-clock budget for the epochs (training + validation): "
        "planned after the first epoch (at most train.epochs), shortened after later ones that run slower",
    )
    grad_clip: float | None = Field(None, gt=0.0, description="clip gradient norm to this value")
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: the fastest of fp32 / bf16 autocast, timed on a few real steps before training",
    )
    channels_last: bool | None = Field(
        None, description="None (auto): measured with the precision; true/false pins it"
    )
    autotune_max_share: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="auto precision/layout: timing may cost at most this share of the run",
    )
    compile: bool = False
    seed: int = Field(42, ge=0, le=MAX_SEED, description="0 … 2**32 − 1 (NumPy's seeding limit)")
    deterministic: bool = False
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    early_stopping_patience: int | None = Field(None, ge=1)
    early_stopping_min_delta: float = Field(0.0, ge=0.0)
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0, description="keep an EMA of the weights with this decay"
    )
    ema_warmup: bool = True
    swa_start: float | None = Field(
        None, gt=0.0, lt=1.0, description="start SWA after this fraction of epochs"
    )
    swa_lr: float | None = Field(None, gt=0.0)
    log_every: int = Field(50, ge=1, description="steps between TensorBoard scalars")
    progress: bool = True
    threads: int | None = Field(
        None, ge=0, le=MAX_WORKERS, description="torch intra-op threads on CPU (None or 0: torch default)"
    )
    ddp_find_unused_parameters: bool = Field(
        False, description="DDP: allow parameters without gradients in a step"
    )

    checkpoint_every_steps: int | None = Field(
        None,
        ge=1,
        description="also write checkpoints/recovery.pt (mid-epoch, exact resume) every N optimiser steps",
    )
    checkpoint_every_minutes: float | None = Field(
        None, gt=0.0, description="also write checkpoints/recovery.pt every T minutes of training"
    )
    on_nonfinite: Literal["stop", "skip_step"] = Field(
        "stop", description="a NaN/inf loss: stop (one line), or skip_step: drop that step and go on"
    )
    max_skipped_steps: int = Field(
        5, ge=1, description="skip_step: stop after this many non-finite steps in a row"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError("must be auto, cpu, cuda, cuda:N (N = GPU index) or mps")
        return v


class EvalConfig(Section):
    checkpoint: Literal["best", "last", "ema", "swa"] = "best"
    batch_size: int | None = Field(None, gt=0, description="None: the training batch size")
    top_k: list[PositiveInt] = Field(
        default_factory=lambda: [1, 3, 5],
        description="top-k accuracies reported, each k >= 1 (seed 004 quotes top-3)",
    )
    tta: int = Field(
        1, ge=1, le=10, description="test-time views averaged (1: none; 2: + horizontal flip; more: + shifts)"
    )
    calibration_bins: int = Field(15, ge=2)
    throughput_s: float = Field(
        1.5,
        ge=0.0,
        le=600.0,
        description="seconds of timed inference behind the reported img/s (0: one timed batch, a rough figure)",
    )
    calibration: Literal["none", "temperature"] = Field(
        "none",
        description="temperature: fit temperature scaling on the validation split; applied in evaluate and predict",
    )
    plots: bool = True
    embeddings_plot: bool = True
    gradcam: bool = True
    max_plot_samples: int = Field(2000, gt=0)
    hier_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="confidence threshold τ for hierarchical prediction"
    )
    image_projection: bool = Field(
        False, description="t-SNE and UMAP of PCA-compressed training images (seed 001's Fig. 3)"
    )


class OutputConfig(Section):
    dir: str = "runs"
    name: str | None = Field(
        None, description="run name, a folder inside output.dir (default: the config file's stem)"
    )
    tensorboard: bool = True
    keep_every_epochs: int | None = Field(
        None,
        ge=1,
        description="also keep checkpoints/epoch_{n}.pt every N epochs (other epoch_*.pt are pruned)",
    )

    @field_validator("name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        """A run goes to ``output.dir/output.name/<time>``: a name with a path in it would put it elsewhere
        (``../../x``, or an absolute name replacing output.dir)."""
        if v is None:
            return v
        if not v.strip():
            raise ValueError(
                "output.name is empty; write a run name such as baseline, or null for the default "
                "(the config file's name)"
            )
        if v in (".", "..") or "/" in v or "\\" in v or "\x00" in v or PureWindowsPath(v).drive:
            raise ValueError("output.name is a run name, not a path; use output.dir for the folder")
        return v


class DistillTokensConfig(Section):
    """CST-style token distillation (seed 004, SPEC §5.4): L_tok on projected tokens + L_rel on relations."""

    student_layers: list[int] = Field(
        [6, 11], min_length=1, description="student blocks whose patch tokens are distilled"
    )
    teacher_layers: list[int] = Field(
        [6, 11], min_length=1, description="teacher layers matched to student_layers, in order"
    )
    projector_hidden: int = Field(512, gt=0, description="hidden width of both projectors")
    projector_dim: int = Field(256, gt=0, description="output width of both projectors")
    teacher_token_norm: bool = Field(
        True, description="LayerNorm the teacher tokens (DINOv2 get_intermediate_layers norm=True)"
    )
    lambda_tok: float = Field(1.0, ge=0.0, description="weight of L_tok = 1 − cosine")
    lambda_rel: float = Field(0.1, ge=0.0, description="weight of L_rel after relation_warmup_epochs")
    relation_temperature: float = Field(
        0.1, gt=0.0, description="softmax temperature of the similarity distributions"
    )
    relation_pooled: bool = Field(
        True, description="B×B relations of mean-pooled tokens (seed); false: per-image N×N"
    )
    relation_warmup_epochs: int = Field(10, ge=0, description="L_rel weight is 0 before this epoch")

    @model_validator(mode="after")
    def _pairs(self) -> DistillTokensConfig:
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError("distill.tokens.student_layers and teacher_layers must have the same length")
        return self


class DistillConfig(Section):
    """Knowledge distillation from a frozen teacher (docs/distillation.md); off while ``teacher`` is unset."""

    teacher: str | None = Field(
        None, description="imgcls run directory, checkpoint file, or timm:<model name>"
    )
    teacher_checkpoint: Literal["best", "last", "ema", "swa"] | None = Field(
        None, description="which weights of an imgcls run (None: the run's eval.checkpoint)"
    )
    pretrained: bool = Field(
        True, description="timm teacher: load its pretrained weights (hub or pretrained_file)"
    )
    pretrained_file: str | None = Field(
        None, description="timm teacher: local weights file (.safetensors/.pth)"
    )
    teacher_args: dict[str, Any] = Field(
        default_factory=dict, description="timm teacher: extra create_model arguments"
    )
    teacher_num_classes: int | None = Field(
        None,
        ge=0,
        description="timm teacher classifier size (None: the data's classes with logit KD, else 0)",
    )
    teacher_input_size: int | None = Field(
        None,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description="resize images to this side for the teacher, 8 … 4096 (None: its own)",
    )
    teacher_normalization: Literal["own", "student"] = Field(
        "own",
        description="own: teacher normalises unit-range images with its own mean/std; student: the seed's bug",
    )
    logits: Literal["hard", "soft", "none"] = Field(
        "soft", description="logit distillation: teacher argmax CE, τ²·KL, or off"
    )
    temperature: float = Field(3.0, gt=0.0, description="soft distillation temperature τ")
    alpha_schedule: Literal["constant", "linear", "cosine"] = "constant"
    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="constant schedule: weight of the KD term (CE gets 1 − α)"
    )
    alpha_start: float = Field(0.0, ge=0.0, le=1.0)
    alpha_end: float = Field(0.5, ge=0.0, le=1.0)
    warmup_epochs: int = Field(0, ge=0, description="epochs of CE only before logit distillation starts")
    tokens: DistillTokensConfig | None = Field(None, description="CST token distillation (None: off)")

    @field_validator("teacher_args")
    @classmethod
    def _finite_teacher_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        found = first_nonfinite(v)
        if found is not None:
            raise ValueError(f"{found[0]} is {found[1]}; use a finite number")
        return v

    @model_validator(mode="after")
    def _something(self) -> DistillConfig:
        if self.teacher is not None and self.logits == "none" and self.tokens is None:
            raise ValueError(
                "distill.teacher is set but distill.logits=none and no distill.tokens: nothing to distill"
            )
        return self


class StageConfig(Section):
    """One stage of a staged experiment; unset fields inherit from the experiment."""

    name: str = "main"
    epochs: int | None = Field(None, ge=0)
    optim: dict[str, Any] = Field(default_factory=dict, description="overrides of the optim section")
    schedule: dict[str, Any] = Field(default_factory=dict, description="overrides of the schedule section")
    label_smoothing: float | None = Field(None, ge=0.0, lt=1.0)
    freeze: list[str] = Field(default_factory=list, description="module prefixes to freeze (also eval mode)")
    train_only: list[str] = Field(default_factory=list, description="train only these module prefixes")
    loss_weights: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="weight (>= 0) per named loss term"
    )
    head: str | None = Field(None, description="switch to this head for the stage")
    head_args: dict[str, Any] = Field(default_factory=dict)
    stop_at_val_acc: float | None = Field(
        None, gt=0.0, le=1.0, description="end the stage once val acc reaches it"
    )


def _check_component(registry: Registry, where: str, name: str, args: dict[str, Any]) -> None:
    try:
        registry.get(name)
    except ConfigError as exc:
        raise ConfigError(f"invalid value {name!r} for '{where}': {exc}") from None
    registry.validate_args(name, args, f"{where}_args")


def stage_section(base: OptimConfig | ScheduleConfig, overrides: dict[str, Any], where: str):
    """``base`` (the experiment's optim or schedule section) with a stage's ``overrides`` applied and validated;
    a problem is one line located at ``where`` (e.g. ``stages.1.optim``)."""
    try:
        return type(base).model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        keys = list(type(base).model_fields)
        errors = with_allowed_ranges(exc.errors(), type(base))
        raise ConfigError(describe_validation_error(errors, where.split("."), lambda _: keys)) from None


class ExperimentConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    stages: list[StageConfig] = Field(default_factory=list, description="empty: one stage of train.epochs")
    distill: DistillConfig = Field(default_factory=DistillConfig)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.eval.checkpoint == "ema" and self.train.ema_decay is None:
            raise ValueError("eval.checkpoint=ema needs train.ema_decay (e.g. 0.999)")
        if self.eval.checkpoint == "swa" and self.train.swa_start is None:
            raise ValueError("eval.checkpoint=swa needs train.swa_start (e.g. 0.75)")
        self._check_components_and_stages()
        self._check_augment_ranges()
        if self.data.sampler == "confusion" and self.data.val_fraction == 0:
            raise ValueError(
                "data.sampler=confusion weights classes by their validation error: set data.val_fraction > 0 "
                "(or use data.sampler=balanced)"
            )
        if self.eval.calibration == "temperature" and self.data.val_fraction == 0:
            raise ValueError(
                "eval.calibration=temperature is fitted on the validation split: set data.val_fraction > 0"
            )
        if self.train.time_budget_s is not None and len(self.stages) > 1:
            raise ValueError(
                "train.time_budget_s fits the epochs of a single-stage run; this config has "
                f"{len(self.stages)} stages: set each stage's epochs instead, or drop the stages"
            )
        if self.total_epochs() < 1:
            where = (
                "stages' epochs: " + ", ".join(str(s.epochs) for s in self.resolved_stages())
                if self.stages
                else f"train.epochs={self.train.epochs}"
            )
            raise ValueError(
                f"the run would train 0 epochs in total ({where}); set train.epochs (or a stage's epochs) to 1 or more"
            )
        return self

    def _check_augment_ranges(self) -> None:
        """Pairs whose rule spans both values, checked when the config loads (``augment`` builds check them too,
        for an :class:`AugmentConfig` made in code)."""
        low, high = self.augment.scale
        if not 0 < low <= high:
            raise ConfigError(
                f"invalid value {list(self.augment.scale)} for 'augment.scale': must be [low, high] "
                "with 0 < low <= high (e.g. [0.9, 1.1])"
            )
        if self.augment.randaugment is not None:
            n, m = self.augment.randaugment
            if not (0 <= n <= 16 and 0 <= m <= 30):
                raise ConfigError(
                    f"invalid value {list(self.augment.randaugment)} for 'augment.randaugment': "
                    "must be [N, M] with 0 <= N <= 16 operations and magnitude 0 <= M <= 30 (e.g. [2, 9])"
                )

    def _check_components_and_stages(self) -> None:
        """Typed component arguments and stage overrides, checked when the config loads (not when a stage
        starts). Raises :class:`ConfigError` directly: pydantic would otherwise lose the location."""
        _check_component(BACKBONES, "model.backbone", self.model.backbone, self.model.backbone_args)
        _check_component(HEADS, "model.head", self.model.head, self.model.head_args)
        for i, stage in enumerate(self.stages):
            if stage.head:
                _check_component(HEADS, f"stages.{i}.head", stage.head, stage.head_args)
            elif stage.head_args:
                raise ConfigError(
                    f"stages.{i}.head_args is set but stages.{i}.head is not: name the head the stage switches to"
                )
            stage_section(self.optim, stage.optim, f"stages.{i}.optim")
            stage_section(self.schedule, stage.schedule, f"stages.{i}.schedule")

    def resolved_component_args(self) -> dict[str, dict[str, Any]]:
        """Every component's arguments with all defaults filled in, by config location
        (``model.backbone_args``, ``model.head_args``, ``stages.<i>.head_args``)."""
        out = {
            "model.backbone_args": BACKBONES.resolved_args(self.model.backbone, self.model.backbone_args),
            "model.head_args": HEADS.resolved_args(self.model.head, self.model.head_args),
        }
        for i, stage in enumerate(self.stages):
            if stage.head:
                out[f"stages.{i}.head_args"] = HEADS.resolved_args(stage.head, stage.head_args)
        return out

    def resolved_stages(self) -> list[StageConfig]:
        """The stages to run; an experiment without a `stages` list is one stage of `train.epochs`."""
        if not self.stages:
            return [StageConfig(name="main", epochs=self.train.epochs)]
        return [
            s if s.epochs is not None else s.model_copy(update={"epochs": self.train.epochs})
            for s in self.stages
        ]

    def total_epochs(self) -> int:
        return sum(int(s.epochs or 0) for s in self.resolved_stages())


# --------------------------------------------------------------------------------------------
# Loading, overrides and error messages
# --------------------------------------------------------------------------------------------


#: YAML safety limits, for config files, override values, sweep spaces and taxonomy files: nesting deeper than
#: this is refused (a config needs a few levels; Python would recurse past its limit) ...
MAX_YAML_DEPTH = 100
#: ... and so are aliases (``*name``) that expand to more values than this beyond the file's own: an "alias bomb"
#: of 9 levels of 10 aliases each is 90 aliases that expand to 10**9 values when the untyped fields are walked
MAX_ALIAS_VALUES = 10_000


class YamlLimits:
    """A PyYAML loader mixin (``class L(YamlLimits, yaml.SafeLoader)``) that refuses, with a one-line
    :class:`ConfigError`, YAML nested more than :data:`MAX_YAML_DEPTH` levels (counted while scanning and
    composing, before anything recurses deeply, and again with aliases expanded), aliases that add more than
    :data:`MAX_ALIAS_VALUES` values, and an alias inside its own anchor (a recursive structure)."""

    _depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        """The scanner reads ahead over every ``[``/``{`` that may start a key: refuse deep flow nesting here,
        before that costs time."""
        if self.flow_level >= MAX_YAML_DEPTH:
            raise ConfigError(_too_deep(self.line + 1))
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self._depth >= MAX_YAML_DEPTH:
            raise ConfigError(_too_deep(self.peek_event().start_mark.line + 1))
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node)
        return node


def _too_deep(line: int, how: str = "") -> str:
    return (
        f"the YAML is nested too deeply at line {line} (more than {MAX_YAML_DEPTH} levels of lists and "
        f"mappings{how}); flatten it (a config needs only a few levels)"
    )


def _check_expansion(root: yaml.Node) -> None:
    """Refuse aliases that expand ``root`` beyond the limits (depth, values) or into itself, in one iterative
    pass over the distinct nodes (an alias shares its anchor's node, so the sizes are memoised by node)."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if finished:
            entered.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if height[key] > MAX_YAML_DEPTH:
                raise ConfigError(_too_deep(node.start_mark.line + 1, " with its aliases expanded"))
            continue
        if key in size:
            continue
        if key in entered:
            raise ConfigError(
                f"the anchor at line {node.start_mark.line + 1} contains an alias of itself (a structure that "
                "contains itself); write the values out instead"
            )
        entered.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
    if size[id(root)] - len(size) > MAX_ALIAS_VALUES:
        raise ConfigError(
            f"its aliases (*name) expand to {size[id(root)]:,} values, more than {MAX_ALIAS_VALUES:,} beyond the "
            "file's own (an alias bomb?); write the values out or use fewer aliases"
        )


class ConfigLoader(YamlLimits, yaml.SafeLoader):
    """YAML as people write configs (YAML 1.2 scalars): only true/false are booleans (``in_memory: no``
    stays the string 'no'), and ``1e-3`` is a float, not a string. Deep nesting and alias bombs are refused
    (:class:`YamlLimits`), and so are duplicate keys (:func:`_check_unique_keys`)."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Resolve merge keys in place, as YAML defines them: ``{<<: *base, lr: 0.1}`` holds base's keys, the
        mapping's explicit keys override them, and of ``<<: [*a, *b]`` the earlier mapping wins (PyYAML's own
        lets a later one win, and a mapping merged in turn contribute its merged values over its explicit
        ones). The explicit keys are checked first (unique, plain names), once per mapping."""
        checked = self.__dict__.setdefault("_unique_checked", set())
        if id(node) in checked:  # flattened already (a merged mapping, or an alias's anchor)
            return
        checked.add(id(node))
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:value":  # as SafeLoader: '=' is a plain key
                key_node.tag = "tag:yaml.org,2002:str"
        _check_unique_keys(self, node)
        merged: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        explicit = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                explicit.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected a mapping or list of mappings for merging, but found {source.id}",
                        source.start_mark,
                    )
                self.flatten_mapping(source)
                for pair in source.value:  # unique keys once flattened
                    merged.setdefault(self.construct_object(pair[0], deep=True), pair)
        if merged:
            own = {self.construct_object(k, deep=True) for k, _ in explicit}
            node.value = [pair for key, pair in merged.items() if key not in own] + explicit


ConfigLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_unique_keys(loader: ConfigLoader, node: yaml.MappingNode) -> None:
    """A YAML mapping's keys must be unique (PyYAML silently keeps the last of two equal keys). Merge keys
    (``<<: *base``) are YAML's own: the merged keys come first and the mapping's explicit keys override them;
    only the explicit keys must be unique."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool, type(None))):
            raise ConfigError(
                f"the key at line {key_node.start_mark.line + 1} is a {type(key).__name__}; keys are names such as epochs"
            )
        if key in seen:
            raise ConfigError(
                f"duplicate key '{key}' at line {key_node.start_mark.line + 1} (first at line {seen[key]}); "
                "a key may appear once per section"
            )
        seen[key] = key_node.start_mark.line + 1


def parse_yaml(text: str) -> Any:
    """``text`` read with :class:`ConfigLoader`; deep nesting, alias bombs and duplicate keys are a one-line
    :class:`ConfigError` (without a file name: the caller adds it), a syntax error a ``yaml.YAMLError``."""
    try:
        return _unshared(yaml.load(text, Loader=ConfigLoader))
    except RecursionError:  # not expected past the composer's depth limit; one line all the same
        raise ConfigError(
            f"the YAML is nested too deeply (more than {MAX_YAML_DEPTH} levels of lists and mappings); "
            "flatten it (a config needs only a few levels)"
        ) from None


def _unshared(value: Any) -> Any:
    """``value`` with every list and mapping copied, so that no two places share one (PyYAML gives an alias
    its anchor's object): an override of one place (``stages.0.optim.lr=...``) must not change the other.
    Bounded by the loader's limits on depth and on the values aliases add."""
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def read_yaml_file(path: Path, what: str, example: str) -> Any:
    """The YAML content of the UTF-8 file ``path``; any problem (unreadable, not UTF-8, invalid YAML, too deep,
    an alias bomb, a duplicate key) is one :class:`ConfigError` line naming ``what`` and the file
    (``config file 'x.yaml' ...``); ``example`` is a file to suggest in its place."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} '{path}' is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            f"pass a YAML file such as {example}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what} '{path}' cannot be read ({exc.strerror or exc})") from None
    try:
        return parse_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{what} '{path}': {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} '{path}' is not valid YAML{_yaml_problem(exc, text)}") from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """`` at line N: what is wrong`` for a PyYAML error, on one line."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character such as NUL: a binary file?
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f" at line {line}: character U+{code:04X} is not allowed in YAML text (a binary file?)"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context = getattr(exc, "context", None)
    return f"{where}: {context}, {problem}" if context else f"{where}: {problem}"


def _parse_value(text: str, item: str = "") -> Any:
    """Parse an override value with YAML rules (numbers, bools, lists, null); fall back to the string."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError:
        return text
    except ConfigError as exc:  # e.g. a duplicate key inside {a: 1, a: 2}, or nesting too deep
        shown = item if len(item) <= 80 else f"{item[:60]}…{item[-10:]}"
        raise ConfigError(f"override '{shown}': {exc}") from None


def _valid_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """Valid keys at ``path`` inside the schema (for typo suggestions)."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = next(
            (
                a
                for a in (annotation, *getattr(annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _split_override(item: str) -> tuple[list[str], str]:
    """``section.key=value`` → (key parts, value text); a malformed override is one line saying how to fix it."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"override '{item}' is not of the form section.key=value (e.g. optim.lr=3e-4)")
    if not key:
        raise ConfigError(
            f"override '{item}' has no key before '=': write section.key=value (e.g. optim.lr=3e-4)"
        )
    parts = key.split(".")
    if any(not part.strip() for part in parts):
        raise ConfigError(
            f"override '{item}': key '{key}' has an empty part (a leading, trailing or doubled dot); "
            "write section.key=value (e.g. train.epochs=1)"
        )
    if not value.strip():
        raise ConfigError(
            f"override '{item}' has no value after '=': write {key}=null for no value, or \"{key}=''\" "
            "(quoted for the shell) for an empty string"
        )
    return parts, value


def _list_index(items: list[Any], part: str, where: str, item: str) -> int:
    """``part`` as an index into the list at ``where`` (``stages``), or a one-line error."""
    span = f"indices 0..{len(items) - 1}" if items else "no entries"
    if not part.isdigit():
        raise ConfigError(
            f"override '{item}': '{where}' is a list ({span}), so '{part}' must be an index such as {where}.0"
        )
    if int(part) >= len(items):
        raise ConfigError(
            f"override '{item}': index {part} is out of range, '{where}' has {span}; "
            f"to add an entry, set the whole list ({where}=[...])"
        )
    return int(part)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config dict (values parsed as YAML), in order: of two
    overrides of the same key the last wins. A numeric part indexes a list (``stages.0.epochs=3`` sets the
    epochs of the first stage); a missing section is created, a missing list entry is an error."""
    for item in overrides:
        parts, text = _split_override(item)
        value = _parse_value(text, item)
        node: Any = raw
        for i, part in enumerate(parts):
            where = ".".join(parts[:i])
            last = i == len(parts) - 1
            if isinstance(node, list):
                index = _list_index(node, part, where, item)
                if last:
                    node[index] = value
                    break
                nxt = node[index]
            else:
                if last:
                    node[part] = value
                    break
                nxt = node.get(part)
                if nxt is None and parts[i + 1].isdigit():
                    here = ".".join(parts[: i + 1])
                    raise ConfigError(
                        f"override '{item}': '{here}' is not set, so it has no entry {parts[i + 1]}; "
                        f"set the whole list instead ({here}=[...])"
                    )
                if nxt is None:
                    nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(
                    f"override '{item}': '{'.'.join(parts[: i + 1])}' is a value, not a section"
                )
            node = nxt
    return raw


def _format_error(exc: ValidationError) -> str:
    def valid(section: list[str]) -> list[str]:
        section = [p for p in section if not p.isdigit()]
        return _valid_keys(ExperimentConfig, section) or _valid_keys(
            StageConfig, section[-1:] if section else []
        )

    return describe_validation_error(with_allowed_ranges(exc.errors(), ExperimentConfig), valid_keys=valid)


def build_config(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML experiment config (or the defaults when ``path`` is None) and apply overrides.

    ``path`` is a file, or the name of a shipped recipe when no such file exists (:mod:`imgcls.recipes`)."""
    raw: dict[str, Any] = {}
    name = None
    if path is not None:
        p = resolve_config(path)  # a file, else a shipped recipe by name (quickstart, fashion_mnist/fch_rbf)
        raw = read_yaml_file(p, "config file", "configs/quickstart.yaml")
        if raw is None:
            log.warning("warning: config file '%s' is empty; training with all defaults", p)
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections (data:, model:, ...)")
        name = p.stem
    file_raw = copy.deepcopy(raw) if name is not None and overrides else None
    raw = apply_overrides(raw, list(overrides or []))
    try:
        cfg = build_config(raw)
    except ConfigError as exc:
        if name is not None and _invalid_alone(file_raw):  # the file's own content is wrong: name the file
            raise ConfigError(f"config file '{p}': {exc}") from None
        raise
    if cfg.output.name is None and name is not None:
        cfg.output.name = name
    return cfg


def _invalid_alone(file_raw: dict[str, Any] | None) -> bool:
    """Whether a config file's content fails validation without the overrides (None: there were none)."""
    if file_raw is None:
        return True
    try:
        build_config(file_raw)
    except ConfigError:
        return True
    return False


def config_to_yaml(cfg: ExperimentConfig, component_defaults: bool = False) -> str:
    """The config as YAML; with ``component_defaults`` the head/backbone arguments list every default too
    (``imgcls config show``)."""
    data = cfg.model_dump(mode="json")
    if component_defaults:
        for where, args in cfg.resolved_component_args().items():
            node = data
            *path, key = where.split(".")
            for part in path:
                node = node[int(part)] if part.isdigit() else node[part]
            node[key] = args
    return yaml.safe_dump(data, sort_keys=False)
