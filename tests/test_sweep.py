"""`imgcls sweep` (issue 12): the search-space parser, a tiny Optuna sweep end to end on SQLite, resume
after the sweep process is killed, pruning, two workers sharing one study, and the test split never
being read by a trial."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from imgcls import api
from imgcls.config import load_config
from imgcls.engine import sweep as sw
from imgcls.engine.callbacks import Callback
from imgcls.engine.search_space import load_space, parse_space
from imgcls.errors import ConfigError, TrainingInterrupted, UserError
from imgcls.runtime.signals import graceful_stop, request_stop, stop_requested
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


def _trials_so_far(url: str, storage):
    """``(storage, the tiny study's trials)`` once its database and study exist, else ``(storage, None)``."""
    try:
        storage = storage or optuna.storages.RDBStorage(url)
        return storage, storage.get_all_trials(storage.get_study_id_from_name("tiny-space"))
    except Exception:  # the database or the study does not exist yet
        return storage, None


@pytest.mark.slow  # ≈ 13 s (a real sweep killed with SIGKILL); the retry continuing a run is covered by test_a_retried_trial_continues_the_interrupted_run_from_its_checkpoint
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
            storage, trials = _trials_so_far(url, storage)
            if trials is None:
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
    # the killed run had finished an epoch (its checkpoint was written before the epoch was reported): the
    # retry continued that run in its folder instead of training from scratch
    assert Path(retry["run_dir"]).parent == tmp_path / "sweep" / "trials" / f"trial_{killed:04d}"
    assert f"retried as trial {retry['number']}" in rows[killed]["note"]
    counted = [r for r in rows.values() if r["counted"]]
    assert len(counted) == 3 and all(r["state"] == "complete" for r in counted)
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["trials_counted"] == 3


@pytest.mark.slow  # ≈ 13 s (two real workers); trial-number seeding and the worker handling are covered by the fast tests above
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


# ------------------------------------------------------------------------------------ signals, resume, seeds
@contextlib.contextmanager
def _signals_must_be_handled() -> Iterator[None]:
    """While a sweep runs in this process, SIGTERM/SIGINT/SIGHUP must meet the sweep's own handlers: one that
    reaches these instead (Python's default would end pytest) fails the test."""

    def unhandled(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} was not handled by the sweep")

    previous = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _StopAfterFirstEpoch(Callback):
    """Asks the trainer to stop after epoch 1 as a SIGTERM would (it saves its checkpoint and raises)."""

    name = "test_stop_after_first_epoch"

    def on_epoch_end(self, trainer, metrics):
        if metrics["epoch"] == 1:
            request_stop(signal.SIGTERM)


def _stop_first_run_under(monkeypatch, part: str, seed: int | None = None) -> dict[str, int]:
    """The first run whose folder has ``part`` in its path (and ``train.seed`` = seed, when given) stops after
    its first epoch as if SIGTERM had arrived; returns a counter of the runs started (new / resumed)."""
    real_build, real_train = api.build_callbacks, api.train
    state = {"armed": 1, "new": 0, "resumed": 0}

    def build_callbacks(cfg, run_dir):
        callbacks = real_build(cfg, run_dir)
        if state["armed"] and part in str(run_dir) and seed in (None, cfg.train.seed):
            state["armed"] = 0
            callbacks.append(_StopAfterFirstEpoch())
        return callbacks

    def counting_train(cfg=None, overrides=None, *, resume=None, **kw):
        state["resumed" if resume is not None else "new"] += 1
        return real_train(cfg, overrides, resume=resume, **kw)

    monkeypatch.setattr(api, "build_callbacks", build_callbacks)
    monkeypatch.setattr(api, "train", counting_train)
    return state


def test_graceful_stop_nests_and_a_nested_use_keeps_a_pending_request():
    """A sweep worker holds graceful_stop() for its whole run and api.train enters it again for each trial: a
    signal during a trial's setup (before api.train's own block) must survive the inner entry."""
    with graceful_stop():
        request_stop(signal.SIGTERM)
        with graceful_stop():
            assert stop_requested() == signal.SIGTERM  # not cleared on a nested entry
        assert stop_requested() == signal.SIGTERM  # nor on a nested exit: the outer block acts on it
    assert stop_requested() is None  # the outermost block clears it
    request_stop(signal.SIGINT)  # a stale request from before is still cleared by an outermost block
    with graceful_stop():
        assert stop_requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        with graceful_stop():
            assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGINT)
            assert stop_requested() == signal.SIGTERM
    assert stop_requested() is None


