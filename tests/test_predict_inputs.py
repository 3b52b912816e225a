"""What ``Predictor`` / ``api.predict`` accept and what they refuse, and ``--explain`` agreeing with the prediction.

- ``explain`` shows (and reports) the class and probability the prediction reports: TTA'd and calibrated;
- float tensors are images in [0, 1] (×255), not silently cast to uint8; 0..255 floats, NaN and negative
  values are refused with one line;
- 2-D tensors are one gray image; channels-last tensors, batches inside the list, channels-first numpy arrays
  are refused with one line; a single path is one image; numpy arrays are read as ``Image.fromarray`` reads them;
  no images give an empty ``(0, classes)`` probability tensor;
- ``tta``, ``threshold``, ``top_k`` and ``device`` have the command line's limits in the API;
- the Grad-CAM figure of one image keeps its title and labels inside the canvas.

Most cases use an untrained tiny CNN (milliseconds); the end-to-end ones share one tiny Fashion-MNIST run.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.text
import numpy as np
import pytest
import torch
from PIL import Image
from tests.tiny_runs import TINY_OVERRIDES, requires_fashion_mnist, single_thread

from imgcls.config import ModelConfig
from imgcls.errors import DataError, UserError
from imgcls.evaluation import explain as explain_module
from imgcls.evaluation import plots
from imgcls.evaluation import predict as predict_module
from imgcls.evaluation.predict import Predictor, ViewPrediction
from imgcls.models.classifier import build_model

CLASSES = [f"class {i}" for i in range(10)]
META = {"image_size": 28, "channels": 1, "mean": [0.5], "std": [0.25]}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded torch: on a shared 2-core machine spinning intra-op threads slow tiny models many-fold."""
    with single_thread():
        yield


def tiny_predictor(temperature: float = 1.0, channels: int = 1) -> Predictor:
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="adaptive_cnn", backbone_args={"layout": "mnist", "width_mult": 0.25}, head="linear"
    )
    model = build_model(cfg, num_classes=10, in_chans=channels)
    meta = {**META, "channels": channels, "mean": [0.5] * channels, "std": [0.25] * channels}
    return Predictor(model, meta, CLASSES, temperature=temperature)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return tiny_predictor()


