"""Prediction: batched over a loader (probabilities, logits, embeddings and targets, in data order, gathered
across DDP ranks without padding), with optional test-time augmentation and temperature scaling (``temperature``
≠ 1 divides the head's logits before ``predict``; the probabilities at temperature 1 are kept beside them for
before/after reports), and :class:`Predictor`, a trained model ready for inference on image files, PIL images or
tensors (``imgcls.load(run_dir)``, ``imgcls predict``).

Inputs :class:`Predictor` accepts (docs/evaluation.md, "Python inputs"): ``images`` is a list of images, one image
(not iterated), or a 4-D batch ``(N, C, H, W)`` tensor / ``(N, H, W[, C])`` array (its N images). An image is a file
path, encoded file bytes or a binary file object, a PIL image, a channels-first tensor ``(C, H, W)``, ``(H, W)`` or
``(1, C, H, W)`` with C = 1 or 3, or a numpy array laid out as PIL gives it, ``(H, W)`` or ``(H, W, C)`` with
C = 1, 3 or 4 (read like ``Image.fromarray``). Values: uint8 0..255; other integer types 0..255; floating point in
[0, 1] (the torchvision/timm convention: scaled ×255 and rounded). Anything else (a float image in 0..255, NaN,
negative values, a batch inside the list, channels-last tensors) is a one-line :class:`DataError` naming the
image, so ``on_error="report"`` reports it in that image's row."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
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


#: the most test-time views :func:`tta_views` makes (identity, flip, then 4 one-pixel shifts of both)
MAX_TTA = 10


def check_predict_options(
    top_k: int = 5, tta: int = 1, threshold: float | None = None, on_error: str = "raise"
) -> None:
    """The limits ``imgcls predict`` puts on its options (``--top-k`` ≥ 1, ``--tta`` 1..10, ``--threshold`` in
    [0, 1]), for the Python API: a one-line UserError for a value outside them."""
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1:
        raise UserError(f"top_k must be a whole number ≥ 1 (classes listed per image), not {top_k!r}")
    if isinstance(tta, bool) or not isinstance(tta, Integral) or not 1 <= tta <= MAX_TTA:
        raise UserError(
            f"tta must be a whole number from 1 to {MAX_TTA} (test-time views: identity, flip, then "
            f"1-pixel shifts of both), not {tta!r}"
        )
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0.0 <= float(threshold) <= 1.0
    ):
        raise UserError(
            f"threshold must be a probability in [0, 1] (the deepest taxonomy node with p ≥ threshold), "
            f"not {threshold!r}"
        )
    if on_error not in ("raise", "report"):
        raise UserError(f"on_error must be 'raise' or 'report', not '{on_error}'")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists here; a one-line UserError for an unknown or absent one."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"device {str(device)!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{device}' is not available here (no CUDA GPU); use device='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(
                f"device '{device}' is not available here ({count} CUDA GPU(s): cuda:0..cuda:{count - 1}); "
                "use one of them or device='cpu'"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{device}' is not available here (no Apple MPS); use device='cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(1, device=dev)
        except Exception as exc:  # any backend's own "not available" error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"device '{device}' is not available here ({first}); use device='cpu'") from None
    return dev


def as_image_list(images: Any) -> list[Any]:
    """``images`` as a list: a list or tuple as it is; one image (a path, bytes, file object, PIL image, a tensor
    or array of at most 3 dimensions) as a list of one; a 4-D tensor or array as its images."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)) or hasattr(images, "read"):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    try:
        return list(images)
    except TypeError:
        raise UserError(
            f"images must be a list of images (file paths, PIL images, tensors or numpy arrays) or one image, "
            f"not a {type(images).__name__}"
        ) from None


def _uint8_values(t: torch.Tensor, label: str, dtype: str) -> torch.Tensor:
    """``t``'s values as uint8: uint8 as it is, other integers within 0..255, floating point within [0, 1] (×255,
    rounded); a one-line DataError for anything else."""
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool or t.is_complex():
        raise DataError(
            f"{label} has dtype {dtype}; pass uint8 values 0..255 or floating-point values in [0, 1]"
        )
    if t.is_floating_point():
        x = t.float()
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{label} has NaN or infinite values; pass finite values in [0, 1]")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{label} is a floating-point image with values in [{lo:g}, {hi:g}]; floating-point images must "
                "be in [0, 1] (divide 0..255 values by 255, or pass a uint8 tensor)"
            )
        return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi > 255:
        raise DataError(
            f"{label} is an integer ({dtype}) image with values {lo}..{hi}; integer images must be in 0..255 "
            "(convert other bit depths to 8 bits, or pass floating-point values in [0, 1])"
        )
    return t.to(torch.uint8)