_FAKE_WORKER = """
import os, signal, sys, time, pathlib
got = []
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda n, f: got.append(n))
folder, index = pathlib.Path(sys.argv[1]), sys.argv[2]
(folder / f"quiet{index}").write_text(os.environ.get("IMGCLS_QUIET_INTERRUPTION", ""))
(folder / f"ready{index}").write_text(f"{os.getpid()} {os.getpgid(0)}")
start = time.time()
while not got and time.time() - start < 20:
    time.sleep(0.01)
time.sleep(0.3)  # a second delivery of the same signal would arrive now
(folder / f"got{index}").write_text(" ".join(map(str, got)))
sys.exit(128 + got[0] if got else 0)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_local_workers_get_a_signal_to_the_sweep_once_and_the_sweep_stops_in_one_line(
    tmp_path, monkeypatch, signum
):
    """`--workers K`: a signal to the parent is forwarded to every worker (each gets it exactly once: they run
    in their own session, so a Ctrl-C to the terminal's process group does not reach them twice), the
    parent waits for them and stops with one line and 128 + signal, not "failed" or a silent exit."""
    plan = sw.make_plan(load_config(None, []), LR_SPACE, trials=4, out=tmp_path / "sweep", study="pair")
    monkeypatch.setattr(
        sw, "worker_command", lambda plan, i: [sys.executable, "-c", _FAKE_WORKER, str(tmp_path), str(i)]
    )

    def signal_the_parent_once_workers_are_up():
        deadline = time.time() + 30
        while time.time() < deadline and not all((tmp_path / f"ready{i}").exists() for i in (1, 2)):
            time.sleep(0.02)
        time.sleep(0.1)
        signal.pthread_kill(threading.main_thread().ident, signum)  # interrupts the parent's wait

    sender = threading.Thread(target=signal_the_parent_once_workers_are_up, daemon=True)
    sender.start()
    with _signals_must_be_handled(), pytest.raises(TrainingInterrupted) as info:
        sw.run_local_workers(plan, 2)
    sender.join()
    assert info.value.exit_code == 128 + signum
    message = str(info.value)
    assert message.startswith(
        f"sweep 'pair' stopped by {signal.Signals(signum).name}: its 2 worker(s) stopped"
    )
    assert "rerun the same `imgcls sweep` command to resume" in message and "\n" not in message
    for i in (1, 2):
        assert (tmp_path / f"got{i}").read_text() == str(int(signum))  # once, not twice
        _, pgid = map(int, (tmp_path / f"ready{i}").read_text().split())
        assert pgid != os.getpgrp()  # their own session: a terminal's Ctrl-C reaches only the parent
        assert (tmp_path / f"quiet{i}").read_text() == "1"  # the parent's line is the only one


def test_a_local_sweep_worker_leaves_the_interruption_line_to_its_parent(monkeypatch, capsys):
    from imgcls import cli
    from imgcls.runtime.signals import QUIET_INTERRUPTION_ENV

    sigint = signal.getsignal(signal.SIGINT)
    try:
        for quiet, expected in (("1", ""), (None, "interrupted: stopped by SIGTERM\n")):
            if quiet is None:
                monkeypatch.delenv(QUIET_INTERRUPTION_ENV, raising=False)
            else:
                monkeypatch.setenv(QUIET_INTERRUPTION_ENV, quiet)
            with pytest.raises(SystemExit) as info:
                cli.exit_interrupted(143, "interrupted: stopped by SIGTERM")
            assert info.value.code == 143
            assert capsys.readouterr().err == expected
    finally:
        signal.signal(signal.SIGINT, sigint)


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ((143, 143), (TrainingInterrupted, 143, "stopped: worker(s) #1 by SIGTERM, #2 by SIGTERM")),
        ((130, -15), (TrainingInterrupted, 130, "stopped: worker(s) #1 by SIGINT, #2 by SIGTERM")),
        ((143, 1), (UserError, None, "sweep worker(s) #1 (exit code 143), #2 (exit code 1) failed")),
        ((0, -9), (UserError, None, "sweep worker(s) #2 (killed by SIGKILL) failed")),
    ],
)
def test_workers_stopped_by_signals_are_an_interruption_not_a_failure(tmp_path, monkeypatch, codes, expected):
    plan = sw.make_plan(load_config(None, []), LR_SPACE, trials=4, out=tmp_path / "sweep", study="pair")
    script = "import os, sys\nc = int(sys.argv[1])\nos.kill(os.getpid(), -c) if c < 0 else sys.exit(c)"
    monkeypatch.setattr(
        sw, "worker_command", lambda plan, i: [sys.executable, "-c", script, str(codes[i - 1])]
    )
    kind, code, text = expected
    with pytest.raises(kind) as info:
        sw.run_local_workers(plan, 2)
    assert type(info.value) is kind and text in str(info.value) and "\n" not in str(info.value)
    if code is not None:
        assert info.value.exit_code == code and "rerun the same `imgcls sweep` command" in str(info.value)


@pytest.mark.slow  # ≈ 20 s (the real CLI, two training workers); the stand-in worker tests above cover the forwarding
@requires_fashion_mnist
def test_sigterm_to_a_sweep_with_two_workers_stops_the_workers_and_reports(tmp_path):
    """The audit's case: SIGTERM to `imgcls sweep --workers 2` while both workers train. Before, the parent
    exited 143 silently and the workers went on training, re-parented to PID 1."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(LR_SPACE))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({}))
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "imgcls",
        "sweep",
        str(tmp_path / "tiny.yaml"),
        *TINY,
        "train.epochs=3",
        f"output.dir={tmp_path}",
        "--space",
        str(tmp_path / "space.yaml"),
        "--trials",
        "3",
        "--workers",
        "2",
        "--out",
        str(out),
        "--pruner",
        "none",
    ]
    env = {**_src_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"sqlite:///{(out / 'study.db').resolve()}"
    storage, running = None, []
    deadline = time.time() + 120
    try:
        while len(running) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            storage, trials = _trials_so_far(url, storage)
            if trials is None:
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        assert len(running) == 2, "the two workers never ran trials together"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: sweep 'tiny-space' stopped by SIGTERM: its 2 worker(s) stopped"), (
        stderr
    )
    assert last.endswith("rerun the same `imgcls sweep` command to resume")
    # one line for the whole sweep: the workers' own interruptions are the parent's to report
    assert sum(line.startswith("interrupted:") for line in stderr.splitlines()) == 1, stderr
    pids = {int(t.user_attrs["worker"].split(":")[1].split()[0]) for t in running}
    for pid in pids:  # no worker goes on training after the sweep has stopped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    trials = storage.get_all_trials(storage.get_study_id_from_name("tiny-space"))
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.number in {r.number for r in running}]
    assert all(t.state == TrialState.FAIL and not t.user_attrs.get("error") for t in stopped)
    assert sum(t.state == TrialState.WAITING for t in trials) >= 2  # queued again for the resumed command
    assert (out / "sweep.md").is_file()  # the parent reported the trials it has


