"""Exporting a trained run to ONNX (and TorchScript), with a parity check against PyTorch.

The exported graph takes **float32 images in [0, 1], shape (batch, C, S, S)** — C and S are the
run's ``preprocess`` channels and image size, the batch dimension is dynamic — and returns
**class probabilities (batch, num_classes)** in the order of ``class_names``. The data set's
mean/std normalisation is inside the graph, so a caller only has to decode, resize to S×S,
convert to C channels and divide by 255. ``export.json`` beside the model records all of this.

After writing, the model is run by onnxruntime (and TorchScript by ``torch.jit.load``) on seeded
random images at two batch sizes (so the dynamic batch is exercised too) and compared with the
PyTorch model; a difference above ``atol`` raises :class:`ExportParityError` (a
:class:`~imgcls.errors.UserError`: the CLI exits non-zero).

Exporter: torch's ``torch.export``-based ONNX exporter when ``onnxscript`` is installed (torch's
default since 2.9), else the TorchScript-based one; ``export.json`` says which was used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.data.preprocess import invert_images
from imgcls.errors import UserError


class ExportParityError(UserError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


class ExportableClassifier(nn.Module):
    """``images in [0, 1] (B, C, S, S) → class probabilities (B, K)``: normalisation + model + head.predict."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], invert: str = "none") -> None:
        super().__init__()
        self.model = model.eval()
        self.invert = invert  # data.invert of the run (applied inside the graph, before normalisation)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model((invert_images(images, self.invert) - self.mean) / self.std)
        return self.model.head.predict(out)


def sample_inputs(
    channels: int, size: int, batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0
) -> list[torch.Tensor]:
    """Seeded uniform [0, 1] images, one batch per batch size."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, channels, size, size, generator=g) for b in batch_sizes]


EXPORTERS = ("auto", "dynamo", "torchscript")


def _onnx_export(
    wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str = "auto"
) -> str:
    """Write ``path``; returns the exporter used (``dynamo`` or ``torchscript``).

    ``auto``: the ``torch.export``-based exporter when onnxscript is installed, falling back to the
    TorchScript-based one (with a warning) when it fails; ``dynamo`` / ``torchscript`` force one.
    """
    if exporter not in EXPORTERS:
        raise UserError(f"exporter must be one of {', '.join(EXPORTERS)}, not '{exporter}'")
    names = {"input_names": ["images"], "output_names": ["probabilities"]}
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "dynamo" and not has_onnxscript:
        raise UserError(
            "the dynamo ONNX exporter needs onnxscript: pip install onnxscript (or use --exporter torchscript)"
        )
    if exporter == "dynamo" or (exporter == "auto" and has_onnxscript):
        batch = torch.export.Dim("batch", min=1, max=4096)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    wrapper,
                    (example,),
                    dynamo=True,
                    dynamic_shapes={"images": {0: batch}},
                    opset_version=opset,
                    verbose=False,
                    **names,
                )
            program.save(str(path), external_data=False)
            return "dynamo"
        except Exception as exc:  # any exporter failure: fall back to the TorchScript exporter below
            if exporter == "dynamo":
                raise
            warnings.warn(
                f"torch.export-based ONNX export failed ({type(exc).__name__}); using the TorchScript exporter",
                stacklevel=2,
            )
    with warnings.catch_warnings(), _exporter_failure("ONNX"):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            opset_version=min(opset, 20),
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
            **names,
        )
    return "torchscript"


@contextlib.contextmanager
def _exporter_failure(fmt: str) -> Iterator[None]:
    """An exporter that cannot trace the model (an op it has no conversion for) is one line, not its traceback."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"cannot export this model to {fmt}: the exporter failed ({type(exc).__name__}: {first}); the model "
            "uses an operation it cannot convert"
        ) from None