def image_tensor(item: torch.Tensor, label: str) -> torch.Tensor:
    """One image tensor as uint8 ``(1, C, H, W)``: ``(C, H, W)``, ``(H, W)`` (one channel) or ``(1, C, H, W)``, C = 1
    or 3, values as :func:`_uint8_values` takes them; a one-line DataError naming ``label`` otherwise."""
    t, shape = item.detach().cpu(), tuple(item.shape)
    if t.ndim == 4:
        if shape[0] != 1:
            raise DataError(
                f"{label} is a batch of {shape[0]} images (shape {shape}); pass the images as a list "
                "(list(batch)) or the 4-D batch itself as the images, not inside a list"
            )
        t = t[0]
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise DataError(f"{label} has shape {shape}; an image tensor is (C, H, W), (H, W) or (1, C, H, W)")
    if t.shape[0] not in (1, 3):
        hint = " (it looks channels-last: use .permute(2, 0, 1))" if t.shape[-1] in (1, 3, 4) else ""
        raise DataError(
            f"{label} has shape {shape}; image tensors must be channels-first (C, H, W) with C = 1 or 3{hint}"
        )
    if t.numel() == 0:
        raise DataError(f"{label} has shape {shape}, no pixels")
    return _uint8_values(t, label, str(item.dtype).removeprefix("torch."))[None]


