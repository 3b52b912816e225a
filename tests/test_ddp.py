"""DDP on CPU (issue 3): a 2-process gloo run (``imgcls train --nproc 2``) reaches the weights of a
1-process run with the same global batch, gathers validation metrics without padding bias, writes
its files once, and a failing rank makes the whole job exit non-zero with its message.

The model is the AdaptiveCNN with GroupNorm (no BatchNorm statistics that depend on the per-rank
batch), a linear head, no augmentation, fp32 and SGD, so both runs compute the same mean gradient up
to float rounding. The learning rate is small on purpose: with ReLU/max-pool kinks, larger steps
amplify rounding differences chaotically (measured: even 1 vs 2 OpenMP threads in one process end
6e-4 apart after 10 steps at lr 0.05), which would test the dynamics rather than DDP.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgcls.config import load_config
from imgcls.models.classifier import build_model
from tiny_runs import requires_fashion_mnist

pytestmark = requires_fashion_mnist

OVERRIDES = [
    "data.name=fashion_mnist",
    "data.train_subset=400",
    "data.val_fraction=0.2",
    "data.test_subset=200",
    "model.backbone=adaptive_cnn",
    "model.backbone_args={layout: mnist, width_mult: 0.25, norm: group}",
    "model.head=linear",
    "optim.name=sgd",
    "optim.lr=0.002",
    "optim.momentum=0.9",
    "optim.weight_decay=0.0",
    "schedule.name=cosine",
    "schedule.warmup_epochs=0",
    "train.epochs=2",
    "train.batch_size=32",
    "train.precision=fp32",
    "train.progress=false",
    "output.tensorboard=false",
]


def run_train(out: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "imgcls",
        "train",
        *OVERRIDES,
        f"output.dir={out}",
        "output.name=ddp",
        "--no-eval",
        *extra,
    ]
    if nproc > 1:
        cmd.append(f"--nproc={nproc}")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def only_run_dir(out: Path) -> Path:
    runs = [p for p in (out / "ddp").iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run directory, found {runs}"
    return runs[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    dirs = []
    for nproc in (1, 2):
        out = tmp_path_factory.mktemp(f"ddp{nproc}")
        proc = run_train(out, nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
        dirs.append(only_run_dir(out))
    return dirs[0], dirs[1]


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_two_processes_reach_the_weights_of_one(runs):
    one, two = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in runs)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), atol=1e-5, rtol=0), key
    # training moved the weights: the comparison is not between two untouched initialisations
    cfg = load_config(runs[0] / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg.model, 10, 1).state_dict()
    assert max(float((one[k].float() - init[k].float()).abs().max()) for k in init) > 1e-3


def test_validation_metrics_are_gathered_without_padding_bias(runs):
    h1, h2 = history(runs[0]), history(runs[1])
    assert (
        [r["epoch"] for r in h1] == [r["epoch"] for r in h2] == ["1", "2"]
    )  # written once per epoch, by rank 0
    for a, b in zip(h1, h2, strict=True):
        assert float(a["val_acc"]) == pytest.approx(float(b["val_acc"]), abs=1e-6)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-4)
        assert float(a["train_images"]) == float(b["train_images"]) == 320


def test_files_written_once(runs):
    two = runs[1]
    names = sorted(p.name for p in two.iterdir())
    assert "config.yaml" in names and "history.csv" in names and "train_summary.json" in names
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert not [p for p in two.rglob("*.tmp")]


def test_failing_rank_fails_the_job_with_its_message(tmp_path):
    proc = run_train(tmp_path, 2, "train.batch_size=33")
    assert proc.returncode == 2  # the user-error code of the rank that failed
    output = proc.stdout + proc.stderr
    assert "not divisible by world size" in output and "DDP job failed: rank" in output
    assert "Traceback" not in output


def test_a_signal_to_the_launcher_is_one_line_and_128_plus_signal(monkeypatch, capsys):
    """torchrun forwards SIGTERM to the ranks (which save and stop) and raises SignalException in the launcher."""
    import signal

    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from imgcls import cli

    def stopped(args):
        raise SignalException("Process 1 got signal: 15", sigval=signal.SIGTERM)

    monkeypatch.setattr(torchrun, "run", stopped)
    assert cli.launch_ddp(["--standalone", "--nproc-per-node=2", "-m", "imgcls", "train"]) == 143
    err = capsys.readouterr().err
    assert "DDP job stopped by SIGTERM: the ranks saved their state" in err and "Traceback" not in err


def test_a_config_typo_is_one_line_before_torchrun_starts(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "imgcls", "train", "optim.lrr=1", "--nproc", "2", f"output.dir={tmp_path}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown config key 'optim.lrr'" in lines[0], proc.stderr