def onnx_max_difference(wrapper: nn.Module, path: Path, inputs: list[torch.Tensor]) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs over ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = wrapper(x).numpy()
            (got,) = session.run(["probabilities"], {"images": x.numpy()})
            if got.shape != expected.shape:
                raise ExportParityError(
                    f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}"
                )
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def torchscript_max_difference(wrapper: nn.Module, path: Path, inputs: list[torch.Tensor]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return max(float((loaded(x) - wrapper(x)).abs().max()) for x in inputs)


def export_model(
    model: nn.Module,
    preprocess: dict[str, Any],
    class_names: list[str],
    out_dir: str | Path,
    *,
    onnx: bool = True,
    torchscript: bool = False,
    opset: int = 18,
    atol: float = 1e-4,
    exporter: str = "auto",
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` (a Classifier) into ``out_dir`` and check parity; returns the ``export.json`` record."""
    if not onnx and not torchscript:
        raise UserError("nothing to export: pass --onnx and/or --torchscript")
    mode = getattr(getattr(model, "head", None), "inference_mode", "sample")
    if mode in ("batch", "memory"):  # FCH batch-graph heads: a prediction depends on the other images
        raise UserError(
            f"cannot export this model: its {type(model.head).__name__} predicts each image from the "
            f"{'whole batch' if mode == 'batch' else 'memory bank of training features'} (eval_graph={mode}), which "
            "an exported graph of one input cannot reproduce; export heads that predict each image alone"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(
            f"export folder '{out_dir}' is a file; pass a folder for model.onnx and export.json (created if missing)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().float().eval()
    channels, size = int(preprocess["channels"]), int(preprocess["image_size"])
    wrapper = ExportableClassifier(
        model, preprocess["mean"], preprocess["std"], preprocess.get("invert", "none")
    ).eval()
    inputs = sample_inputs(channels, size)
    record: dict[str, Any] = {
        "input": {
            "name": "images",
            "dtype": "float32",
            "shape": ["batch", channels, size, size],
            "range": [0.0, 1.0],
            "layout": "NCHW, RGB" if channels == 3 else "NCHW, grayscale",
            "normalisation": {
                "mean": preprocess["mean"],
                "std": preprocess["std"],
                "applied": "inside the graph",
            },
            "invert": {
                "mode": preprocess.get("invert", "none"),
                "applied": "inside the graph, before normalisation",
            },
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(class_names)],
            "meaning": "class probabilities",
        },
        "class_names": list(class_names),
        "atol": atol,
        "parity_inputs": f"seeded uniform [0, 1] images, batch sizes {[int(x.shape[0]) for x in inputs]}",
        **({"source": source} if source else {}),
    }
    if onnx:
        path = out_dir / "model.onnx"
        record["onnx"] = {
            "file": path.name,
            "opset": opset,
            "exporter": _onnx_export(wrapper, inputs[-1], path, opset, exporter),
        }
        diff = onnx_max_difference(wrapper, path, inputs)
        record["onnx"]["max_abs_difference"] = diff
        if not diff <= atol:
            raise ExportParityError(
                f"ONNX outputs differ from PyTorch by {diff:.3g} > atol {atol:g} ({path}); the model uses an op the exporter "
                "or onnxruntime handles differently — raise --atol only if the difference is acceptable"
            )
    if torchscript:
        path = out_dir / "model.torchscript.pt"
        with warnings.catch_warnings(), torch.no_grad(), _exporter_failure("TorchScript"):
            warnings.simplefilter("ignore")  # torch.jit.trace deprecation / tracer notices
            torch.jit.trace(wrapper, inputs[-1]).save(str(path))
        diff = torchscript_max_difference(wrapper, path, inputs)
        record["torchscript"] = {"file": path.name, "max_abs_difference": diff}
        if not diff <= atol:
            raise ExportParityError(
                f"TorchScript outputs differ from PyTorch by {diff:.3g} > atol {atol:g} ({path})"
            )
    (out_dir / "export.json").write_text(json.dumps(record, indent=2))
    return record


def export_run(
    run_dir: str | Path,
    *,
    onnx: bool = True,
    torchscript: bool = False,
    checkpoint: str | None = None,
    out_dir: str | Path | None = None,
    opset: int = 18,
    atol: float = 1e-4,
    exporter: str = "auto",
) -> dict[str, Any]:
    """Export a run's checkpoint (default: the config's ``eval.checkpoint``) into ``out_dir`` (default: the run)."""
    from imgcls.runs import load_run_checkpoint, model_from_checkpoint

    ckpt, which = load_run_checkpoint(run_dir, checkpoint)
    model, _, _ = model_from_checkpoint(ckpt, which)
    return export_model(
        model,
        ckpt["preprocess"],
        ckpt["class_names"],
        out_dir or run_dir,
        onnx=onnx,
        torchscript=torchscript,
        opset=opset,
        atol=atol,
        exporter=exporter,
        source={"run_dir": str(run_dir), "checkpoint": which},
    )
