"""Frozen teachers for knowledge distillation (seed 004, SPEC §5.4; DESIGN.md "Objective").

A teacher is loaded from the ``distill`` config section:

* an imgcls run directory (``runs/<name>/<time>``, or ``runs/<name>`` for its newest run) or a
  checkpoint file (``weights_only`` through :mod:`imgcls.runs`): the
  model as of its last stage, with the checkpoint's own preprocessing (image size, channels,
  mean/std) — e.g. the AdaptiveCNN of ``configs/fashion_mnist/distill_teacher.yaml``;
* ``timm:<name>`` with ``pretrained: true`` (hub weights) or ``pretrained_file`` (local weights,
  safetensors or a ``weights_only`` torch file, vetted before timm loads them),
  e.g. ``timm:vit_small_patch14_dinov2`` with ``teacher_args: {img_size: 224}`` (the seed's DINOv2
  ViT-S/14); normalisation from its ``pretrained_cfg``, input size from its patch embedding.

A missing, damaged or unsafe teacher file and weights that do not fit the teacher model are each one
:class:`~imgcls.errors.CheckpointError` line naming the file (and the first mis-shaped key with both shapes).

:class:`FrozenTeacher` is deliberately *not* an ``nn.Module``: it cannot become a submodule of the
student or of the objective, so it stays outside DDP, EMA/SWA copies, ``state_dict`` and
checkpoints. Its parameters have ``requires_grad=False``, it is kept in eval mode (re-asserted on
every call) and runs under ``torch.no_grad()``.

Input: the batch in **unit range** (after augmentation, before the student's normalisation).
``normalization: own`` (default) resizes to the teacher's input size, adapts channels (grey →
RGB by repetition, RGB → grey by the mean) and normalises with the teacher's mean/std.
``normalization: student`` reproduces the seed: the teacher gets the student-normalised tensor
(resized), e.g. CIFAR-normalised images fed to DINOv2 (pitfall §5.9.5).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.config import DistillConfig
from imgcls.data.preprocess import invert_images
from imgcls.errors import CheckpointError, ConfigError, DataError
from imgcls.runtime import checkpoint as ckpt_io
from imgcls.runtime.timm_weights import checked_timm_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenTeacher:
    """A frozen model with its own input convention; :meth:`logits` and :meth:`tokens` take unit-range images."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: list[float] | tuple[float, ...],
        std: list[float] | tuple[float, ...],
        input_size: int,
        channels: int,
        kind: str,
        name: str,
        normalization: str = "own",
        class_names: list[str] | None = None,
        view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if normalization not in ("own", "student"):
            raise ConfigError(f"distill.teacher_normalization must be own or student, got '{normalization}'")
        self.view = view  # the student's unit images as the teacher was trained to see them (data.invert)
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.input_size, self.channels = int(input_size), int(channels)
        self.kind, self.name, self.normalization = kind, name, normalization
        self.class_names = class_names
        self.device = torch.device("cpu")

    def parameters(self):
        return self.model.parameters()

    def to(self, device: torch.device | str) -> FrozenTeacher:
        device = torch.device(device)
        if device != self.device:
            self.model.to(device)
            self.mean, self.std = self.mean.to(device), self.std.to(device)
            self.device = device
        return self

    def prepare(self, unit_images: torch.Tensor, student_images: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's input from unit-range images (or, with ``normalization: student``, the student's tensor)."""
        if self.normalization == "student":
            if student_images is None:
                raise ValueError("teacher_normalization=student needs the student-normalised images")
            x = student_images.float()
        else:
            x = unit_images.float()
            if self.view is not None:
                x = self.view(x)
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise DataError(
                    f"the teacher expects {self.channels}-channel images, the data has {x.shape[1]}"
                )
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            down = x.shape[-1] > self.input_size
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=down,
            )
        if self.normalization == "own":
            x = (x - self.mean) / self.std
        return x.contiguous()

    def _ready(self, x: torch.Tensor) -> None:
        self.to(x.device)
        if self.model.training:
            self.model.eval()

    @torch.no_grad()
    def logits(self, unit_images: torch.Tensor, student_images: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prepare(unit_images, student_images)
        self._ready(x)
        if self.kind == "imgcls":
            head = self.model.head
            if getattr(head, "output_space", "classes") != "classes":
                raise ConfigError(
                    "logit distillation needs a teacher whose head predicts classes (not taxonomy nodes)"
                )
            return self.model(x).logits.float()
        return self.model(x).float()

    @torch.no_grad()
    def tokens(
        self,
        unit_images: torch.Tensor,
        layers: list[int],
        norm: bool = True,
        student_images: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        """Patch tokens ``(B, N, D)`` of ``layers`` (prefix tokens dropped), LayerNorm'ed when ``norm``.

        timm ViTs: ``forward_intermediates(norm=norm)`` (the model's final LayerNorm, as DINOv2's
        ``get_intermediate_layers``). imgcls backbones: ``forward_tokens`` then the backbone's final
        ``norm`` when it has a LayerNorm, else a parameter-free LayerNorm over channels (CNN maps).
        """
        x = self.prepare(unit_images, student_images)
        self._ready(x)
        if self.kind == "timm":
            if not hasattr(self.model, "forward_intermediates"):
                raise ConfigError(
                    f"timm teacher {self.name} has no intermediate tokens; use distill.logits only"
                )
            outs = self.model.forward_intermediates(
                x, indices=list(layers), norm=norm, output_fmt="NLC", intermediates_only=True
            )
            return {layer: t.float() for layer, t in zip(layers, outs, strict=True)}
        backbone = self.model.backbone
        inner = getattr(backbone, "model", None)
        if inner is not None and hasattr(
            inner, "forward_intermediates"
        ):  # a timm backbone inside an imgcls run
            outs = inner.forward_intermediates(
                x, indices=list(layers), norm=norm, output_fmt="NLC", intermediates_only=True
            )
            return {layer: t.float() for layer, t in zip(layers, outs, strict=True)}
        if not hasattr(backbone, "forward_tokens"):
            raise ConfigError(
                f"the teacher's backbone {type(backbone).__name__} has no forward_tokens; use distill.logits only"
            )
        tokens = backbone.forward_tokens(x, list(layers))
        final = getattr(backbone, "norm", None)
        out = {}
        for layer in layers:
            t = tokens[layer].float()
            if norm:
                t = (
                    final(t)
                    if isinstance(final, nn.LayerNorm) and final.normalized_shape[-1] == t.shape[-1]
                    else F.layer_norm(t, t.shape[-1:])
                )
            out[layer] = t
        return out

    def token_dims(self, layers: list[int]) -> dict[int, int]:
        """Width of the teacher's tokens at each of ``layers`` (one dummy forward)."""
        dummy = torch.zeros(1, self.channels, self.input_size, self.input_size, device=self.device)
        tokens = self.tokens(dummy, sorted(set(layers)), norm=False, student_images=dummy)
        return {layer: int(tokens[layer].shape[-1]) for layer in layers}

    def describe(self) -> dict[str, Any]:
        return {
            "teacher": self.name,
            "kind": self.kind,
            "input_size": self.input_size,
            "channels": self.channels,
            "normalization": self.normalization,
            "mean": [float(v) for v in self.mean.flatten()],
            "std": [float(v) for v in self.std.flatten()],
        }