def gray(seed: int = 0, shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ------------------------------------------------------------------------------------- 1. explain = prediction
def test_explain_uses_the_tta_calibrated_top1_class_and_probability(tmp_path, monkeypatch):
    hot = tiny_predictor(temperature=0.5)
    image = gray(3)
    (row,) = hot.predict([image], top_k=2, tta=10)
    cams, titles = [], []
    grad_cam = explain_module.grad_cam
    monkeypatch.setattr(
        explain_module,
        "grad_cam",
        lambda m, x, c, t: cams.append((x.clone(), list(c))) or grad_cam(m, x, c, t),
    )
    plot = explain_module.plot_gradcam
    monkeypatch.setattr(
        explain_module, "plot_gradcam", lambda im, maps, ts, *a: titles.extend(ts) or plot(im, maps, ts, *a)
    )
    (record,) = hot.explain([image], tmp_path, tta=10)
    top = row["top_k"][0]
    assert record["predicted"] == top["class"] and record["probability"] == top["probability"]
    assert titles == [f"pred: {top['class']} ({top['probability']:.3f})"]
    # the map is of that class, on the image itself (not a TTA view)
    ((inputs, classes),) = cams
    assert classes == [CLASSES.index(top["class"])]
    torch.testing.assert_close(inputs, hot.prep(image[None]), rtol=0, atol=0)
    # without TTA and temperature the plain single view gives another probability: explain did not use it
    plain = tiny_predictor().predict_proba([image])[0]
    assert abs(float(plain.max()) - top["probability"]) > 1e-3


def test_explain_draws_the_class_the_prediction_picked_even_when_the_plain_view_disagrees(
    predictor, tmp_path, monkeypatch
):
    image = gray(4)
    plain = int(predictor.predict_proba([image])[0].argmax())
    picked = (plain + 3) % 10
    fixed = torch.full((1, 10), 0.4 / 9)
    fixed[0, picked] = 0.6
    monkeypatch.setattr(
        predict_module,
        "predict_views",
        lambda *a, **k: ViewPrediction(fixed.clone(), None, None, None),
    )
    cams = []
    grad_cam = explain_module.grad_cam
    monkeypatch.setattr(
        explain_module, "grad_cam", lambda m, x, c, t: cams.append(list(c)) or grad_cam(m, x, c, t)
    )
    (row,) = predictor.predict([image], top_k=1)
    (record,) = predictor.explain([image], tmp_path)
    assert row["top_k"] == [{"class": CLASSES[picked], "probability": pytest.approx(0.6)}]
    assert (record["predicted"], record["probability"]) == (CLASSES[picked], row["top_k"][0]["probability"])
    assert cams == [[picked]]


def test_tied_probabilities_rank_the_lower_class_first_in_predict_and_explain(
    predictor, tmp_path, monkeypatch
):
    tied = torch.zeros(1, 10)
    tied[0, 7] = tied[0, 2] = 0.5
    monkeypatch.setattr(
        predict_module, "predict_views", lambda *a, **k: ViewPrediction(tied.clone(), None, None, None)
    )
    for k in (1, 2, 5):
        assert predictor.predict([gray()], top_k=k)[0]["top_k"][0]["class"] == "class 2"
    assert predictor.explain([gray()], tmp_path)[0]["predicted"] == "class 2"


# ------------------------------------------------------------------------------------- 2. float tensors
def test_float_tensor_in_unit_range_is_the_same_image_as_uint8(predictor):
    image = gray(5)
    as_uint8 = predictor.predict_proba([image])
    as_float = predictor.predict_proba([image.float() / 255])
    as_double = predictor.predict_proba([image.double() / 255])
    as_int64 = predictor.predict_proba([image.long()])
    black = predictor.predict_proba([torch.zeros_like(image)])
    assert (
        torch.equal(as_float, as_uint8)
        and torch.equal(as_double, as_uint8)
        and torch.equal(as_int64, as_uint8)
    )
    assert not torch.allclose(as_float, black, atol=1e-4)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (
            lambda x: x.float(),
            "is a floating-point image with values in [0, 255]; floating-point images must be in [0, 1]",
        ),
        (lambda x: x.float() / 255 - 0.5, "values in [-0.5, 0.5]; floating-point images must be in [0, 1]"),
        (lambda x: torch.full(x.shape, float("nan")), "has NaN or infinite values"),
        (
            lambda x: x.long() + 100,
            "is an integer (int64) image with values 100..355; integer images must be in 0..255",
        ),
        (lambda x: x.bool(), "has dtype bool; pass uint8 values 0..255 or floating-point values in [0, 1]"),
    ],
)
def test_values_outside_the_documented_ranges_are_one_line_errors(predictor, values, fragment):
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 0, 0], image[0, 0, 1] = 0, 255
    with pytest.raises(DataError) as excinfo:
        predictor.predict_proba([values(image)])
    assert fragment in one_line_error(excinfo) and one_line_error(excinfo).startswith("image #0 ")


# ------------------------------------------------------------------------------------- 3. shapes and kinds
def test_a_2d_tensor_is_one_gray_image(predictor):
    image = gray(6)
    assert torch.equal(predictor.predict_proba([image[0]]), predictor.predict_proba([image]))
    assert torch.equal(predictor.predict_proba([image[None]]), predictor.predict_proba([image]))


def test_channels_last_tensor_is_refused_with_its_shape(predictor):
    with pytest.raises(DataError) as excinfo:
        predictor.predict([gray(0, (28, 28, 3))])
    assert one_line_error(excinfo) == (
        "image #0 has shape (28, 28, 3); image tensors must be channels-first (C, H, W) with C = 1 or 3 "
        "(it looks channels-last: use .permute(2, 0, 1))"
    )
    with pytest.raises(DataError, match=r"has shape \(2, 1, 1, 28, 28\); an image tensor is"):
        predictor.predict([gray(0, (2, 1, 1, 28, 28))])


def test_a_batch_inside_the_list_is_refused_and_a_bare_batch_is_its_images(predictor):
    batch = gray(7, (3, 1, 28, 28))
    with pytest.raises(DataError) as excinfo:
        predictor.predict([batch])
    assert one_line_error(excinfo).startswith("image #0 is a batch of 3 images (shape (3, 1, 28, 28)); pass")
    rows = predictor.predict(batch, top_k=1)
    assert [row["image"] for row in rows] == ["#0", "#1", "#2"]
    assert rows == predictor.predict(list(batch), top_k=1)
    assert torch.equal(predictor.predict_proba(batch), predictor.predict_proba(list(batch)))


