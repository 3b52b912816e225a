"""Prediction: batched over a loader (probabilities, logits, embeddings and targets, in data order, gathered
across DDP ranks without padding), with optional test-time augmentation, and :class:`Predictor`, a trained
model ready for inference on image files, PIL images or tensors (``imgcls.load(run_dir)``, ``imgcls predict``)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from imgcls.data.decode import _BAD_IMAGE_ERRORS, decode_image
from imgcls.data.images import convert_channels, resize_uint8
from imgcls.data.preprocess import Preprocess
from imgcls.errors import DataError, UserError
from imgcls.evaluation.hierarchical import threshold_decode
from imgcls.runtime.distributed import DistInfo, all_gather_cat
from imgcls.runtime.precision import autocast as device_autocast


@dataclass
class Predictions:
    probs: torch.Tensor  # (N, C) class probabilities
    logits: torch.Tensor  # (N, K) raw head outputs
    embeddings: torch.Tensor  # (N, E) head embeddings
    targets: torch.Tensor  # (N,)
    index: torch.Tensor  # (N,) positions in the evaluated set
    node_probs: torch.Tensor | None = None  # (N, nodes) for heads predicting taxonomy nodes
    features: torch.Tensor | None = None  # (N, D) backbone features (when asked for)
    features_name: str = "backbone features"  # what ``features`` holds (a refining head's input embeddings)


def tta_views(images: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Up to ``n`` deterministic views: identity, horizontal flip, then 1-pixel-shifted crops of both."""
    views = [images, images.flip(-1)]
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        shifted = torch.roll(images, shifts=(dy, dx), dims=(-2, -1))
        views += [shifted, shifted.flip(-1)]
    return views[: max(1, n)]


@dataclass
class ViewPrediction:
    probs: torch.Tensor  # (B, C) class probabilities averaged over the views
    output: object  # the head output of the first (untransformed) view
    node_probs: torch.Tensor | None  # (B, nodes) averaged over the views, for node-space heads
    features: torch.Tensor | None  # (B, D) backbone features of the first view (when asked for)


@torch.no_grad()
def predict_views(
    model: nn.Module, images: torch.Tensor, prep: Preprocess, autocast: Callable, tta: int = 1,
    transforms: list[Callable[[torch.Tensor], torch.Tensor]] | None = None, with_features: bool = False,
) -> ViewPrediction:
    """Class (and, for node-space heads, taxonomy-node) probabilities of one batch of uint8 images,
    averaged over TTA views. Backbone features are captured by a hook on the head's input, so asking
    for them costs no second forward pass."""
    unit = prep.to_unit(images)
    views = [t(unit) for t in transforms] if transforms is not None else tta_views(unit, tta)
    node_head = hasattr(model.head, "predict_nodes")
    captured: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0])) if with_features else None
    probs = nodes = first = None
    try:
        for view in views:
            with autocast():
                out = model(prep.normalize(view))
            p = model.head.predict(out).float()
            probs = p if probs is None else probs + p
            if node_head:
                q = model.head.predict_nodes(out).float()
                nodes = q if nodes is None else nodes + q
            first = first or out
    finally:
        if hook is not None:
            hook.remove()
    return ViewPrediction(probs / len(views), first, None if nodes is None else nodes / len(views),
                          captured[0] if captured else None)


def predict_tensor(
    model: nn.Module, images: torch.Tensor, prep: Preprocess, autocast: Callable, tta: int = 1,
    transforms: list[Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, object]:
    """Class probabilities of one batch of uint8 images, averaged over TTA views; also the plain output."""
    pred = predict_views(model, images, prep, autocast, tta, transforms)
    return pred.probs, pred.output


@torch.no_grad()
def predict_loader(
    model: nn.Module, loader, prep: Preprocess, device: torch.device, autocast: Callable,
    dist: DistInfo = DistInfo(), tta: int = 1, with_features: bool = False,
) -> Predictions:
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("probs", "logits", "embeddings", "targets", "index", "nodes", "features")}
    features_name = "backbone features"
    for batch in loader:
        batch = batch.to(device)
        pred = predict_views(model, batch.images, prep, autocast, tta, with_features=with_features)
        out = pred.output
        parts["probs"].append(pred.probs.cpu())
        parts["logits"].append(out.logits.float().cpu())
        parts["embeddings"].append(out.embeddings.float().cpu())
        parts["targets"].append(batch.targets.cpu())
        parts["index"].append(batch.index.cpu())
        if pred.node_probs is not None:
            parts["nodes"].append(pred.node_probs.cpu())
        if with_features:
            unrefined = out.extras.get("unrefined") if out.extras else None
            if unrefined is not None:
                features_name = "unrefined embeddings"
            parts["features"].append((unrefined if unrefined is not None else pred.features).float().cpu())
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
    if dist.enabled:
        cat = {k: None if v is None else all_gather_cat(v.to(device), dist).cpu() for k, v in cat.items()}
    order = torch.argsort(cat["index"])
    pick = lambda t: None if t is None else t[order]  # noqa: E731
    return Predictions(
        probs=pick(cat["probs"]), logits=pick(cat["logits"]), embeddings=pick(cat["embeddings"]),
        targets=pick(cat["targets"]), index=pick(cat["index"]), node_probs=pick(cat["nodes"]), features=pick(cat["features"]),
        features_name=features_name,
    )


