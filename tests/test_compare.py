"""``imgcls compare``: grouping runs by config apart from the seed, mean ± std, labels that tell
same-named configs apart, Markdown/CSV tables, and the CLI on real tiny runs."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.tiny_runs import requires_fashion_mnist, shared_run

from imgcls.config import build_config
from imgcls.errors import UserError
from imgcls.evaluation.compare import compare_runs, experiment_key


def _fake_run(
    root: Path,
    name: str,
    seed: int,
    accuracy: float,
    lr: float = 1e-3,
    head: str = "linear",
    evaluated: bool = True,
) -> Path:
    run = root / name / f"seed{seed}-lr{lr}-{head}"
    run.mkdir(parents=True)
    cfg = build_config(
        {
            "optim": {"lr": lr},
            "train": {"seed": seed},
            "model": {"head": head},
            "output": {"name": name, "dir": str(root)},
        }
    )
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if evaluated:
        metrics = {
            "accuracy": accuracy,
            "macro_f1": accuracy - 0.01,
            "ece": 0.05,
            "params": 1000,
            "train_time_s": 10.0 + seed,
            "inference_img_per_s": 500.0,
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_seeds_of_one_config_are_one_row_with_mean_and_std(tmp_path):
    for seed, acc in ((1, 0.90), (2, 0.92), (3, 0.94)):
        _fake_run(tmp_path, "fch", seed, acc)
    _fake_run(tmp_path, "baseline", 1, 0.80)
    table = compare_runs([tmp_path])
    assert [r.label for r in table.rows] == ["fch", "baseline"]  # sorted by accuracy, best first
    fch = table.rows[0]
    assert sorted(fch.seeds) == [1, 2, 3]
    assert fch.mean("accuracy") == pytest.approx(0.92)
    assert fch.std("accuracy") == pytest.approx(statistics.stdev([0.90, 0.92, 0.94]))
    assert fch.mean("train_time_s") == pytest.approx(12.0)
    assert table.rows[1].std("accuracy") is None
    md = table.to_markdown()
    lines = md.splitlines()
    assert (
        lines[0]
        == "| run | backbone | head | accuracy | macro F1 | ECE | params | train time (s) | img/s | seeds |"
    )
    assert "| fch | `adaptive_cnn` | `linear` | 0.9200 ± 0.0200 |" in md
    assert "3: 1, 2, 3" in md and "mean ± sample standard deviation" in md


def test_same_name_different_config_rows_are_labelled_by_the_difference(tmp_path):
    _fake_run(tmp_path, "sweep", 1, 0.8, lr=1e-3)
    _fake_run(tmp_path, "sweep", 1, 0.9, lr=3e-3)
    _fake_run(tmp_path, "sweep", 2, 0.7, lr=3e-3)
    rows = compare_runs([tmp_path], sort_by=None).rows
    labels = sorted(r.label for r in rows)
    assert labels == ["sweep (optim.lr=0.001)", "sweep (optim.lr=0.003)"]
    assert {len(r.runs) for r in rows} == {1, 2}


def test_experiment_key_ignores_seed_and_paths_only():
    a = build_config({"train": {"seed": 1}, "output": {"dir": "/a"}}).model_dump(mode="json")
    b = build_config({"train": {"seed": 2}, "output": {"dir": "/b"}, "data": {"num_workers": 0}}).model_dump(
        mode="json"
    )
    c = build_config({"train": {"seed": 1, "epochs": 3}}).model_dump(mode="json")
    assert experiment_key(a) == experiment_key(b) != experiment_key(c)


def test_csv_has_mean_and_std_columns(tmp_path):
    _fake_run(tmp_path, "a", 1, 0.5)
    _fake_run(tmp_path, "a", 2, 0.7)
    rows = list(csv.DictReader(io.StringIO(compare_runs([tmp_path]).to_csv())))
    assert len(rows) == 1
    assert rows[0]["run"] == "a" and rows[0]["num_runs"] == "2" and rows[0]["seeds"] in ("1 2", "2 1")
    assert float(rows[0]["accuracy"]) == pytest.approx(0.6)
    assert float(rows[0]["accuracy_std"]) == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert {"macro_f1", "ece", "params", "train_time_s", "inference_img_per_s"} <= set(rows[0])


def test_unevaluated_runs_are_skipped_and_empty_input_is_a_user_error(tmp_path):
    done = _fake_run(tmp_path, "x", 1, 0.5)
    pending = _fake_run(tmp_path, "y", 1, 0.0, evaluated=False)
    table = compare_runs([done, pending])
    assert len(table.rows) == 1 and "not evaluated yet" in table.skipped[0]
    with pytest.raises(UserError, match="no evaluated runs"):
        compare_runs([pending])
    with pytest.raises(UserError, match="does not exist"):
        compare_runs([tmp_path / "missing"])
    with pytest.raises(UserError, match="cannot sort"):
        compare_runs([done], sort_by="bogus")


@requires_fashion_mnist
def test_cli_compare_two_tiny_runs(tmp_path_factory, tmp_path):
    """Two real tiny runs of one config with different seeds (the second a copy whose seed and metrics differ)."""
    first = shared_run(tmp_path_factory)
    runs = tmp_path / "runs"
    a, b = runs / "tiny" / "a", runs / "tiny" / "b"
    for dst in (a, b):
        shutil.copytree(
            first, dst, ignore=shutil.ignore_patterns("checkpoints", "*.png", "*.safetensors", "tensorboard")
        )
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["train"]["seed"] = cfg["train"]["seed"] + 1
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = json.loads((b / "metrics.json").read_text())
    metrics["accuracy"] -= 0.02
    (b / "metrics.json").write_text(json.dumps(metrics))
    acc_a = json.loads((a / "metrics.json").read_text())["accuracy"]

    out_file = tmp_path / "table.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "imgcls", "compare", str(runs), "--format", "csv", "-o", str(out_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out_file.open()))
    assert len(rows) == 1 and rows[0]["num_runs"] == "2" and rows[0]["backbone"] == "adaptive_cnn"
    assert float(rows[0]["accuracy"]) == pytest.approx(acc_a - 0.01)
    assert float(rows[0]["accuracy_std"]) == pytest.approx(statistics.stdev([acc_a, acc_a - 0.02]))
    assert float(rows[0]["params"]) > 0 and float(rows[0]["inference_img_per_s"]) > 0

    proc = subprocess.run(
        [sys.executable, "-m", "imgcls", "compare", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_api_compare_formats(tmp_path):
    from imgcls import api

    _fake_run(tmp_path, "r", 1, 0.5)
    assert api.compare([tmp_path]).startswith("| run | backbone |")
    assert api.compare([tmp_path], fmt="csv").startswith(
        "run,backbone,head,num_runs,seeds,accuracy,accuracy_std"
    )
    with pytest.raises(UserError, match="markdown or csv"):
        api.compare([tmp_path], fmt="xlsx")


def test_reruns_of_one_seed_are_marked_not_passed_off_as_a_seed_spread(tmp_path):
    _fake_run(tmp_path, "fch", 1, 0.90)
    again = _fake_run(tmp_path, "fch", 2, 0.90)
    config = yaml.safe_load((again / "config.yaml").read_text())
    config["train"]["seed"] = 1  # a rerun of seed 1
    (again / "config.yaml").write_text(yaml.safe_dump(config))
    md = compare_runs([tmp_path]).to_markdown()
    assert "2: 1, 1 *(repeated seeds)*" in md and "their ± is not seed-to-seed variation" in md


def test_a_re_evaluation_on_other_data_gets_a_row_of_its_own(tmp_path):
    _fake_run(tmp_path, "fch", 1, 0.90)
    other = _fake_run(tmp_path, "fch", 2, 0.50)
    metrics = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(
        json.dumps({**metrics, "evaluation_overrides": ["data.test_subset=100"]})
    )
    table = compare_runs([tmp_path])
    assert len(table.rows) == 2 and all(r.std("accuracy") is None for r in table.rows)
    assert any("data.test_subset=100" in r.label for r in table.rows)


def test_the_api_expands_globs_and_takes_one_path(tmp_path):
    from imgcls import api

    _fake_run(tmp_path, "fch", 1, 0.90)
    _fake_run(tmp_path, "base", 1, 0.80)
    assert api.compare(str(tmp_path)).count("\n| ") == 2  # one folder, not its characters
    assert api.compare([f"{tmp_path}/*/*"]).count("\n| ") == 2
    with pytest.raises(UserError, match=r"'.*/nothing\*' matches no folder"):
        api.compare([f"{tmp_path}/nothing*"])


def test_eval_plot_switches_do_not_split_rows(tmp_path):
    _fake_run(tmp_path, "fch", 1, 0.90)
    other = _fake_run(tmp_path, "fch", 2, 0.92)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["eval"]["plots"] = not config["eval"]["plots"]
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    assert len(compare_runs([tmp_path]).rows) == 1


def test_one_damaged_run_is_skipped_with_its_reason_and_the_others_compared(tmp_path):
    _fake_run(tmp_path, "good", 1, 0.90)
    listed = _fake_run(tmp_path, "list", 1, 0.80)
    (listed / "metrics.json").write_text("[1, 2]")
    garbage = _fake_run(tmp_path, "garbage", 1, 0.80)
    (garbage / "config.yaml").write_bytes(b"\xff\xfe: [")
    summary = _fake_run(tmp_path, "summary", 1, 0.70)
    metrics = json.loads((summary / "metrics.json").read_text())
    del metrics["train_time_s"]
    (summary / "metrics.json").write_text(json.dumps(metrics))
    (summary / "train_summary.json").write_text("not json")
    table = compare_runs([tmp_path])
    assert [r.label for r in table.rows] == ["good", "summary"]
    assert table.rows[1].mean("train_time_s") is None
    reasons = "\n".join(table.skipped)
    assert "its metrics.json holds a list, not a mapping" in reasons and str(garbage) in reasons
    assert all("\n" not in reason for reason in table.skipped)
    with pytest.raises(UserError, match="no readable evaluated runs to compare"):
        compare_runs([listed])
