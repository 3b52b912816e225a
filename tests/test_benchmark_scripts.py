"""Issue 11: the speed benchmarks' ``--quick`` modes run end to end and write valid JSON and Markdown
(smoke runs only: no speed or accuracy is asserted, those are benchmark figures, not test outcomes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.tiny_runs import requires_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, tmp_path: Path, *args: str) -> None:
    env = {**os.environ, "IMGCLS_BENCHMARK_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@requires_fashion_mnist
def test_time_to_accuracy_quick_writes_every_row(tmp_path):
    run_quick("time_to_accuracy.py", tmp_path, "--rows", "fast92,peer")
    result = json.loads((tmp_path / "time_to_accuracy_quick.json").read_text())
    assert result["quick"] is True and set(result["rows"]) == {"fast92", "peer"}
    for row in result["rows"].values():
        (run,) = row["runs"]
        assert run["seed"] == 0 and run["train_s"] > 0 and 0.0 <= run["test_acc"] <= 1.0
        assert row["test_acc_mean"] == pytest.approx(run["test_acc"])
    md = (tmp_path / "time_to_accuracy_quick.md").read_text()
    assert "| fast92 | 1 |" in md and "no accuracy claim" in md


@requires_fashion_mnist
def test_profile_epoch_quick_accounts_for_the_epoch(tmp_path):
    run_quick("profile_epoch.py", tmp_path, "--backbone", "adaptive_cnn")
    result = json.loads((tmp_path / "profile_epoch_quick.json").read_text())
    phases = result["phases"]
    parts = sum(phases[f"{k}_s"] for k in ("loader", "augment", "forward_backward", "optimizer", "metrics"))
    assert 0 < parts <= phases["total_s"] * 1.001  # the phases are inside the epoch's wall time
    assert phases["images"] == result["batch"] * result["steps"]
    assert result["ceiling_img_per_s"] > 0 and result["top_ops"] and result["top_ops"][0]["self_cpu_ms"] > 0


@requires_fashion_mnist
def test_peers_quick_compares_every_format_and_imgcls(tmp_path):
    run_quick("peers.py", tmp_path, "--backbone", "adaptive_cnn")
    result = json.loads((tmp_path / "peers_quick.json").read_text())
    formats = {(c["precision"], c["channels_last"]) for c in result["ceilings"]}
    assert formats == {("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)}
    im = result["imgcls"]
    assert im["img_per_s"] > 0 and im["ratio_to_own_ceiling"] > 0 and im["candidates"]
    assert result["plain_pytorch"]["img_per_s"] > 0
    assert "imgcls / best-format ceiling" in (tmp_path / "peers_quick.md").read_text()


@pytest.mark.slow  # torch.compile's inductor builds C++ kernels: minutes on 2 cores
@requires_fashion_mnist
def test_compile_cpu_quick_times_eager_and_compiled(tmp_path):
    run_quick("compile_cpu.py", tmp_path, "--recipes", "fast92")
    row = json.loads((tmp_path / "compile_cpu_quick.json").read_text())["rows"]["fast92"]
    assert len(row["epoch_s"]["eager"]) == len(row["epoch_s"]["compiled"]) == 2
    assert row["eager_ms"] > 0 and row["recipe_steps"] == 4 * 223  # 4 epochs of ceil(57,000 / 256) steps
    formats = {(c["precision"], c["channels_last"]) for c in row["compiled"]}
    assert formats == {("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)}
    for c in row["compiled"]:
        assert c["compile_s"] > 0 and c["compiled_ms"] > 0
        assert c["speedup"] == pytest.approx(row["eager_ms"] / c["compiled_ms"])
    assert row["execution"]["precision"] in {"fp32", "bf16"}
    assert "saving over the recipe" in (tmp_path / "compile_cpu_quick.md").read_text()