def test_one_path_or_one_image_is_not_iterated(predictor, tmp_path):
    image = gray(8)
    path = tmp_path / "shoe.png"
    Image.fromarray(image[0].numpy()).save(path)
    (row,) = predictor.predict(str(path), top_k=3)
    assert row["image"] == str(path)
    assert predictor.predict(path, top_k=3) == [row] == predictor.predict([str(path)], top_k=3)
    assert torch.equal(predictor.predict_proba(image), predictor.predict_proba([image]))
    assert torch.equal(predictor.predict_proba(str(path)), predictor.predict_proba([image]))
    assert len(predictor.predict(Image.open(path))) == 1


def test_numpy_arrays_are_read_as_pil_reads_them(tmp_path):
    rgb = tiny_predictor(channels=3)
    hw = gray(9)[0].numpy()
    hwc = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    for model, array in ((tiny_predictor(), hw), (rgb, hwc), (rgb, hw)):
        expected = model.predict_proba([Image.fromarray(array)])
        assert torch.equal(model.predict_proba([array]), expected)
        assert torch.equal(model.predict_proba([array.astype(np.float32) / 255]), expected)
    assert torch.equal(rgb.predict_proba(hwc), rgb.predict_proba([hwc]))  # one array: one image
    with pytest.raises(DataError) as excinfo:
        rgb.predict([hwc.transpose(2, 0, 1)])
    assert one_line_error(excinfo).startswith(
        "image #0 is a numpy array of shape (3, 28, 28), which looks channels-first"
    )


def test_other_objects_are_one_line_errors_and_reported_per_row(predictor):
    with pytest.raises(
        DataError, match=r"^image #1 is a int; an image is a file path, PIL image, tensor or numpy"
    ):
        predictor.predict([gray(), 5])
    with pytest.raises(UserError, match=r"^images must be a list of images .* not a int$"):
        predictor.predict(5)
    rows = predictor.predict([gray(), gray(0, (28, 28, 3)), gray(1).float()], top_k=1, on_error="report")
    assert "top_k" in rows[0] and "top_k" not in rows[1] and "top_k" not in rows[2]
    assert rows[1]["error"].startswith("image #1 has shape (28, 28, 3)")
    assert rows[2]["error"].startswith("image #2 is a floating-point image with values in [")


def test_no_images_give_empty_results(predictor, tmp_path):
    probs = predictor.predict_proba([])
    assert probs.shape == (0, 10) and probs.dtype == torch.float32
    assert predictor.predict([]) == []
    assert predictor.explain([], tmp_path / "figures") == []


# ------------------------------------------------------------------------------------- 4. option limits
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tta": 0}, "tta must be a whole number from 1 to 10"),
        ({"tta": 50}, "tta must be a whole number from 1 to 10"),
        ({"tta": 2.0}, "tta must be a whole number from 1 to 10"),
        ({"threshold": 2.0}, "threshold must be a probability in [0, 1]"),
        ({"threshold": -1}, "threshold must be a probability in [0, 1]"),
        ({"threshold": float("nan")}, "threshold must be a probability in [0, 1]"),
        ({"top_k": 0}, "top_k must be a whole number ≥ 1"),
    ],
)
def test_predict_options_have_the_command_lines_limits(predictor, options, message):
    with pytest.raises(UserError) as excinfo:
        predictor.predict([gray()], **options)
    assert one_line_error(excinfo).startswith(message)
    if "tta" in options:
        with pytest.raises(UserError, match=r"^tta must be"):
            predictor.predict_proba([gray()], tta=options["tta"])


def test_tta_ten_is_allowed_and_differs_from_one(predictor):
    assert not torch.allclose(predictor.predict_proba([gray()], tta=10), predictor.predict_proba([gray()]))


def test_unknown_or_absent_devices_are_one_line_errors():
    with pytest.raises(UserError) as excinfo:
        Predictor(torch.nn.Linear(1, 1), META, CLASSES, device="gpu")
    assert one_line_error(excinfo) == "device 'gpu' is not a device; use 'cpu', 'cuda' or 'cuda:N'"
    with pytest.raises(UserError) as excinfo:
        Predictor(torch.nn.Linear(1, 1), META, CLASSES, device="cuda:99")
    assert one_line_error(excinfo).startswith("device 'cuda:99' is not available here (")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(UserError) as excinfo:
        Predictor(torch.nn.Linear(1, 1), META, CLASSES, device="cuda")
    assert one_line_error(excinfo) == "device 'cuda' is not available here (no CUDA GPU); use device='cpu'"


