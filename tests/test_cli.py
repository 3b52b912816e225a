"""Tests of the command line (cli.py) run as a user runs it, in a subprocess (``python -m imgcls``): user
errors exit with code 2 and one line on stderr without a traceback; ``predict --json`` classifies a PNG
saved from a Fashion-MNIST test image; ``config show`` prints the resolved config as YAML that loads back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgcls.config import build_config, load_config
from imgcls.data.idx import read_idx
from imgcls.data.sources import FASHION_MNIST_CLASSES
from tiny_runs import FASHION_MNIST_DIR, requires_fashion_mnist, shared_run

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def cli_env() -> dict[str, str]:
    """The environment of a user piping the output (no terminal, no COLUMNS), single-threaded torch."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "imgcls", *args],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_concurrently(cases: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """``imgcls ARGS`` for every case at once (their start-up dominates), each result by the case's name."""
    processes = {name: start(*args) for name, args in cases.items()}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def squeeze(text: str) -> str:
    """``text`` without whitespace, so that checks do not depend on where a console wrapped it."""
    return re.sub(r"\s+", "", text)


def run(*args: str) -> subprocess.CompletedProcess:
    process = start(*args)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# ------------------------------------------------------------------------------- user errors
#: a run directory path long enough that its message cannot fit in 80 columns
MISSING_RUN = "/tmp/imgcls-test-no-such-run-directory/runs/a_rather_long_experiment_name/2026-01-01T00-00-00"

#: where the failing `train` would have written its run (it must not)
UNUSED_OUTPUT = Path(tempfile.gettempdir()) / f"imgcls-cli-test-{os.getpid()}"

ERROR_CASES = {
    "unknown-key": (
        ["train", str(QUICKSTART), "optim.lrr=0.1", f"output.dir={UNUSED_OUTPUT}"],
        ["optim.lrr", "did you mean 'optim.lr'?"],
    ),
    "missing-config": (
        ["train", "configs/no_such_config.yaml"],
        ["configs/no_such_config.yaml", "not found"],
    ),
    "missing-run-dir": (["evaluate", MISSING_RUN], [MISSING_RUN, "does not exist"]),
    "bad-value": (
        ["config", "show", str(QUICKSTART), "train.precision=fp64"],
        ["'train.precision'", "'fp64'", "'bf16'"],
    ),
}


@pytest.fixture(scope="module")
def error_runs() -> dict[str, subprocess.CompletedProcess]:
    """Every error case, run as concurrent subprocesses (start-up dominates their time)."""
    return run_concurrently({name: args for name, (args, _) in ERROR_CASES.items()})


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_error_exits_2_with_a_message_and_no_traceback(error_runs, case):
    result = error_runs[case]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    for words in ERROR_CASES[case][1]:
        assert squeeze(words) in squeeze(result.stderr), (words, result.stderr)


def test_a_failed_config_creates_no_run_directory(error_runs):
    assert error_runs["unknown-key"].returncode == 2
    assert error_runs["unknown-key"].stdout == ""
    assert not UNUSED_OUTPUT.exists()


@pytest.mark.parametrize("case", ["unknown-key", "missing-config", "missing-run-dir"])
def test_user_error_is_one_line(error_runs, case):
    assert len(error_runs[case].stderr.strip().splitlines()) == 1, error_runs[case].stderr


# ------------------------------------------------------------------------------- config show
def test_config_show_prints_the_resolved_config():
    result = run("config", "show", str(QUICKSTART), "optim.lr=0.1")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["optim"]["lr"] == 0.1
    assert "  lr: 0.1" in result.stdout.splitlines()
    loaded = load_config(QUICKSTART, ["optim.lr=0.1"])
    # head/backbone arguments are shown with every default: the same arguments, spelled out
    assert build_config(shown).resolved_component_args() == loaded.resolved_component_args()
    shown["model"]["backbone_args"], shown["model"]["head_args"] = (
        loaded.model.backbone_args,
        loaded.model.head_args,
    )
    assert build_config(shown) == loaded


def test_config_show_round_trips_long_values():
    long_dir = "/data/experiments/" + "a_very_long_folder_name_" * 4 + "end"
    result = run("config", "show", str(QUICKSTART), f"output.dir={long_dir}")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["output"]["dir"] == long_dir


# ------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def trouser_png(tmp_path_factory) -> Path:
    """The first Trouser image of the Fashion-MNIST test set (an easy class), saved as a PNG."""
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    index = int(np.flatnonzero(labels == FASHION_MNIST_CLASSES.index("Trouser"))[0])
    path = tmp_path_factory.mktemp("images") / "trouser.png"
    Image.fromarray(images[index]).save(path)
    return path


@requires_fashion_mnist
def test_predict_json_returns_top_k_class_names(tmp_path_factory, trouser_png):
    from imgcls import api

    run_dir = shared_run(tmp_path_factory)
    result = run("predict", str(run_dir), str(trouser_png), "--json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 1 and rows[0]["image"] == str(trouser_png)
    top = rows[0]["top_k"]
    assert len(top) == 3
    assert all(t["class"] in FASHION_MNIST_CLASSES for t in top)
    probabilities = [t["probability"] for t in top]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert "Trouser" in [t["class"] for t in top]
    # the command line and the Python API give the same answer
    (row,) = api.predict(run_dir, [str(trouser_png)], top_k=3)
    assert [t["class"] for t in row["top_k"]] == [t["class"] for t in top]
    assert [t["probability"] for t in row["top_k"]] == pytest.approx(probabilities, abs=1e-5)


@requires_fashion_mnist
def test_predict_missing_image_is_a_user_error(tmp_path_factory, tmp_path):
    run_dir = shared_run(tmp_path_factory)
    result = run("predict", str(run_dir), str(tmp_path / "absent.png"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert squeeze("does not exist") in squeeze(result.stderr)
