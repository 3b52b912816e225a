"""Prediction: batched over a loader (probabilities, logits, embeddings and targets, in data order, gathered
across DDP ranks without padding), with optional test-time augmentation and temperature scaling (``temperature``
≠ 1 divides the head's logits before ``predict``; the probabilities at temperature 1 are kept beside them for
before/after reports), and :class:`Predictor`, a trained model ready for inference on image files, PIL images or
tensors (``imgcls.load(run_dir)``, ``imgcls predict``)."""

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
    temperature: float = 1.0  # the temperature ``probs`` / ``node_probs`` were computed at
    uncalibrated_probs: torch.Tensor | None = None  # (N, C) at temperature 1, when temperature ≠ 1
    uncalibrated_node_probs: torch.Tensor | None = None  # (N, nodes) at temperature 1, for node-space heads


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
    uncalibrated_probs: torch.Tensor | None = None  # (B, C) at temperature 1, when temperature ≠ 1
    uncalibrated_node_probs: torch.Tensor | None = None


@torch.no_grad()
def predict_views(
    model: nn.Module,
    images: torch.Tensor,
    prep: Preprocess,
    autocast: Callable,
    tta: int = 1,
    transforms: list[Callable[[torch.Tensor], torch.Tensor]] | None = None,
    with_features: bool = False,
    temperature: float = 1.0,
) -> ViewPrediction:
    """Class (and, for node-space heads, taxonomy-node) probabilities of one batch of uint8 images,
    averaged over TTA views, at ``temperature`` (``head.scale_logits`` per view). Backbone features are
    captured by a hook on the head's input, so asking for them costs no second forward pass."""
    unit = prep.to_unit(images)
    views = [t(unit) for t in transforms] if transforms is not None else tta_views(unit, tta)
    node_head = hasattr(model.head, "predict_nodes")
    captured: list[torch.Tensor] = []
    hook = (
        model.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        if with_features
        else None
    )
    scaled = temperature != 1.0
    probs = nodes = raw_probs = raw_nodes = first = None
    add = lambda total, x: x if total is None else total + x  # noqa: E731
    try:
        for view in views:
            with autocast():
                out = model(prep.normalize(view))
            calibrated = model.head.scale_logits(out, temperature) if scaled else out
            probs = add(probs, model.head.predict(calibrated).float())
            if node_head:
                nodes = add(nodes, model.head.predict_nodes(calibrated).float())
            if scaled:
                raw_probs = add(raw_probs, model.head.predict(out).float())
                if node_head:
                    raw_nodes = add(raw_nodes, model.head.predict_nodes(out).float())
            first = first or out
    finally:
        if hook is not None:
            hook.remove()
    mean = lambda total: None if total is None else total / len(views)  # noqa: E731
    return ViewPrediction(
        mean(probs), first, mean(nodes), captured[0] if captured else None, mean(raw_probs), mean(raw_nodes)
    )


def predict_tensor(
    model: nn.Module,
    images: torch.Tensor,
    prep: Preprocess,
    autocast: Callable,
    tta: int = 1,
    transforms: list[Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, object]:
    """Class probabilities of one batch of uint8 images, averaged over TTA views; also the plain output."""
    pred = predict_views(model, images, prep, autocast, tta, transforms)
    return pred.probs, pred.output


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader,
    prep: Preprocess,
    device: torch.device,
    autocast: Callable,
    dist: DistInfo = DistInfo(),
    tta: int = 1,
    with_features: bool = False,
    temperature: float = 1.0,
) -> Predictions:
    model.eval()
    keys = (
        "probs",
        "logits",
        "embeddings",
        "targets",
        "index",
        "nodes",
        "features",
        "raw_probs",
        "raw_nodes",
    )
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    features_name = "backbone features"
    for batch in loader:
        batch = batch.to(device)
        pred = predict_views(
            model, batch.images, prep, autocast, tta, with_features=with_features, temperature=temperature
        )
        out = pred.output
        parts["probs"].append(pred.probs.cpu())
        if pred.uncalibrated_probs is not None:
            parts["raw_probs"].append(pred.uncalibrated_probs.cpu())
        if pred.uncalibrated_node_probs is not None:
            parts["raw_nodes"].append(pred.uncalibrated_node_probs.cpu())
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
        probs=pick(cat["probs"]),
        logits=pick(cat["logits"]),
        embeddings=pick(cat["embeddings"]),
        targets=pick(cat["targets"]),
        index=pick(cat["index"]),
        node_probs=pick(cat["nodes"]),
        features=pick(cat["features"]),
        features_name=features_name,
        temperature=float(temperature),
        uncalibrated_probs=pick(cat["raw_probs"]),
        uncalibrated_node_probs=pick(cat["raw_nodes"]),
    )