def latest_run(path: Path) -> Path:
    """``runs/<name>`` (a folder of timestamped runs, no ``config.yaml`` itself) → its newest run; else ``path``."""
    if path.is_dir() and not (path / "config.yaml").is_file():
        runs = sorted(
            p for p in path.iterdir() if (p / "config.yaml").is_file() and (p / "checkpoints").is_dir()
        )
        if runs:
            return runs[-1]
    return path


def teacher_view(
    student_invert: str, teacher_invert: str, normalization: str, source: str
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What turns the student's unit images (inverted by the student's ``data.invert``) into what an imgcls teacher
    trained with ``teacher_invert`` saw; None when they agree. A student inverting by ``auto`` (per image) cannot
    be undone, nor can images the teacher takes in the student's normalisation: those are one line instead."""
    if student_invert == teacher_invert:
        return None
    if student_invert == "auto" or normalization == "student":
        raise ConfigError(
            f"the teacher '{source}' was trained with data.invert={teacher_invert}, the student uses "
            f"data.invert={student_invert}; train both with the same data.invert"
        )

    def view(x: torch.Tensor) -> torch.Tensor:
        return invert_images(1.0 - x if student_invert == "always" else x, teacher_invert)

    return view


def _imgcls_teacher(
    source: str, cfg: DistillConfig, class_names: list[str] | None, student_invert: str
) -> FrozenTeacher:
    from imgcls.runs import load_run_checkpoint, model_from_checkpoint

    what = "distill.teacher checkpoint"
    path = latest_run(Path(source))
    if path.is_dir():
        ckpt, which = load_run_checkpoint(path, cfg.teacher_checkpoint, what=what)
    elif path.is_file():
        ckpt, which = ckpt_io.load_checkpoint(path, what=what), cfg.teacher_checkpoint or "best"
    else:
        raise CheckpointError(
            f"distill.teacher '{source}' is neither a run directory nor a checkpoint; train the teacher first "
            "or use timm:<model name>"
        )
    try:
        model, _, _ = model_from_checkpoint(ckpt, which)
    except CheckpointError as exc:
        raise CheckpointError(f"distill.teacher '{source}': {exc}") from None
    pre = ckpt["preprocess"]
    teacher_classes = list(ckpt["class_names"])
    if class_names is not None and cfg.logits != "none" and teacher_classes != list(class_names):
        raise ConfigError(
            f"the teacher '{source}' was trained on classes {teacher_classes[:4]}…, the student's data has "
            f"{list(class_names)[:4]}…; logit distillation needs the same classes in the same order"
        )
    return FrozenTeacher(
        model,
        mean=pre["mean"],
        std=pre["std"],
        input_size=cfg.teacher_input_size or int(pre["image_size"]),
        channels=int(pre["channels"]),
        kind="imgcls",
        name=str(source),
        normalization=cfg.teacher_normalization,
        class_names=teacher_classes,
        view=teacher_view(student_invert, str(pre.get("invert", "none")), cfg.teacher_normalization, source),
    )


