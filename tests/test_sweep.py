"""`imgcls sweep` (issue 12): the search-space parser, a tiny Optuna sweep end to end on SQLite, resume
after the sweep process is killed, pruning, two workers sharing one study, and the test split never
being read by a trial."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from imgcls import api
from imgcls.config import load_config
from imgcls.engine import sweep as sw
from imgcls.engine.search_space import load_space, parse_space
from imgcls.errors import ConfigError
from tiny_runs import requires_fashion_mnist, single_thread

#: a tiny experiment: quarter-width AdaptiveCNN, 800 training images (720 train / 80 val), one thread
TINY = [
    "data.train_subset=800",
    "data.test_subset=300",
    "model.backbone_args={layout: mnist, width_mult: 0.25}",
    "train.epochs=1",
    "train.batch_size=32",
    "train.progress=false",
    "train.threads=1",
    "output.tensorboard=false",
    "optim.weight_decay=0.0",
    "eval.plots=false",
    "eval.embeddings_plot=false",
    "eval.gradcam=false",
]
LR_SPACE = {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}


def _best_val_acc(run_dir: str | Path) -> tuple[float, int]:
    rows = list(csv.DictReader((Path(run_dir) / "history.csv").read_text().splitlines()))
    return max(float(r["val_acc"]) for r in rows), len(rows)


def _src_env() -> dict[str, str]:
    import imgcls

    src = str(Path(imgcls.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}


# ------------------------------------------------------------------------------------ search space
def test_each_distribution_parses_samples_in_range_and_becomes_config_overrides():
    space = parse_space(
        {
            "optim.lr": {"log_uniform": [1.0e-4, 1.0e-1]},
            "model.drop_rate": {"uniform": [0.0, 0.5]},
            "train.batch_size": {"int_uniform": [32, 128, 32]},
            "model.head_args.order": {"choice": [1, 2, 4]},
            "model.backbone_args": {"choice": [{"layout": "mnist"}, {"layout": "mnist", "width_mult": 0.5}]},
        }
    )
    kinds = {p.key: p.kind for p in space.params}
    assert kinds == {
        "optim.lr": "log_uniform",
        "model.drop_rate": "uniform",
        "train.batch_size": "int_uniform",
        "model.head_args.order": "choice",
        "model.backbone_args": "choice",
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(40):
        values = space.suggest(study.ask())
        seen.append(values)
        assert 1e-4 <= values["optim.lr"] <= 1e-1
        assert 0.0 <= values["model.drop_rate"] <= 0.5
        assert values["train.batch_size"] in (32, 64, 96, 128)
        assert values["model.head_args.order"] in (1, 2, 4)
        assert values["model.backbone_args"] in ({"layout": "mnist"}, {"layout": "mnist", "width_mult": 0.5})
    # log-uniform: about half the draws below the geometric midpoint 3.2e-3 (uniform would put ~3 % there)
    below = sum(v["optim.lr"] < 10**-2.5 for v in seen)
    assert 10 <= below <= 30
    assert {v["model.backbone_args"].get("width_mult") for v in seen} == {
        None,
        0.5,
    }  # dicts decoded from JSON
    cfg = load_config(None, ["model.head=fch", *space.overrides(seen[0])])
    assert cfg.optim.lr == seen[0]["optim.lr"] and cfg.train.batch_size == seen[0]["train.batch_size"]
    assert cfg.model.head_args["order"] == seen[0]["model.head_args.order"]
    assert cfg.model.backbone_args == seen[0]["model.backbone_args"]
    assert parse_space(space.to_dict()) == space  # the YAML form written into the sweep folder round-trips


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"optim.lr": {"loguniform": [1e-4, 1e-1]}},
            "search space 'optim.lr': unknown distribution 'loguniform'; did you mean 'log_uniform'?",
        ),
        ({"optim.lr": {"log_uniform": [0.0, 1e-1]}}, "search space 'optim.lr': log_uniform needs 0 < low"),
        ({"optim.lr": {"uniform": [0.1, 0.01]}}, "search space 'optim.lr': uniform needs low < high"),
        ({"optim.lr": {"uniform": [0.1]}}, "search space 'optim.lr': uniform needs [low, high]"),
        (
            {"train.epochs": {"int_uniform": [1, 2.5]}},
            "search space 'train.epochs': int_uniform bounds must be integers",
        ),
        (
            {"train.epochs": {"int_uniform": [1, 10, 4]}},
            "search space 'train.epochs': int_uniform step 4 must",
        ),
        ({"model.head": {"choice": []}}, "search space 'model.head': choice needs a non-empty list"),
        ({"model.head": "linear"}, "search space 'model.head' must be a mapping with one distribution"),
        ({"optim.lr": {"uniform": [1e-3, 1e-2], "choice": [1]}}, "search space 'optim.lr' must be a mapping"),
        ([], "search space must be a non-empty mapping"),
    ],
)
def test_bad_spaces_give_one_line_errors_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_space(raw)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"optim.lrr": {"log_uniform": [1e-4, 1e-1]}},
            "search space 'optim.lrr' (value 0.0001): unknown config key 'optim.lrr'; did you mean 'optim.lr'?",
        ),
        (
            {"optim.lr": {"uniform": [0.0, 0.1]}},
            "search space 'optim.lr' (value 0.0): invalid value 0.0 for 'optim.lr'",
        ),
        (
            {"optim.name": {"choice": ["adamw", "lion"]}},
            "search space 'optim.name' (value \"lion\"): invalid value 'lion'",
        ),
        (
            {"train.monitor": {"choice": ["val_acc", "val_loss"]}},
            "search space 'train.monitor': a sweep cannot tune",
        ),
        ({"output.dir": {"choice": ["a", "b"]}}, "search space 'output.dir': a sweep cannot tune"),
        (
            {"model.head_args.order": {"choice": [1, 2]}},
            "search space 'model.head_args.order' (value 1): unknown config key 'model.head_args.order'",
        ),
    ],
)
def test_spaces_that_make_invalid_configs_are_rejected_before_any_trial(tmp_path, raw, message):
    with pytest.raises(ConfigError) as info:
        sw.make_plan(load_config(None, []), raw, trials=2, out=tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "study.db").exists()


def test_space_files_and_shipped_sweep_spaces_parse(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim.lr: {log_uniform: [1e-4, 1e-1]\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_space(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "missing.yaml")
    root = Path(__file__).parent.parent
    for name, config in (
        ("linear", "fashion_mnist_hier/linear.yaml"),
        ("fch", "fashion_mnist/fch_rbf.yaml"),
        ("arcface", "fashion_mnist_hier/arcface.yaml"),
        ("sphere", "fashion_mnist_hier/sphere_hier.yaml"),
    ):
        space = load_space(root / "configs" / "sweeps" / f"{name}.yaml")
        assert {"optim.lr", "optim.weight_decay"} <= set(space.keys) and len(space.keys) == 3
        space.check_against(load_config(root / "configs" / config))


# ------------------------------------------------------------------------------------ sweeps
class _ForbiddenSplit:
    """Stands in for the test split while a trial trains: touching it (length, images, labels, a
    loader over it) fails the test. Only the list of unreadable files is answered (nothing is read)."""

    skipped: list[str] = []

    def __getattr__(self, name):
        raise AssertionError(f"a sweep trial touched the test split (.{name})")

    def __len__(self):
        raise AssertionError("a sweep trial touched the test split (len)")


@requires_fashion_mnist
def test_tiny_sweep_end_to_end_never_reads_the_test_split(tmp_path, monkeypatch):
    real_train, real_prepare, real_evaluate = api.train, api.prepare_data, api.evaluate
    state = {"in_trial": False, "trials": 0, "evaluated": []}

    def guarded_prepare(cfg, **kw):
        data = real_prepare(cfg, **kw)
        if state["in_trial"]:
            data.test = _ForbiddenSplit()
        return data

    def guarded_train(cfg, overrides=None, *, callbacks=None, evaluate_after=True, **kw):
        in_trial = any(isinstance(c, sw.PruningReporter) for c in callbacks or [])
        assert not (in_trial and evaluate_after), "a trial asked for a test-set evaluation"
        state["in_trial"], state["trials"] = in_trial, state["trials"] + in_trial
        try:
            return real_train(cfg, overrides, callbacks=callbacks, evaluate_after=evaluate_after, **kw)
        finally:
            state["in_trial"] = False

    def recording_evaluate(run_dir, *a, **kw):
        assert not state["in_trial"]
        state["evaluated"].append(Path(run_dir))
        return real_evaluate(run_dir, *a, **kw)

    monkeypatch.setattr(api, "train", guarded_train)
    monkeypatch.setattr(api, "prepare_data", guarded_prepare)
    monkeypatch.setattr(api, "evaluate", recording_evaluate)
    cfg = load_config(None, [*TINY, f"output.dir={tmp_path / 'runs'}", "output.name=tiny"])
    with single_thread():
        result = api.sweep(cfg, LR_SPACE, trials=3, out=tmp_path / "sweep", final_seeds=2, seed=3)

    out = tmp_path / "sweep"
    assert state["trials"] == 3
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["storage"] == f"sqlite:///{(out / 'study.db').resolve()}"
    rows = summary["trials"]
    assert [r["number"] for r in rows] == [0, 1, 2] and all(r["state"] == "complete" for r in rows)
    assert (
        rows[0]["params"] == {"optim.lr": 1e-3} and "baseline" in rows[0]["note"]
    )  # the config's own lr first
    for r in (
        rows
    ):  # each trial is an ordinary run: its own dir, config and history; the value is its best val_acc
        run_dir = Path(r["run_dir"])
        assert run_dir.parent.parent == out / "trials" and run_dir.parent.name == f"trial_{r['number']:04d}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(
            r["params"]["optim.lr"]
        )
        assert _best_val_acc(run_dir)[0] == pytest.approx(r["value"])
        assert not (run_dir / "metrics.json").exists()  # never evaluated
    best = max(rows, key=lambda r: r["value"])
    assert summary["best"]["number"] == best["number"] == result.best["number"]
    assert yaml.safe_load((out / "best_config.yaml").read_text())["optim"]["lr"] == pytest.approx(
        best["params"]["optim.lr"]
    )
    for png in ("history.png", "importance.png", "intermediate.png"):
        assert (out / png).stat().st_size > 1000
    # only the two final runs were evaluated on the test set, and the report averages them
    final = summary["final"]
    assert (
        sorted(state["evaluated"]) == sorted(Path(d) for d in final["run_dirs"])
        and len(final["run_dirs"]) == 2
    )
    assert final["seeds"] == [0, 1] and final["trial"] == best["number"]
    accs = [json.loads((Path(d) / "metrics.json").read_text())["accuracy"] for d in final["run_dirs"]]
    assert final["metrics"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    md = (out / "sweep.md").read_text()
    assert "## Final runs" in md and f"{final['metrics']['accuracy']['mean']:.4f} ± " in md
    assert md.count("| complete |") == 3

    # the same command again: the study is complete, nothing re-runs, the final seeds are kept
    state["evaluated"].clear()
    with single_thread():
        again = api.sweep(cfg, LR_SPACE, trials=3, out=out, final_seeds=2, seed=3)
    assert state["trials"] == 3 and state["evaluated"] == [] and len(again.trials) == 3
    with pytest.raises(Exception, match="another search space"):
        api.sweep(cfg, {"optim.lr": {"log_uniform": [1.0e-5, 1.0e-2]}}, trials=3, out=out)


@requires_fashion_mnist
def test_pruning_stops_a_clearly_worse_trial(tmp_path):
    cfg = load_config(None, [*TINY, "train.epochs=2", f"output.dir={tmp_path}"])
    with single_thread():
        result = api.sweep(
            cfg,
            {"optim.lr": {"log_uniform": [1.0e-7, 1.0e-2]}},
            trials=2,
            out=tmp_path / "sweep",
            baseline=False,
            prune_startup=1,
            prune_warmup=1,
            enqueue=[{"optim.lr": 3e-3}, {"optim.lr": 1e-7}],
        )
    good, bad = result.trials
    assert good["state"] == "complete" and good["epochs"] == 2
    assert bad["state"] == "pruned" and bad["epochs"] == 1 and bad["note"] == "pruned after epoch 1"
    assert bad["value"] < good["value"]
    assert _best_val_acc(bad["run_dir"])[1] == 1  # the pruned run stopped after its first epoch, history kept
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert summary["pruning"] == {
        "trial_epochs_run": 3,
        "trial_epochs_without_pruning": 4,
        "saved_fraction": 0.25,
        "pruned_trials": 1,
    }


@requires_fashion_mnist
def test_resume_after_the_sweep_process_is_killed(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({}))
    args = [
        "--space",
        str(tmp_path / "space.yaml"),
        "--trials",
        "3",
        "--out",
        str(tmp_path / "sweep"),
        "--heartbeat",
        "1",
        "--pruner",
        "none",
    ]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(LR_SPACE))
    overrides = [*TINY, "train.epochs=2", f"output.dir={tmp_path}"]
    cmd = [sys.executable, "-m", "imgcls", "sweep", str(tmp_path / "tiny.yaml"), *overrides, *args]
    proc = subprocess.Popen(cmd, env=_src_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"sqlite:///{(tmp_path / 'sweep' / 'study.db').resolve()}"
    killed, storage = None, None
    deadline = time.time() + 90
    try:
        while killed is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                storage = storage or optuna.storages.RDBStorage(url)
                trials = storage.get_all_trials(storage.get_study_id_from_name("tiny-space"))
            except Exception:  # the database or the study does not exist yet
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
            if running:  # mid-run: at least one epoch reported, more to come
                proc.send_signal(signal.SIGKILL)
                killed = running[0].number
    finally:
        proc.kill()
        proc.wait()
    assert killed is not None, "the sweep never reached a running trial"

    cfg = load_config(tmp_path / "tiny.yaml", overrides)
    with single_thread():
        result = api.sweep(
            cfg, tmp_path / "space.yaml", trials=3, out=tmp_path / "sweep", heartbeat=1, pruner="none"
        )
    rows = {r["number"]: r for r in result.trials}
    assert rows[killed]["state"] == "fail" and not rows[killed]["counted"]
    retry = next(r for r in rows.values() if "retry of trial" in r["note"])
    assert retry["note"].startswith(f"retry of trial {killed}") and retry["state"] == "complete"
    assert retry["params"] == rows[killed]["params"] and retry["epochs"] == 2
    assert f"retried as trial {retry['number']}" in rows[killed]["note"]
    counted = [r for r in rows.values() if r["counted"]]
    assert len(counted) == 3 and all(r["state"] == "complete" for r in counted)
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["trials_counted"] == 3


@requires_fashion_mnist
def test_two_workers_share_one_study_without_lost_or_duplicated_trials(tmp_path):
    cfg = load_config(None, [*TINY, f"output.dir={tmp_path}", "output.name=pair"])
    space = {**LR_SPACE, "optim.weight_decay": {"log_uniform": [1.0e-5, 1.0e-1]}}
    result = api.sweep(cfg, space, trials=4, out=tmp_path / "sweep", workers=2, pruner="none", baseline=False)
    rows = result.trials
    counted = [r for r in rows if r["counted"]]
    assert 4 <= len(counted) <= 5  # two workers can both start the last trial: at most K − 1 extra
    assert [r["number"] for r in rows] == list(range(len(rows)))
    assert all(r["state"] == "complete" for r in rows)
    assert len({r["run_dir"] for r in rows}) == len(rows)  # every trial has its own run
    assert len({json.dumps(r["params"], sort_keys=True) for r in rows}) == len(
        rows
    )  # workers draw distinct params
    for r in rows:  # each recorded value is its own run's result (nothing lost or crossed between workers)
        assert _best_val_acc(r["run_dir"])[0] == pytest.approx(r["value"])
    study = optuna.load_study(
        study_name="pair", storage=f"sqlite:///{(tmp_path / 'sweep' / 'study.db').resolve()}"
    )
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert all("(worker 1)" in w or "(worker 2)" in w for w in workers)
    assert len(workers) == 2, f"both worker processes should have run trials: {workers}"


def test_failed_runs_count_as_results_and_the_objective_follows_eval_checkpoint(tmp_path):
    """No training: a stand-in train function. A run that fails by itself (diverged loss, bad head
    argument) is a counted, failed trial with its error; the sweep goes on to the budget."""
    from types import SimpleNamespace

    from imgcls.errors import TrainingError

    def fake_train(cfg, callbacks):
        if cfg.optim.lr > 3e-3:
            raise TrainingError("loss became nan at epoch 1")
        history = [
            {"epoch": 1, "val_acc": 0.6, "val_loss": 0.9},
            {"epoch": 2, "val_acc": 0.5, "val_loss": 1.1},
        ]
        return SimpleNamespace(
            run_dir=None, history=[{**h, "val_acc": h["val_acc"] * cfg.optim.lr * 1e3} for h in history]
        )

    cfg = load_config(None, ["train.epochs=2"])
    plan = sw.make_plan(
        cfg, {"optim.lr": {"log_uniform": [1e-4, 1e-2]}}, trials=6, out=tmp_path, pruner="none", seed=1
    )
    study = sw.open_study(plan)
    sw.enqueue_baseline(plan, study, [{"optim.lr": 9e-3}])
    sw.run_worker(plan, study, fake_train)
    rows = sw.trial_rows(study)
    assert len(rows) == 6 and all(r["counted"] for r in rows)
    failed = [r for r in rows if r["state"] == "fail"]
    assert failed and all(
        r["params"]["optim.lr"] > 3e-3 and r["note"] == "error: loss became nan at epoch 1" for r in failed
    )
    for r in rows:
        if r["state"] == "complete":  # eval.checkpoint=best: the best epoch's val_acc (epoch 1), not the last
            assert r["value"] == pytest.approx(0.6 * r["params"]["optim.lr"] * 1e3)
    history = [
        {"epoch": 1, "val_acc": 0.6, "val_loss": 0.9, "ema_val_acc": 0.7},
        {"epoch": 2, "val_acc": 0.5, "val_loss": 0.8, "ema_val_acc": 0.65},
    ]
    assert sw.objective_value(history, "val_acc", "last") == 0.5
    assert sw.objective_value(history, "val_loss", "best") == 0.8
    assert sw.objective_value(history, "val_acc", "ema") == 0.65


def test_a_signalled_trial_stops_the_sweep_is_not_counted_and_is_retried(tmp_path):
    """SIGTERM/SIGINT reach the trainer, which saves and raises TrainingInterrupted: the sweep must stop
    (exit code 128 + signal), not count the trial as a failed result and go on; the resumed sweep re-runs
    it with the same parameters."""
    from types import SimpleNamespace

    from imgcls.errors import TrainingInterrupted

    ran = []

    def fake_train(cfg, callbacks):
        ran.append(cfg.optim.lr)
        if len(ran) == 2 and signalled:
            raise TrainingInterrupted("stopped by SIGTERM at epoch 1, after step 3; saved RUN_DIR", 143)
        return SimpleNamespace(run_dir=None, history=[{"epoch": 1, "val_acc": cfg.optim.lr * 10}])

    cfg = load_config(None, ["train.epochs=1"])
    plan = sw.make_plan(
        cfg, {"optim.lr": {"log_uniform": [1e-4, 1e-2]}}, trials=3, out=tmp_path, pruner="none", seed=1
    )
    study = sw.open_study(plan)
    signalled = True
    with pytest.raises(
        TrainingInterrupted, match="stopped by SIGTERM during trial 1, which is queued again"
    ) as info:
        sw.run_worker(plan, study, fake_train)
    assert info.value.exit_code == 143 and len(ran) == 2  # no trial ran after the signal
    assert sw.counts(study).done == 1 and sw.counts(study).waiting == 1

    signalled = False
    sw.run_worker(plan, sw.open_study(plan), fake_train)
    rows = {r["number"]: r for r in sw.trial_rows(sw.open_study(plan))}
    assert rows[1]["state"] == "fail" and not rows[1]["counted"]
    retry = next(r for r in rows.values() if "retry of trial 1" in r["note"])
    assert retry["state"] == "complete" and retry["params"] == rows[1]["params"]
    assert ran[2] == pytest.approx(ran[1])  # the retry ran first on resume, with the signalled trial's lr
    assert sum(r["counted"] for r in rows.values()) == 3


def test_cli_sweep_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from imgcls import cli

    (tmp_path / "space.yaml").write_text("optim.lr: {log_uniform: [0, 1.0e-1]}\n")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "imgcls",
            "sweep",
            "configs/quickstart.yaml",
            "--space",
            str(tmp_path / "space.yaml"),
            "--out",
            str(tmp_path / "sweep"),
        ],
    )
    monkeypatch.chdir(Path(__file__).parent.parent)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: search space 'optim.lr': log_uniform needs 0 < low") and "\n" not in err