class Predictor:
    """A trained model ready for inference on image files, PIL images or uint8 tensors."""

    def __init__(self, model: nn.Module, preprocess: dict[str, Any], class_names: list[str], taxonomy=None, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta, self.class_names, self.taxonomy = preprocess, class_names, taxonomy
        self.prep = Preprocess.from_meta(preprocess, self.device)

    def load_images(self, images: list[Any]) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` at the model's input size from files, PIL images or uint8 tensors."""
        size, channels = int(self.meta["image_size"]), int(self.meta["channels"])
        out = []
        for item in images:
            if isinstance(item, torch.Tensor):
                t = item if item.ndim == 4 else item[None]
                out.append(resize_uint8(convert_channels(t.to(torch.uint8), channels), size))
                continue
            if isinstance(item, Image.Image):
                item.save(buf := io.BytesIO(), format="PNG")
                buf.seek(0)
                item = buf
            try:
                out.append(decode_image(item, size, channels)[None])
            except FileNotFoundError:
                raise DataError(f"image '{item}' does not exist") from None
            except _BAD_IMAGE_ERRORS as exc:
                raise DataError(f"cannot read image '{item}': {exc}") from None
        return torch.cat(out)

    @torch.no_grad()
    def _predict_views(self, images: list[Any], tta: int) -> ViewPrediction:
        batch = self.load_images(images).to(self.device)
        return predict_views(self.model, batch, self.prep, lambda: device_autocast(self.device, None), tta)

    def predict_proba(self, images: list[Any], tta: int = 1) -> torch.Tensor:
        return self._predict_views(images, tta).probs.cpu()

    def predict(self, images: list[Any], top_k: int = 5, tta: int = 1, threshold: float | None = None) -> list[dict[str, Any]]:
        """Top-k classes per image; with ``threshold`` τ also the deepest taxonomy node on a consistent
        root path whose probability ≥ τ. Node probabilities come from the head itself for node-space
        heads (``predict_nodes``: SphereMulti, SphereMultiHier, per-level heads), else the class
        probabilities summed up the tree."""
        views = self._predict_views(images, tta)
        probs = views.probs.cpu()
        node_probs = None if views.node_probs is None else views.node_probs.cpu()
        k = min(top_k, probs.shape[1])
        results = []
        for i, p in enumerate(probs):
            values, idx = p.topk(k)
            row: dict[str, Any] = {
                "image": str(images[i]) if isinstance(images[i], (str, Path)) else f"#{i}",
                "top_k": [{"class": self.class_names[j], "probability": float(v)} for v, j in zip(values, idx.tolist(), strict=True)],
            }
            if threshold is not None:
                row["hierarchy"] = self.hierarchical_path(p[None], threshold, None if node_probs is None else node_probs[i : i + 1])[0]
            results.append(row)
        return results

    def explain(self, images: list[Any], out_dir: str | Path) -> list[dict[str, Any]]:
        """Grad-CAM of the predicted class and the first convolution's feature maps for each image, written
        to ``out_dir`` as ``<image stem>_gradcam.png`` and ``<image stem>_feature_maps.png``."""
        from imgcls.evaluation.explain import explain_image, safe_stem

        batch = self.load_images(images)
        stems = [safe_stem(str(item)) if isinstance(item, (str, Path)) else f"image_{i}" for i, item in enumerate(images)]
        return [explain_image(self.model, self.prep, batch[i : i + 1], self.class_names, Path(out_dir), stem)
                for i, stem in enumerate(stems)]

    def hierarchical_path(self, class_probs: torch.Tensor, threshold: float,
                          node_probs: torch.Tensor | None = None) -> list[dict[str, Any]]:
        if self.taxonomy is None:
            raise UserError("--threshold needs a model trained with a taxonomy (data.taxonomy)")
        if node_probs is None:
            node_probs = self.taxonomy.class_to_node_probs(class_probs)
        nodes = threshold_decode(node_probs, self.taxonomy, threshold)
        return [{"path": self.taxonomy.path_names(int(n)), "probability": float(node_probs[i, int(n)]) if int(n) >= 0 else 1.0}
                for i, n in enumerate(nodes)]
