"""Single-image explanations for ``imgcls predict RUN IMG --explain`` (seed 004's ``test`` command drew
Grad-CAM on the last convolution and the first convolution's feature maps for one image; SPEC §5.6).

For each image: the Grad-CAM map of the predicted class (:mod:`imgcls.evaluation.cam` chooses the layer
for CNNs and ViTs alike) drawn over the image, and the output channels of the first convolution the
forward pass runs (a ViT's patch embedding is one); the same plots as the run report's
``gradcam.png`` / ``feature_maps.png`` (:mod:`imgcls.evaluation.plots`), for one image.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from imgcls.data.preprocess import Preprocess
from imgcls.evaluation.cam import find_cam_target, grad_cam
from imgcls.evaluation.figures import first_conv_maps
from imgcls.evaluation.plots import plot_feature_maps, plot_gradcam


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def safe_stem(name: str) -> str:
    """A file-name-safe stem for an image name (``photos/7 white.png`` → ``7_white``)."""
    return _file_safe(Path(name).stem)


def explain_stems(names: list[str | None]) -> list[str]:
    """Distinct, stable file stems for the images ``names`` (``None``: an in-memory image, ``image_<i>``).

    A file is named by its path relative to the folder all the named files share, separators replaced
    (``cat/0.png`` and ``dog/0.png`` → ``cat_0`` and ``dog_0``; a single file → its stem), so that two
    images with one file name in different folders never write to the same figure. Names that still
    collide (``0.png`` / ``0.jpg``, or the same file twice) get ``_2``, ``_3``, ... in input order.
    """
    paths = [None if n is None else Path(os.path.abspath(n)) for n in names]
    try:
        common = Path(os.path.commonpath([str(p.parent) for p in paths if p is not None]))
    except ValueError:  # no file names, or paths on different drives
        common = None
    stems = []
    for i, path in enumerate(paths):
        if path is None:
            stems.append(f"image_{i}")
        elif common is None:
            stems.append(safe_stem(str(path)))
        else:
            stems.append(_file_safe("_".join(path.relative_to(common).with_suffix("").parts)))
    used: set[str] = set()  # compared case-insensitively: such file systems would merge 'A' and 'a'
    unique = []
    for stem in stems:
        candidate, n = stem, 1
        while candidate.casefold() in used:
            n += 1
            candidate = f"{stem}_{n}"
        used.add(candidate.casefold())
        unique.append(candidate)
    return unique


def explain_image(
    model: torch.nn.Module,
    prep: Preprocess,
    image: torch.Tensor,
    class_names: list[str],
    out_dir: Path,
    stem: str,
    *,
    predicted: int,
    probability: float,
) -> dict[str, Any]:
    """Write ``<stem>_gradcam.png`` and ``<stem>_feature_maps.png`` for one uint8 image ``(1, C, H, W)``
    (already at the model's size and channels) into ``out_dir``; returns the files written and, for
    each figure that does not apply (a model without convolutions or attention), the reason.

    ``predicted`` / ``probability`` are the class the prediction reports and its probability (after TTA and
    temperature scaling, :meth:`~imgcls.evaluation.predict.Predictor.explain`): the Grad-CAM map is of that
    class, on the image itself, and the figure and record show that same probability."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = next(model.parameters()).device
    inputs = prep(image.to(device))
    shown = prep.to_unit(image.to(device))[0].cpu()  # what the model sees (after data.invert), in [0, 1]
    pred = int(predicted)
    record: dict[str, Any] = {
        "predicted": class_names[pred],
        "probability": float(probability),
        "skipped": {},
    }
    target = find_cam_target(model, inputs)
    if target is None:
        record["skipped"]["gradcam"] = "the model has no convolutional feature map or attention block"
    else:
        maps = grad_cam(model, inputs, [pred], target)
        title = f"pred: {class_names[pred]} ({float(probability):.3f})"  # as `imgcls predict` prints it
        record["gradcam"] = str(
            plot_gradcam([shown], maps, [title], out_dir / f"{stem}_gradcam.png", target.name)
        )
        record["gradcam_layer"] = target.name
    found = first_conv_maps(model, inputs)
    if found is None:
        record["skipped"]["feature_maps"] = "the model has no convolution"
    else:
        name, maps = found
        record["feature_maps"] = str(
            plot_feature_maps(shown, maps[0], out_dir / f"{stem}_feature_maps.png", name)
        )
        record["feature_maps_layer"] = name
    return record