def _pretrained_classes(timm, name: str) -> int | None:
    """The class count of a timm model's default pretrained classifier (0: none; None: not known)."""
    pcfg = timm.models.get_pretrained_cfg(name)
    return None if pcfg is None or pcfg.num_classes is None else int(pcfg.num_classes)


def _timm_teacher(name: str, cfg: DistillConfig, num_classes: int | None) -> FrozenTeacher:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"distill.teacher: timm has no model '{name}'")
    classes = cfg.teacher_num_classes
    if classes is None:
        classes = (num_classes or 0) if cfg.logits != "none" else 0
    if cfg.logits != "none" and classes == 0:
        raise ConfigError(
            "logit distillation from a timm teacher needs its classifier: set distill.teacher_num_classes"
        )
    overlay = None
    pretrained = cfg.pretrained
    if cfg.pretrained_file:
        ckpt_io.check_plain_tensor_file(cfg.pretrained_file, "distill.pretrained_file")
        overlay, pretrained = {"file": str(cfg.pretrained_file)}, True
        if classes > 0:
            # timm drops a file's classifier and loads the rest non-strictly whenever num_classes differs from
            # the model's default (1000), leaving the head a logit teacher needs random without a word: declaring
            # the file's class count makes it load the classifier strictly (a missing or mis-shaped one is an error)
            overlay["num_classes"] = classes
    elif pretrained and classes > 0:
        trained = _pretrained_classes(timm, name)
        if trained is not None and trained != classes:
            raise ConfigError(
                f"teacher timm:{name}'s pretrained weights have a classifier for {trained} classes (0: none), but "
                f"logit distillation needs one for {classes} (distill.teacher_num_classes, default: the data's "
                "classes), and timm would start it untrained: use a teacher fine-tuned on these classes (an imgcls "
                "run, or its weights as distill.pretrained_file), or distill features only (distill.logits=none)"
            )
    try:
        with checked_timm_weights_file(
            cfg.pretrained_file,
            "distill.pretrained_file",
            f"teacher timm:{name} with distill.teacher_args {cfg.teacher_args}",
            "use the weights of that model, or change distill.teacher / teacher_args / teacher_num_classes to match them",
        ):
            model = timm.create_model(
                name,
                pretrained=pretrained,
                num_classes=classes,
                pretrained_cfg_overlay=overlay,
                **cfg.teacher_args,
            )
    except TypeError as exc:
        raise ConfigError(f"bad distill.teacher_args for timm:{name}: {exc}") from None
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained and not cfg.pretrained_file:
            raise DataError(
                f"could not fetch pretrained weights for teacher timm:{name} ({type(exc).__name__}); offline, download "
                "them elsewhere and set distill.pretrained_file=<file>"
            ) from None
        raise
    pcfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    patch = getattr(model, "patch_embed", None)
    size = cfg.teacher_input_size
    if size is None:
        img = getattr(patch, "img_size", None)
        size = int(img[0]) if img is not None else int(pcfg.get("input_size", (3, 224, 224))[-1])
    chans = int(cfg.teacher_args.get("in_chans", pcfg.get("input_size", (3,))[0]))
    return FrozenTeacher(
        model,
        mean=pcfg.get("mean", IMAGENET_MEAN)[:chans] if chans > 1 else pcfg.get("mean", IMAGENET_MEAN)[:1],
        std=pcfg.get("std", IMAGENET_STD)[:chans] if chans > 1 else pcfg.get("std", IMAGENET_STD)[:1],
        input_size=size,
        channels=chans,
        kind="timm",
        name=f"timm:{name}",
        normalization=cfg.teacher_normalization,
    )


def load_teacher(
    cfg: DistillConfig,
    class_names: list[str] | None = None,
    device: torch.device | str = "cpu",
    student_invert: str = "none",
) -> FrozenTeacher:
    """The frozen teacher ``cfg.teacher`` names (see the module docstring); ``student_invert`` is the student's
    ``data.invert``, which an imgcls teacher trained with another one is shown undone."""
    if not cfg.teacher:
        raise ConfigError("distill.teacher is not set")
    if cfg.teacher.startswith("timm:"):
        teacher = _timm_teacher(
            cfg.teacher.removeprefix("timm:"), cfg, len(class_names) if class_names else None
        )
    else:
        teacher = _imgcls_teacher(cfg.teacher, cfg, class_names, student_invert)
    return teacher.to(device)