def array_image(item: np.ndarray, label: str) -> Image.Image:
    """One numpy image, laid out as PIL gives it (``(H, W)`` or ``(H, W, C)``, C = 1, 3 or 4), as a PIL image
    (``Image.fromarray`` of its uint8 values); a one-line DataError naming ``label`` otherwise."""
    shape = tuple(item.shape)
    if item.ndim == 3 and shape[-1] not in (1, 3, 4) and shape[0] in (1, 3):
        raise DataError(
            f"{label} is a numpy array of shape {shape}, which looks channels-first; numpy images are (H, W) or "
            "(H, W, C) as PIL gives them: use a.transpose(1, 2, 0), or pass torch.from_numpy(a)"
        )
    if item.ndim not in (2, 3) or (item.ndim == 3 and shape[-1] not in (1, 3, 4)):
        raise DataError(
            f"{label} is a numpy array of shape {shape}; numpy images are (H, W) or (H, W, C), C = 1, 3 or 4"
        )
    if item.size == 0:
        raise DataError(f"{label} has shape {shape}, no pixels")
    kind = item.dtype.kind
    if kind in "iu":
        t = torch.from_numpy(item.astype(np.int64))
    elif kind == "f":
        t = torch.from_numpy(item.astype(np.float32))
    elif kind == "b":
        t = torch.from_numpy(item)
    else:
        raise DataError(f"{label} has dtype {item.dtype}; pass uint8 values 0..255 or floats in [0, 1]")
    array = _uint8_values(t, label, str(item.dtype)).numpy()
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def ranked(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of one image's class probabilities and their classes, ties in class order (a stable
    sort, so :meth:`Predictor.predict`'s top-1 and :meth:`Predictor.explain`'s class agree for any ``k``)."""
    values, idx = torch.sort(probs, descending=True, stable=True)
    return values[:k], idx[:k]


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
    """A trained model ready for inference on image files, PIL images, tensors or numpy arrays (the inputs
    this module's docstring lists)."""

    def __init__(
        self,
        model: nn.Module,
        preprocess: dict[str, Any],
        class_names: list[str],
        taxonomy=None,
        device: str | torch.device = "cpu",
        temperature: float = 1.0,
    ) -> None:
        self.temperature = float(temperature)  # temperature scaling of the head's logits (1: none)
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.meta, self.class_names, self.taxonomy = preprocess, class_names, taxonomy
        self.prep = Preprocess.from_meta(preprocess, self.device)

    def load_images(self, images: Any) -> torch.Tensor:
        """The images as one uint8 ``(N, C, S, S)`` batch at the model's size and channels (N = 0 for none)."""
        items = as_image_list(images)
        if not items:
            size, channels = int(self.meta["image_size"]), int(self.meta["channels"])
            return torch.empty((0, channels, size, size), dtype=torch.uint8)
        return torch.cat([self._load_one(item, i) for i, item in enumerate(items)])

    def _load_one(self, item: Any, index: int = 0) -> torch.Tensor:
        """One image as a ``(1, C, S, S)`` uint8 tensor; DataError if it is unreadable or not an image."""
        size, channels = int(self.meta["image_size"]), int(self.meta["channels"])
        label = f"image #{index}"
        if isinstance(item, torch.Tensor):
            return resize_uint8(convert_channels(image_tensor(item, label), channels), size)
        if isinstance(item, np.ndarray):
            item = array_image(item, label)
        if isinstance(item, (bytes, bytearray)):
            item = io.BytesIO(item)
        if isinstance(item, Image.Image):
            item.save(buf := io.BytesIO(), format="PNG")
            buf.seek(0)
            item = buf
        if not isinstance(item, (str, os.PathLike)) and not hasattr(item, "read"):
            raise DataError(
                f"{label} is a {type(item).__name__}; an image is a file path, PIL image, tensor or numpy array"
            )
        try:
            return decode_image(item, size, channels)[None]
        except FileNotFoundError:
            raise DataError(f"image '{item}' does not exist") from None
        except IsADirectoryError:
            raise DataError(
                f"'{item}' is a folder, not an image; pass its images, e.g. '{item}/*.png'"
            ) from None
        except _BAD_IMAGE_ERRORS as exc:
            shown = item if isinstance(item, (str, os.PathLike)) else label
            raise DataError(f"cannot read image '{shown}': {' '.join(str(exc).split())}") from None

    @torch.no_grad()
    def _predict_views(self, images: Any, tta: int, loaded: bool = False) -> ViewPrediction:
        batch = (images if loaded else self.load_images(images)).to(self.device)
        return predict_views(
            self.model,
            batch,
            self.prep,
            lambda: device_autocast(self.device, None),
            tta,
            temperature=self.temperature,
        )

    def predict_proba(self, images: Any, tta: int = 1) -> torch.Tensor:
        """Class probabilities ``(N, classes)`` (TTA-averaged, at the stored temperature); ``(0, classes)`` for no images."""
        check_predict_options(tta=tta)
        batch = self.load_images(images)
        if len(batch) == 0:
            return torch.empty((0, len(self.class_names)))
        return self._predict_views(batch, tta, loaded=True).probs.cpu()

    def predict(
        self,
        images: Any,
        top_k: int = 5,
        tta: int = 1,
        threshold: float | None = None,
        on_error: str = "raise",
    ) -> list[dict[str, Any]]:
        """Top-k classes per image; with ``threshold`` τ also the deepest taxonomy node on a consistent
        root path whose probability ≥ τ. Node probabilities come from the head itself for node-space
        heads (``predict_nodes``: SphereMulti, SphereMultiHier, per-level heads), else the class
        probabilities summed up the tree.

        ``on_error="report"``: an unreadable image (or one that is no valid image: a wrong shape or value
        range) becomes a row ``{"image": ..., "error": "..."}`` in its place and every readable image is still
        predicted (``"raise"``: the first one raises DataError)."""
        check_predict_options(top_k, tta, threshold, on_error)
        images = as_image_list(images)
        name = lambda i: str(images[i]) if isinstance(images[i], (str, Path)) else f"#{i}"  # noqa: E731
        rows: list[dict[str, Any]] = [{"image": name(i)} for i in range(len(images))]
        loaded, good = [], []
        for i, item in enumerate(images):
            try:
                loaded.append(self._load_one(item, i))
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
            values, idx = ranked(p, k)
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

    def explain(self, images: Any, out_dir: str | Path, tta: int = 1) -> list[dict[str, Any]]:
        """Grad-CAM of the predicted class and the first convolution's feature maps for each image, written
        to ``out_dir`` as ``<name>_gradcam.png`` and ``<name>_feature_maps.png``; ``<name>`` is the image's
        path relative to the folder the images share (``cat/0.png`` → ``cat_0``), so names never clash
        (:func:`~imgcls.evaluation.explain.explain_stems`).

        The predicted class and its probability are those :meth:`predict` reports with the same ``tta`` (its
        top-1: TTA views averaged, at the stored temperature); the map is that class's Grad-CAM on the image
        itself (the untransformed view)."""
        from imgcls.evaluation.explain import explain_image, explain_stems

        check_predict_options(tta=tta)
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(
                f"explanation folder '{out_dir}' is a file; pass a folder for the figures (created if missing)"
            )
        images = as_image_list(images)
        if not images:
            return []
        batch = self.load_images(images)
        probs = self._predict_views(batch, tta, loaded=True).probs.cpu()
        stems = explain_stems([str(item) if isinstance(item, (str, Path)) else None for item in images])
        records = []
        for i, stem in enumerate(stems):
            value, idx = ranked(probs[i], 1)  # predict's top-1 (ties ranked alike)
            records.append(
                explain_image(
                    self.model,
                    self.prep,
                    batch[i : i + 1],
                    self.class_names,
                    out_dir,
                    stem,
                    predicted=int(idx[0]),
                    probability=float(value[0]),
                )
            )
        return records

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
