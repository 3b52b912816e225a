"""The distillation objective of seed 004 (SPEC §5.4): a frozen teacher next to the student, logit
knowledge distillation (hard/soft, α schedule with warm-up; DeiT's distillation token) and
CST-style token distillation (L_tok on projected tokens, L_rel on batch relations, trainable
projectors). The public model of this shape is timm's ``timm/task/`` (``LogitDistillationTask``,
``TokenDistillationTask``); here it is an :class:`~imgcls.engine.objective.Objective`.

Terms (unweighted; the trainer applies :meth:`term_weights` and the stage's ``loss_weights``):

* the head's own terms (``ce``, …), with ``ce`` weighted ``1 − α`` under logit KD;
* ``kd`` — hard (``CE(s, argmax t)``) or soft (``τ²·KL``) distillation, weight ``α`` (0 during
  ``warmup_epochs``); on the DIST classifier of a two-token (``deit_dist``) student, whose label
  term ``ce_dist`` it replaces, else on the student's logits;
* ``tok`` — mean over layer pairs of ``1 − cos(P_s(z_s), P_t(z_t))``, weight ``lambda_tok``;
  student tokens are the pre-norm patch tokens of ``student_layers`` and teacher tokens those of
  ``teacher_layers`` (prefix tokens dropped, LayerNorm'ed, grid bilinearly resized to the student's);
* ``rel`` — KL between relation distributions of the student's final-norm patch tokens and the
  teacher's last listed layer, weight ``lambda_rel`` from ``relation_warmup_epochs`` on (0 before).

The student's tokens are captured with forward hooks *during the ordinary forward through the
(possibly DDP-wrapped) model*, so gradients are all-reduced as usual (the seed called the
unwrapped module and bypassed DDP, pitfall §5.9.3); the projectors live outside the model, so
under DDP their gradients are averaged over ranks by hooks registered here. The teacher is a
:class:`~imgcls.teacher.FrozenTeacher` held as a plain attribute (not a submodule): it is in
neither ``state_dict`` nor ``parameters()``; the projectors are (→ their own optimiser group,
checkpoint key ``objective``, restored on ``--resume``).

``epoch_metrics`` logs per epoch: ``distill_alpha``, ``distill_rel_weight``, the teacher–student
agreement on training and validation batches, and the variance of projected student and teacher
tokens (a collapse — both projectors mapping to a constant so that L_tok → 0 — shows as variance
→ 0, pitfall §5.9.8).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from imgcls.config import DistillConfig, ExperimentConfig
from imgcls.engine.objective import OBJECTIVE_FACTORIES, Objective, ObjectiveResult
from imgcls.errors import ConfigError
from imgcls.losses.distillation import (
    TokenProjector,
    alpha_at,
    hard_distillation,
    relation_loss,
    resize_token_grid,
    soft_distillation,
    token_cosine_loss,
)
from imgcls.models.heads.base import Head, HeadOutput
from imgcls.models.heads.two_token import DIST_LABEL_TERM, TwoTokenHead
from imgcls.runtime.batch import Batch
from imgcls.teacher import FrozenTeacher, load_teacher


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, nn.Module):
            return model
        model = inner


class TokenTap:
    """Forward hooks capturing a token backbone's block outputs and final-norm output during a forward.

    Works for backbones exposing ``blocks`` (a sequence of transformer blocks), ``norm`` and
    ``num_prefix_tokens`` — the ``deit`` backbone and timm ViTs (inside ``timm:`` backbones).
    """

    def __init__(self, classifier: nn.Module, layers: list[int]) -> None:
        backbone = unwrap(classifier).backbone
        net = backbone if hasattr(backbone, "blocks") else getattr(backbone, "model", None)
        if net is None or not hasattr(net, "blocks") or not hasattr(net, "norm"):
            raise ConfigError(
                f"token distillation needs a token student (backbone deit or a timm ViT); {type(backbone).__name__} has no blocks"
            )
        self.blocks, self.norm = list(net.blocks), net.norm
        self.prefix = int(getattr(net, "num_prefix_tokens", 1))
        depth = len(self.blocks)
        self.layers = []
        for layer in layers:
            if not -depth <= layer < depth:
                raise ConfigError(
                    f"distill.tokens.student_layers: the student has blocks 0..{depth - 1}, not {layer}"
                )
            self.layers.append(layer % depth)
        self.captured: dict[int | str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> TokenTap:
        self.captured = {}
        for layer in set(self.layers):
            self._handles.append(self.blocks[layer].register_forward_hook(self._store(layer)))
        self._handles.append(self.norm.register_forward_hook(self._store("norm")))
        return self

    def _store(self, key: int | str) -> Callable:
        def hook(_module, _inputs, output):
            self.captured[key] = output

        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def patch_tokens(self, key: int | str) -> torch.Tensor:
        if key not in self.captured:
            raise RuntimeError(f"the student's forward did not run block {key}")
        return self.captured[key][:, self.prefix :]

    def token_dim(self) -> int:
        return int(self.norm.normalized_shape[-1])


class DistillationObjective(Objective):
    def __init__(self, cfg: DistillConfig, teacher: FrozenTeacher, student: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = teacher  # a plain object, not an nn.Module: outside state_dict, parameters, DDP, EMA
        head = unwrap(student).head
        self.two_token = isinstance(head, TwoTokenHead)
        tok = cfg.tokens
        self.student_proj = nn.ModuleList()
        self.teacher_proj = nn.ModuleList()
        if tok is not None:
            tap = TokenTap(student, tok.student_layers)
            dims = teacher.token_dims(tok.teacher_layers)
            for t_layer in tok.teacher_layers:
                self.student_proj.append(
                    TokenProjector(tap.token_dim(), tok.projector_hidden, tok.projector_dim)
                )
                self.teacher_proj.append(
                    TokenProjector(dims[t_layer], tok.projector_hidden, tok.projector_dim)
                )
        self.alpha = 0.0
        self.rel_weight = 0.0
        self._stats: dict[str, list[float]] = {}
        self._grad_hooks_done = False

    # ------------------------------------------------------------------ schedule
    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        c = self.cfg
        if c.logits != "none":
            self.alpha = alpha_at(
                epoch, total_epochs, c.alpha_schedule, c.alpha, c.alpha_start, c.alpha_end, c.warmup_epochs
            )
        if c.tokens is not None:
            self.rel_weight = c.tokens.lambda_rel if epoch >= c.tokens.relation_warmup_epochs else 0.0
        self._stats = {}

    def term_weights(self) -> dict[str, float]:
        weights: dict[str, float] = {}
        if self.cfg.logits != "none":
            weights.update(ce=1.0 - self.alpha, kd=self.alpha)
        if self.cfg.tokens is not None:
            weights.update(tok=self.cfg.tokens.lambda_tok, rel=self.rel_weight)
        return weights

    def epoch_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.cfg.logits != "none":
            out["distill_alpha"] = self.alpha
        if self.cfg.tokens is not None:
            out["distill_rel_weight"] = self.rel_weight
        for key, values in sorted(self._stats.items()):
            out[key] = sum(values) / max(1, len(values))
        return out

    def _note(self, key: str, value: torch.Tensor) -> None:
        self._stats.setdefault(f"{'train' if self.training else 'val'}_{key}", []).append(float(value))

    # ------------------------------------------------------------------ DDP
    def _sync_projector_grads(self) -> None:
        """Average projector gradients over ranks (they are outside the DDP-wrapped model)."""
        self._grad_hooks_done = True
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        if world == 1:
            return

        def average(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            torch.distributed.all_reduce(grad)
            return grad / world

        for p in self.parameters():
            if p.requires_grad:
                p.register_hook(average)

    # ------------------------------------------------------------------ forward
    def forward(self, model: Callable[..., HeadOutput], head: Head, batch: Batch) -> ObjectiveResult:
        if batch.unit_images is None:
            raise ValueError(
                "the distillation objective needs batch.unit_images (unit-range images before normalisation)"
            )
        if not self._grad_hooks_done:
            self._sync_projector_grads()
        tok = self.cfg.tokens
        tap = TokenTap(model, tok.student_layers) if tok is not None else None
        if tap is not None:
            with tap:
                output = model(batch.images, batch.targets)
        else:
            output = model(batch.images, batch.targets)
        terms = dict(head.loss(output, batch))
        if self.cfg.logits != "none":
            terms.update(self._logit_terms(head, output, batch, terms))
        if tap is not None:
            terms.update(self._token_terms(tap, batch))
        return ObjectiveResult(terms, output)

    def _logit_terms(
        self, head: Head, output: HeadOutput, batch: Batch, terms: dict
    ) -> dict[str, torch.Tensor]:
        teacher_logits = self.teacher.logits(batch.unit_images, batch.images)
        if teacher_logits.shape[-1] != output.logits.shape[-1]:
            raise ConfigError(
                f"the teacher predicts {teacher_logits.shape[-1]} classes, the student {output.logits.shape[-1]}; "
                "logit distillation needs the same classes"
            )
        if self.two_token:
            student_logits = output.extras["dist_logits"]
            terms.pop(DIST_LABEL_TERM, None)  # the DIST classifier learns from the teacher instead
        else:
            student_logits = output.logits
        if self.cfg.logits == "hard":
            kd = hard_distillation(student_logits, teacher_logits)
        else:
            kd = soft_distillation(student_logits, teacher_logits, self.cfg.temperature)
        with torch.no_grad():
            agree = (head.predict(output).argmax(-1) == teacher_logits.argmax(-1)).float().mean()
            self._note("teacher_agreement", agree)
        return {"kd": kd}

    def _token_terms(self, tap: TokenTap, batch: Batch) -> dict[str, torch.Tensor]:
        tok = self.cfg.tokens
        wanted = sorted(set(tok.teacher_layers))
        teacher_tokens = self.teacher.tokens(
            batch.unit_images, wanted, norm=tok.teacher_token_norm, student_images=batch.images
        )
        losses = []
        for i, (s_layer, t_layer) in enumerate(zip(tap.layers, tok.teacher_layers, strict=True)):
            student = tap.patch_tokens(s_layer)
            teacher = resize_token_grid(teacher_tokens[t_layer], student.shape[1]).to(student.dtype)
            ps, pt = self.student_proj[i](student), self.teacher_proj[i](teacher)
            losses.append(token_cosine_loss(ps, pt))
            if i == len(tap.layers) - 1:
                with torch.no_grad():
                    self._note("proj_var_student", ps.float().var(dim=(0, 1)).mean())
                    self._note("proj_var_teacher", pt.float().var(dim=(0, 1)).mean())
        student_final = tap.patch_tokens("norm")
        teacher_last = teacher_tokens[tok.teacher_layers[-1]]
        if not tok.relation_pooled:
            teacher_last = resize_token_grid(teacher_last, student_final.shape[1])
        rel = relation_loss(student_final, teacher_last, tok.relation_temperature, pooled=tok.relation_pooled)
        return {"tok": torch.stack(losses).mean(), "rel": rel}


def distillation_factory(
    cfg: ExperimentConfig, model: nn.Module, device=None, data=None, **_
) -> Objective | None:
    """``build_objective`` hook: a :class:`DistillationObjective` when ``distill.teacher`` is set."""
    if not cfg.distill.teacher:
        return None
    class_names = list(data.class_names) if data is not None else None
    teacher = load_teacher(cfg.distill, class_names, device or "cpu", cfg.data.invert)
    return DistillationObjective(cfg.distill, teacher, model)


OBJECTIVE_FACTORIES.append(distillation_factory)