@pytest.mark.parametrize("when", ["during a trial's setup", "between trials"])
def test_a_signal_outside_training_stops_the_worker_with_one_line(tmp_path, when):
    """SIGTERM while a trial's data and model are being set up (before api.train's own handling) or while
    Optuna records a finished trial used to end the process silently (Python's default), leaving the trial
    RUNNING until its heartbeat turned stale."""
    from types import SimpleNamespace

    ran = []

    def fake_train(cfg, callbacks):
        ran.append(cfg.optim.lr)
        if len(ran) == 1 and when == "during a trial's setup":
            os.kill(os.getpid(), signal.SIGTERM)  # before api.train enters graceful_stop()
        with graceful_stop():  # what api.train does around training
            time.sleep(0.01)
            if (signum := stop_requested()) is not None:
                raise TrainingInterrupted(
                    "stopped by SIGTERM at epoch 1, after step 1; saved RUN_DIR", 128 + signum
                )
        if len(ran) == 1 and when == "between trials":
            os.kill(os.getpid(), signal.SIGTERM)  # after api.train has returned
            time.sleep(0.01)
        return SimpleNamespace(run_dir=None, history=[{"epoch": 1, "val_acc": cfg.optim.lr * 10}])

    plan = sw.make_plan(
        load_config(None, ["train.epochs=1"]), LR_SPACE, trials=3, out=tmp_path, pruner="none"
    )
    study = sw.open_study(plan)
    with _signals_must_be_handled(), pytest.raises(TrainingInterrupted) as info:
        sw.run_worker(plan, study, fake_train)
    assert info.value.exit_code == 143 and len(ran) == 1  # no further trial started
    c = sw.counts(study)
    assert c.running == 0
    if when == "between trials":
        assert str(info.value).startswith(f"sweep '{plan.study_name}' stopped by SIGTERM between trials;")
        assert (c.done, c.waiting) == (1, 0)
    else:
        assert str(info.value).startswith(
            f"sweep '{plan.study_name}' stopped by SIGTERM during trial 0, which"
        )
        assert (c.done, c.waiting) == (0, 1)  # not a result; queued again
    assert str(info.value).endswith("rerun the same `imgcls sweep` command to resume")