# ------------------------------------------------------------------------------------- 5. Grad-CAM figure
def test_gradcam_figure_of_one_image_keeps_every_text_inside(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: figures.append(fig))
    layer = "backbone.stages.3.blocks.2.attention.norm1"
    for n in (1, 2, 7):
        path = plots.plot_gradcam(
            torch.rand(n, 1, 28, 28),
            np.random.rand(n, 28, 28),
            ["pred: T-shirt/top (0.157)"] * n,
            tmp_path / f"cam{n}.png",
            layer,
        )
        assert path.is_file()
        fig = figures[-1]
        fig.canvas.draw()
        renderer, width, height = fig.canvas.get_renderer(), fig.bbox.width, fig.bbox.height
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
        assert any(layer in t.get_text().replace("\n", "") for t in texts)  # the title, wrapped if need be
        for t in texts:
            box = t.get_window_extent(renderer)
            assert box.x0 >= -1 and box.x1 <= width + 1 and box.y0 >= -1 and box.y1 <= height + 1, (
                n,
                t.get_text(),
            )


# ------------------------------------------------------------------------------------- end to end: a tiny run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A one-epoch Fashion-MNIST run with a stored temperature of 0.5 for its evaluated checkpoint."""
    from imgcls import api
    from imgcls.evaluation.calibration import TemperatureFit, checkpoint_identity, save_temperature
    from imgcls.runs import load_run_checkpoint

    out = tmp_path_factory.mktemp("predict_inputs")
    overrides = [
        *TINY_OVERRIDES,
        "data.train_subset=300",
        "data.test_subset=50",
        "train.batch_size=50",
        "train.epochs=1",
        f"output.dir={out}",
    ]
    with single_thread():
        run_dir = api.train(None, overrides, evaluate_after=False).run_dir
    ckpt, which = load_run_checkpoint(run_dir)
    save_temperature(run_dir, which, TemperatureFit(0.5, 1.0, 1.0, 10), checkpoint_identity(ckpt))
    return run_dir


@requires_fashion_mnist
def test_api_predict_explain_reports_the_predicted_class_and_probability(tiny_run, tmp_path):
    from imgcls import api

    assert api.load(tiny_run).temperature == 0.5
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(gray(10 + i)[0].numpy()).save(files[-1])
    rows = api.predict(tiny_run, [str(f) for f in files], top_k=2, tta=10, explain_dir=tmp_path / "explain")
    json.dumps(rows)  # the --json output
    for row in rows:
        top = row["top_k"][0]
        assert (row["explain"]["predicted"], row["explain"]["probability"]) == (
            top["class"],
            top["probability"],
        )
        assert Path(row["explain"]["gradcam"]).is_file()
    (single,) = api.predict(tiny_run, str(files[0]), top_k=2, tta=10, explain_dir=tmp_path / "one")
    assert (
        single["top_k"] == rows[0]["top_k"]
        and single["explain"]["predicted"] == rows[0]["explain"]["predicted"]
    )


@requires_fashion_mnist
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tta": 0}, "tta must be a whole number from 1 to 10"),
        ({"tta": 50}, "tta must be a whole number from 1 to 10"),
        ({"threshold": 2.0}, "threshold must be a probability in [0, 1]"),
        ({"threshold": -1}, "threshold must be a probability in [0, 1]"),
    ],
)
def test_api_predict_has_the_command_lines_limits(tiny_run, options, message):
    from imgcls import api

    with pytest.raises(UserError) as excinfo:
        api.predict(tiny_run, [gray()], **options)
    assert one_line_error(excinfo).startswith(message)


@requires_fashion_mnist
def test_api_load_on_an_unknown_device_is_one_line(tiny_run):
    from imgcls import api

    with pytest.raises(UserError, match=r"^device 'gpu' is not a device; use 'cpu', 'cuda' or 'cuda:N'$"):
        api.load(tiny_run, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(
            UserError, match=r"^device 'cuda' is not available here \(no CUDA GPU\); use device='cpu'$"
        ):
            api.load(tiny_run, device="cuda")