class Predictor:
    """A trained model ready for inference on image files, PIL images or uint8 tensors."""

    def __init__(
        self,
        model: nn.Module,
        preprocess: dict[str, Any],
        class_names: list[str],
        taxonomy=None,
        device: str = "cpu",
        temperature: float = 1.0,
    ) -> None:
        self.temperature = float(temperature)  # temperature scaling of the head's logits (1: none)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta, self.class_names, self.taxonomy = preprocess, class_names, taxonomy
        self.prep = Preprocess.from_meta(preprocess, self.device)

    def load_images(self, images: list[Any]) -> torch.Tensor:
        return torch.cat([self._load_one(item) for item in images])

    def _load_one(self, item: Any) -> torch.Tensor:
        """One image (path, PIL image or uint8 tensor) as a ``(1, C, S, S)`` uint8 tensor; DataError if unreadable."""
        size, channels = int(self.meta["image_size"]), int(self.meta["channels"])
        if isinstance(item, torch.Tensor):
            t = item if item.ndim == 4 else item[None]
            return resize_uint8(convert_channels(t.to(torch.uint8), channels), size)
        if isinstance(item, Image.Image):
            item.save(buf := io.BytesIO(), format="PNG")
            buf.seek(0)
            item = buf
        try:
            return decode_image(item, size, channels)[None]
        except FileNotFoundError:
            raise DataError(f"image '{item}' does not exist") from None
        except IsADirectoryError:
            raise DataError(f"'{item}' is a folder, not an image") from None
        except _BAD_IMAGE_ERRORS as exc:
            raise DataError(f"cannot read image '{item}': {' '.join(str(exc).split())}") from None

    @torch.no_grad()
    def _predict_views(
        self, images: list[Any] | torch.Tensor, tta: int, loaded: bool = False
    ) -> ViewPrediction:
        batch = (images if loaded else self.load_images(images)).to(self.device)
        return predict_views(
            self.model,
            batch,
            self.prep,
            lambda: device_autocast(self.device, None),
            tta,
            temperature=self.temperature,
        )

    def predict_proba(self, images: list[Any], tta: int = 1) -> torch.Tensor:
        return self._predict_views(images, tta).probs.cpu()

    def predict(
        self,
        images: list[Any],
        top_k: int = 5,
        tta: int = 1,
        threshold: float | None = None,
        on_error: str = "raise",
    ) -> list[dict[str, Any]]:
        """Top-k classes per image; with ``threshold`` τ also the deepest taxonomy node on a consistent
        root path whose probability ≥ τ. Node probabilities come from the head itself for node-space
        heads (``predict_nodes``: SphereMulti, SphereMultiHier, per-level heads), else the class
        probabilities summed up the tree.

        ``on_error="report"``: an unreadable image becomes a row ``{"image": ..., "error": "..."}`` in
        its place and every readable image is still predicted (``"raise"``: the first one raises DataError)."""
        if on_error not in ("raise", "report"):
            raise UserError(f"on_error must be 'raise' or 'report', not '{on_error}'")
        name = lambda i: str(images[i]) if isinstance(images[i], (str, Path)) else f"#{i}"  # noqa: E731
        rows: list[dict[str, Any]] = [{"image": name(i)} for i in range(len(images))]
        loaded, good = [], []
        for i, item in enumerate(images):
            try:
                loaded.append(self._load_one(item))
                good.append(i)
            except DataError as exc:
                if on_error == "raise":
                    raise
                rows[i]["error"] = str(exc)
        if not good:
            return rows
        views = self._predict_views(torch.cat(loaded), tta, loaded=True)
        probs = views.probs.cpu()
        node_probs = None if views.node_probs is None else views.node_probs.cpu()
        k = min(top_k, probs.shape[1])
        for j, (i, p) in enumerate(zip(good, probs, strict=True)):
            values, idx = p.topk(k)
            row = rows[i]
            row["top_k"] = [
                {"class": self.class_names[c], "probability": float(v)}
                for v, c in zip(values, idx.tolist(), strict=True)
            ]
            if threshold is not None:
                row["hierarchy"] = self.hierarchical_path(
                    p[None], threshold, None if node_probs is None else node_probs[j : j + 1]
                )[0]
        return rows

    def explain(self, images: list[Any], out_dir: str | Path) -> list[dict[str, Any]]:
        """Grad-CAM of the predicted class and the first convolution's feature maps for each image, written
        to ``out_dir`` as ``<name>_gradcam.png`` and ``<name>_feature_maps.png``; ``<name>`` is the image's
        path relative to the folder the images share (``cat/0.png`` → ``cat_0``), so names never clash
        (:func:`~imgcls.evaluation.explain.explain_stems`)."""
        from imgcls.evaluation.explain import explain_image, explain_stems

        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(
                f"explanation folder '{out_dir}' is a file; pass a folder for the figures (created if missing)"
            )
        batch = self.load_images(images)
        stems = explain_stems([str(item) if isinstance(item, (str, Path)) else None for item in images])
        return [
            explain_image(self.model, self.prep, batch[i : i + 1], self.class_names, out_dir, stem)
            for i, stem in enumerate(stems)
        ]

    def hierarchical_path(
        self, class_probs: torch.Tensor, threshold: float, node_probs: torch.Tensor | None = None
    ) -> list[dict[str, Any]]:
        if self.taxonomy is None:
            raise UserError("--threshold needs a model trained with a taxonomy (data.taxonomy)")
        if node_probs is None:
            node_probs = self.taxonomy.class_to_node_probs(class_probs)
        nodes = threshold_decode(node_probs, self.taxonomy, threshold)
        return [
            {
                "path": self.taxonomy.path_names(int(n)),
                "probability": float(node_probs[i, int(n)]) if int(n) >= 0 else 1.0,
            }
            for i, n in enumerate(nodes)
        ]