def test_trial_draws_depend_on_the_trial_number_not_on_when_a_worker_started(tmp_path):
    """Two commands that open one study at the same moment (same trials in it, same worker index) used to
    seed their samplers alike and draw the same parameters; each trial's draws now come from (seed, its
    study-unique number): different numbers differ, the same seed and number give the same draw."""
    space = {**LR_SPACE, "optim.weight_decay": {"log_uniform": [1.0e-5, 1.0e-1]}}
    cfg = load_config(None, [])

    def plan(name):
        return sw.make_plan(cfg, space, trials=6, out=tmp_path / name, seed=7)

    a, b = sw.open_study(plan("shared")), sw.open_study(plan("shared"))  # both see the same (empty) study
    ta, tb = a.ask(), b.ask()
    pa, pb = plan("shared").space.suggest(ta), plan("shared").space.suggest(tb)
    assert (ta.number, tb.number) == (0, 1) and pa != pb

    fresh = sw.open_study(plan("fresh"))  # same seed, same trial numbers: the same draws
    assert [plan("fresh").space.suggest(fresh.ask()) for _ in range(2)] == [pa, pb]

    def run(name, n):  # a single worker, past TPE's random start-up trials: reproducible
        study, drawn = sw.open_study(plan(name)), []
        for _ in range(n):
            trial = study.ask()
            values = plan(name).space.suggest(trial)
            drawn.append(values)
            study.tell(trial, -abs(values["optim.lr"] - 3e-3))
        return study, drawn

    s1, d1 = run("one", 4)
    _, d2 = run("two", 4)
    assert d1 == d2 and len({json.dumps(d, sort_keys=True) for d in d1}) == 4
    other = sw.open_study(plan("one"))  # a second command joining s1 with the same completed trials
    t1, t2 = s1.ask(), other.ask()
    assert t1.number != t2.number and plan("one").space.suggest(t1) != plan("one").space.suggest(t2)


def test_expected_trial_failures_are_logged_in_one_line_without_a_traceback(tmp_path):
    """A diverged run is a counted, failed trial: Optuna logged it with a 20-line traceback; a signalled
    trial printed a TrialStopped traceback before the sweep's own line."""
    from types import SimpleNamespace

    from imgcls.errors import TrainingError

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(logging.Formatter("%(message)s"))  # appends the traceback of exc_info, if any
    signalled = {"on": False}

    def fake_train(cfg, callbacks):
        if signalled["on"]:
            raise TrainingInterrupted("stopped by SIGTERM at epoch 1, after step 3; saved RUN_DIR", 143)
        if cfg.optim.lr > 3e-3:
            raise TrainingError("loss became nan at epoch 1; lower optim.lr")
        return SimpleNamespace(run_dir=None, history=[{"epoch": 1, "val_acc": 0.5}])

    plan = sw.make_plan(
        load_config(None, ["train.epochs=1"]), LR_SPACE, trials=2, out=tmp_path, pruner="none"
    )
    study = sw.open_study(plan)
    sw.enqueue_baseline(plan, study, [{"optim.lr": 9e-3}], baseline=False)
    optuna_log = logging.getLogger("optuna")
    optuna_log.addHandler(handler)
    try:
        sw.run_worker(plan, study, fake_train)
        failed = [line for line in lines if "Trial 0 failed" in line]
        assert failed == [
            "Trial 0 failed with parameters: {'optim.lr': 0.009}: loss became nan at epoch 1; lower optim.lr "
            "(a result: the sweep goes on)"
        ]
        lines.clear()
        signalled["on"] = True
        plan.trials = 3
        with pytest.raises(TrainingInterrupted, match="during trial 2, which is queued again"):
            sw.run_worker(plan, study, fake_train)
        assert not [line for line in lines if "Trial 2" in line and "failed" in line], lines
    finally:
        optuna_log.removeHandler(handler)
    assert not [line for line in lines if "Traceback" in line]
    assert sw.trial_rows(study)[0]["note"] == "error: loss became nan at epoch 1; lower optim.lr"


def test_a_sqlite_storage_gets_its_folder_or_a_one_line_fix(tmp_path):
    cfg = load_config(None, [])
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'x.db'}"
    plan = sw.make_plan(cfg, LR_SPACE, trials=2, out=tmp_path / "sweep", storage=url)
    sw.open_study(plan)  # the folder is created, as --out is
    assert (tmp_path / "new" / "dir" / "x.db").is_file()
    (tmp_path / "file").write_text("")
    url = f"sqlite:///{tmp_path / 'file' / 'dir' / 'x.db'}"
    plan = sw.make_plan(cfg, LR_SPACE, trials=2, out=tmp_path / "sweep2", storage=url)
    with pytest.raises(UserError) as info:
        sw.open_study(plan)
    message = str(info.value)
    assert message.startswith(f"cannot create the folder of {url} '{tmp_path / 'file' / 'dir'}': ")
    assert message.endswith("create the folder or pass another --storage") and "\n" not in message


@requires_fashion_mnist
def test_a_retried_trial_continues_the_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch):
    cfg = load_config(None, [*TINY, "train.epochs=2", f"output.dir={tmp_path}", "output.name=retry"])
    state = _stop_first_run_under(monkeypatch, "trials")
    out = tmp_path / "sweep"
    with single_thread(), pytest.raises(TrainingInterrupted, match="during trial 0, which is queued again"):
        api.sweep(cfg, LR_SPACE, trials=1, out=out, pruner="none")
    (run_dir,) = (out / "trials" / "trial_0000").glob("*")
    first_epoch = (run_dir / "history.csv").read_text().splitlines()[:2]
    assert len(first_epoch) == 2 and (run_dir / "checkpoints" / "last.pt").is_file()
    assert (out / "sweep.md").is_file()  # the stopped sweep still reports what it has

    with single_thread():
        result = api.sweep(cfg, LR_SPACE, trials=1, out=out, pruner="none")
    stopped, retry = result.trials
    assert stopped["state"] == "fail" and not stopped["counted"]
    assert retry["note"].startswith("retry of trial 0") and retry["state"] == "complete"
    assert retry["run_dir"] == str(run_dir) and retry["epochs"] == 2  # continued, epoch 1 reported again
    assert state == {"armed": 0, "new": 1, "resumed": 1}
    assert not (out / "trials" / "trial_0001").exists()  # no second run from scratch
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3 and history[:2] == first_epoch  # epoch 1 kept, epoch 2 trained once
    assert _best_val_acc(run_dir)[0] == pytest.approx(retry["value"])


@requires_fashion_mnist
def test_an_interrupted_final_seed_is_resumed_and_each_seed_counts_once(tmp_path, monkeypatch):
    cfg = load_config(None, [*TINY, "train.epochs=2", f"output.dir={tmp_path}", "output.name=fin"])
    state = _stop_first_run_under(monkeypatch, "final", seed=0)
    out = tmp_path / "sweep"
    kw = {"trials": 1, "out": out, "final_seeds": 2, "pruner": "none"}
    with single_thread(), pytest.raises(TrainingInterrupted) as info:
        api.sweep(cfg, LR_SPACE, **kw)
    final = out / "final" / "trial_0000"
    (partial,) = final.glob("*/*")
    message = str(info.value)
    assert info.value.exit_code == 143 and "\n" not in message
    assert message.startswith(f"sweep 'fin' stopped by SIGTERM during the final run of seed 0 ({partial}: ")
    assert message.endswith("rerun the same `imgcls sweep` command to resume")
    assert not (partial / "metrics.json").exists() and (partial / "checkpoints" / "last.pt").is_file()

    with single_thread():
        result = api.sweep(cfg, LR_SPACE, **kw)
    assert state == {"armed": 0, "new": 3, "resumed": 1}  # trial, seed 0 (stopped), seed 1; seed 0 resumed
    assert result.final["seeds"] == [0, 1] and len(set(final.glob("*/*"))) == 2  # nothing orphaned
    assert str(partial) in result.final["run_dirs"]
    assert len((partial / "history.csv").read_text().splitlines()) == 3  # resumed: 2 epochs in one history

    # a rerun of seed 0 beside it (e.g. an old sweep's, or a copy): one run per seed, the newest evaluated
    copy = partial.parent / (partial.name + "-copy")
    shutil.copytree(partial, copy)
    (copy / "metrics.json").touch()
    seed1 = next(Path(d) for d in result.final["run_dirs"] if Path(d) != partial)
    (seed1 / "metrics.json").unlink()  # trained, evaluation lost: evaluated again, not retrained
    with single_thread():
        again = api.sweep(cfg, LR_SPACE, **kw)
    assert state["new"] == 3 and state["resumed"] == 1
    assert again.final["seeds"] == [0, 1] and sorted(again.final["run_dirs"]) == sorted(
        [str(copy), str(seed1)]
    )
    assert (seed1 / "metrics.json").is_file() and "repeated seeds" not in again.final["table"]
