"""Fault injection (issue 17): interrupt, corrupt and mis-configure imgcls the way real jobs fail, and check
that each fault ends the way it should. Outside CI (it takes minutes); run it under the heavy lock:

    flock /tmp/imgcls-heavy.lock python benchmarks/faults.py          # full: ~5-8 min on 2 CPU cores
    python benchmarks/faults.py --quick                                 # a smoke run of every group

Groups (each row: case, expected, observed, held):
- interruptions: SIGKILL and SIGTERM at random points (after a step, mid-step, during a checkpoint write,
  during validation) of a real ``imgcls train`` process, then ``--resume``; held = exit code as expected
  and final weights/EMA bit-identical to an uninterrupted run (deterministic CPU); also the steps lost.
- malformed configs and data folders (the CLI in-process): one ``error:`` line and exit 2, or a warning.
- checkpoints: corrupt, truncated, code-holding (pickle) checkpoints and a pickle as ``pretrained_file``.
- divergence inside and at the end of an epoch: stops with one line, ``last.pt``/``best.pt`` stay finite.
- disk full: a real full file system (a 1 MiB tmpfs mounted here when running as root, else a file-size
  limit, RLIMIT_FSIZE) during a checkpoint and during a report write.
- DDP (2 gloo processes): a failing rank ends the job with its code; SIGTERM on one rank stops both after
  the same step and saves.
- predict on mixed good/bad files.
Results: benchmarks/results/faults.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import write_results  # noqa: E402

from imgcls import api, cli  # noqa: E402
from imgcls.engine.callbacks import Callback  # noqa: E402
from imgcls.errors import TrainingError, UserError  # noqa: E402
from imgcls.runtime import checkpoint as ckpt_io  # noqa: E402

ROWS: list[dict] = []
RUN = [  # 540 images / 45 = 12 steps per epoch, 2 epochs, deterministic CPU, augmentation + dropout + EMA
    "data.train_subset=600",
    "data.test_subset=100",
    "model.backbone_args={layout: mnist, width_mult: 0.25}",
    "model.drop_rate=0.2",
    "augment.hflip=0.5",
    "augment.crop_padding=2",
    "optim.lr=0.003",
    "train.epochs=2",
    "train.batch_size=45",
    "train.deterministic=true",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.progress=false",
    "train.ema_decay=0.9",
    "output.tensorboard=false",
    "eval.plots=false",
    "train.checkpoint_every_steps=4",
]
TINY = [
    "data.name=imagefolder",
    "data.image_size=16",
    "data.channels=1",
    "data.num_workers=0",
    "data.val_fraction=0.25",
    "model.backbone=adaptive_cnn",
    "model.backbone_args={layout: mnist, width_mult: 0.25}",
    "train.epochs=1",
    "train.batch_size=4",
    "train.progress=false",
    "train.precision=fp32",
    "output.tensorboard=false",
    "eval.plots=false",
]


def record(group: str, case: str, expected: str, observed: str, held: bool, **extra) -> None:
    ROWS.append(
        {
            "group": group,
            "case": case,
            "expected": expected,
            "observed": observed,
            "held": bool(held),
            **extra,
        }
    )
    print(f"{'HELD' if held else 'FAIL'}  [{group}] {case}: {observed}", flush=True)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``imgcls ARGS`` in this process: (exit code, stdout, stderr); a traceback escapes as code -1."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["imgcls", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    except BaseException as exc:
        code, err = -1, io.StringIO(err.getvalue() + f"Traceback: {type(exc).__name__}: {exc}")
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str) -> tuple[bool, str]:
    """Exit 2 and exactly one ``error:`` line, the last one (training may print epoch lines before it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    ok = code == 2 and "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0]
    return (
        ok,
        f"exit {code}, {len(errors)} error line(s): {(errors[0] if errors else (lines[-1] if lines else ''))[:110]}",
    )


def make_tree(
    root: Path, classes=("a", "b", "c"), per_class: int = 6, test_per_class: int = 2, mode: str = "L"
) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 + 70 * k, 20, (16, 16)), 0, 255)
                img = (
                    Image.fromarray((pixels * 257).astype(np.uint16))
                    if mode == "I;16"
                    else Image.fromarray(pixels.astype(np.uint8))
                )
                img.save(folder / f"{i:02d}.png")
    return root


def final_weights(run_dir: Path) -> tuple[dict, dict, dict]:
    ckpt = ckpt_io.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return ckpt["model"], ckpt["extra_weights"].get("ema", {}), ckpt["progress"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------- interruptions
INJECT = r"""
import os, signal, sys
from imgcls.engine.trainer import Trainer
from imgcls.runtime import checkpoint as ck
phase, sig, k = sys.argv[1], getattr(signal, sys.argv[2]), int(sys.argv[3])
def kill():
    os.kill(os.getpid(), sig)
if phase == "after_step":
    orig = Trainer._optimizer_step
    def patched(self):
        stepped = orig(self)
        if self.state.step == k: kill()
        return stepped
    Trainer._optimizer_step = patched
elif phase == "mid_step":
    orig = Trainer._forward_backward
    def patched(self, *a, **kw):
        if self.state.step == k: kill()
        return orig(self, *a, **kw)
    Trainer._forward_backward = patched
elif phase == "checkpoint_write":
    orig_save, calls = ck.torch.save, [0]
    def patched(obj, fh, *a, **kw):
        calls[0] += 1
        orig_save(obj, fh, *a, **kw)
        if calls[0] == k: kill()  # written to the temporary file, not yet renamed
    ck.torch.save = patched
elif phase == "validation":
    orig, calls = Trainer.validate, [0]
    def patched(self, *a, **kw):
        calls[0] += 1
        if calls[0] == k: kill()
        return orig(self, *a, **kw)
    Trainer.validate = patched
sys.argv = ["imgcls", "train", *sys.argv[4:]]
from imgcls.cli import main
main()
"""


def interruptions(root: Path, n_random: int) -> None:
    straight = api.train(None, [*RUN, f"output.dir={root / 'straight'}"], evaluate_after=False).run_dir
    ref_model, ref_ema, ref_progress = final_weights(straight)
    rng = random.Random(17)
    steps = ref_progress["step"]  # 24
    cases = [
        ("checkpoint_write", "SIGKILL", 3),
        ("checkpoint_write", "SIGTERM", 4),
        ("validation", "SIGKILL", 2),
        ("validation", "SIGTERM", 3),
        ("mid_step", "SIGKILL", 17),
        ("mid_step", "SIGTERM", 7),
    ]
    for _ in range(n_random):
        cases.append(
            (
                rng.choice(["after_step", "mid_step"]),
                rng.choice(["SIGKILL", "SIGTERM"]),
                rng.randint(1, steps - 1),
            )
        )
    for phase, sig, k in cases:
        out = root / f"{phase}-{sig}-{k}"
        args = [sys.executable, "-c", INJECT, phase, sig, str(k), *RUN, "--no-eval", f"output.dir={out}"]
        proc = subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
        runs = list(out.glob("*/*"))
        expected_code = -9 if sig == "SIGKILL" else 143
        name = f"{sig} {phase.replace('_', ' ')} #{k}"
        if not runs:
            record(
                "interruption",
                name,
                "resume → identical weights",
                f"no run dir (exit {proc.returncode})",
                False,
            )
            continue
        run_dir = runs[0]
        resume_from = api.recovery_or_last(run_dir)
        from_step = ckpt_io.load_checkpoint(resume_from)["progress"]["step"] if resume_from.is_file() else 0
        interrupted_lines = [line for line in proc.stderr.splitlines() if line.startswith("interrupted:")]
        try:
            resumed = api.train(resume=run_dir, evaluate_after=False).run_dir
            model, ema, _ = final_weights(resumed)
            identical = same(model, ref_model) and same(ema, ref_ema)
        except UserError as exc:
            identical, model = False, None
            interrupted_lines.append(f"resume failed: {exc}")
        # steps trained before the kill that the resume had to redo
        killed_at = {"after_step": k, "mid_step": k, "checkpoint_write": None, "validation": None}[phase]
        lost = None if killed_at is None else max(0, killed_at - from_step)
        code_ok = proc.returncode == expected_code and (sig != "SIGTERM" or len(interrupted_lines) >= 1)
        held = code_ok and identical and "Traceback" not in proc.stderr
        observed = (
            f"exit {proc.returncode}; resumed from {resume_from.name} (step {from_step}); "
            f"{'bit-identical' if identical else 'DIFFERENT'}"
            + (f"; {lost} step(s) redone" if lost is not None else "")
        )
        record(
            "interruption",
            name,
            f"exit {expected_code}; resume → bit-identical",
            observed,
            held,
            steps_lost=lost,
        )


# ------------------------------------------------------------------------------- malformed configs and data
def malformed(root: Path) -> None:
    cfgdir = root / "cfg"
    cfgdir.mkdir()
    good = make_tree(root / "good")
    tiny = [*TINY, f"data.root={good}", f"output.dir={root / 'never'}"]

    def yaml_file(name: str, content: bytes | str) -> str:
        path = cfgdir / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    show = lambda *a: ["config", "show", *a]  # noqa: E731
    train = lambda *a: ["train", *tiny, *a]  # noqa: E731
    cases: list[tuple[str, list[str]]] = [
        ("binary YAML", show(yaml_file("bin.yaml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"))),
        ("Latin-1 YAML", show(yaml_file("latin.yaml", "output:\n  name: caf\xe9\n".encode("latin-1")))),
        ("duplicate key", show(yaml_file("dup.yaml", "train:\n  epochs: 1\n  epochs: 2\n"))),
        ("duplicate section", show(yaml_file("dup2.yaml", "train: {epochs: 1}\ntrain: {epochs: 2}\n"))),
        ("tab indentation", show(yaml_file("tab.yaml", "train:\n\tepochs: 1\n"))),
        ("unclosed bracket", show(yaml_file("br.yaml", "train: {epochs: 1\n"))),
        ("list at top level", show(yaml_file("list.yaml", "- a\n- b\n"))),
        ("scalar at top level", show(yaml_file("scalar.yaml", "hello\n"))),
        ("missing config file", show(str(cfgdir / "nope.yaml"))),
        ("config is a folder", show(str(cfgdir))),
        ("unknown section", show("configs/quickstart.yaml", "trainer.epochs=1")),
        ("unknown key (typo)", show("configs/quickstart.yaml", "optim.lrr=0.1")),
        ("epochs not a number", show("configs/quickstart.yaml", "train.epochs=ten")),
        ("negative lr", show("configs/quickstart.yaml", "optim.lr=-1")),
        ("batch size 0", show("configs/quickstart.yaml", "train.batch_size=0")),
        ("channels 2", show("configs/quickstart.yaml", "data.channels=2")),
        ("device tpu7", show("configs/quickstart.yaml", "train.device=tpu7")),
        ("precision fp64", show("configs/quickstart.yaml", "train.precision=fp64")),
        ("val_fraction 1.5", show("configs/quickstart.yaml", "data.val_fraction=1.5")),
        ("EMA eval without EMA", show("configs/quickstart.yaml", "eval.checkpoint=ema")),
        ("override without =", show("configs/quickstart.yaml", "optim.lr")),
        ("override into a value", show("configs/quickstart.yaml", "optim.lr.x=1")),
        ("on_nonfinite typo", show("configs/quickstart.yaml", "train.on_nonfinite=skip")),
        ("checkpoint_every_steps 0", show("configs/quickstart.yaml", "train.checkpoint_every_steps=0")),
        ("device cuda without GPU", train("train.device=cuda")),
        ("unknown data set", train("data.name=imagenet22k")),
        ("unknown backbone", train("model.backbone=resnet9000")),
        ("unknown timm model", train("model.backbone=timm:resnet9000")),
        ("unknown head", train("model.head=softmaxx")),
        ("bad head_args", train("model.head_args={hidden: -3}")),
        ("unknown head_args key", train("model.head_args={nope: 1}")),
        ("bad backbone_args", train("model.backbone_args={layout: nope}")),
        ("freeze unknown module", train("stages=[{name: a, freeze: [trunk]}]")),
        ("unknown loss_weights key", train("stages=[{name: a, loss_weights: {nope: 1.0}}]")),
        ("mean of wrong length", train("data.mean=[0.1, 0.2]", "data.std=[0.3, 0.3]")),
        ("missing taxonomy file", train("data.taxonomy=/no/such/tree.yaml")),
        (
            "pretrained file missing",
            train("model.backbone=timm:resnet18", "model.pretrained_file=/no/weights.pt"),
        ),
        ("pretrained on a built-in backbone", train("model.pretrained=true")),
        ("feature cache without frozen backbone", train("model.cache_features=true")),
        ("batch not divisible by m", train("data.sampler=m_per_class", "data.samples_per_class=3")),
        ("imagefolder without root", ["train", *TINY, f"output.dir={root / 'never'}"]),
        ("resume a non-run folder", ["train", "--resume", str(cfgdir)]),
    ]
    folders = {
        "data root missing": root / "nowhere",
        "no train/ folder": (make_tree(root / "notrain") and shutil.rmtree(root / "notrain" / "train"))
        or root / "notrain",
        "one class": make_tree(root / "oneclass", classes=("only",)),
        "empty class folder": (
            make_tree(root / "emptyclass") and (root / "emptyclass" / "train" / "zz").mkdir()
        )
        or root / "emptyclass",
        "no images at all": (root / "noimg" / "train" / "a").mkdir(parents=True)
        or (root / "noimg" / "test" / "a").mkdir(parents=True)
        or root / "noimg",
    }
    allbad = make_tree(root / "allbad")
    for p in (allbad / "train").rglob("*.png"):
        p.write_bytes(b"junk")
    folders["every image unreadable"] = allbad
    for name, folder in folders.items():
        cases.append((name, ["train", *TINY, f"data.root={folder}", f"output.dir={root / 'never'}"]))
    for name, args in cases:
        code, _, err = run_cli(args)
        ok, observed = one_line_error(code, err)
        leftovers = (root / "never").exists()
        if leftovers:
            shutil.rmtree(root / "never")
        record(
            "malformed input",
            name,
            "exit 2, one error line, no run dir",
            observed + ("; LEFT A RUN DIR" if leftovers else ""),
            ok and not leftovers,
        )

    # inputs that must train, with a warning or a listed file
    warn_cases = {
        "empty YAML (warns, defaults)": (
            ["config", "show", yaml_file("empty.yaml", "# nothing\n")],
            "is empty",
        ),
    }
    for name, (args, word) in warn_cases.items():
        code, _, err = run_cli(args)
        record(
            "malformed input",
            name,
            "exit 0 + a warning",
            f"exit {code}; {err.strip()[:100]}",
            code == 0 and word in err,
        )
    stray = make_tree(root / "stray")
    (stray / "test" / "zz").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(stray / "test" / "zz" / "x.png")
    firstbad = make_tree(root / "firstbad")
    (firstbad / "train" / "a" / "00.png").write_bytes(b"junk")
    deep = make_tree(root / "deep", mode="I;16")
    train_only = (make_tree(root / "notest") and shutil.rmtree(root / "notest" / "test")) or root / "notest"
    for name, folder, word in [
        ("test class absent from train", stray, "left out"),
        ("unreadable first training image", firstbad, "skipped 1 unreadable"),
        ("16-bit grayscale images", deep, "test accuracy"),
        ("no test/ folder (test set carved from train)", train_only, "carved out"),
    ]:
        out_dir = root / "ok" / name.split()[0]
        code, out, err = run_cli(["train", *TINY, f"data.root={folder}", f"output.dir={out_dir}"])
        reports = "".join(p.read_text() for p in out_dir.rglob("report.md"))
        text = out + err + reports
        record(
            "malformed input",
            name,
            "trains (exit 0), says so",
            f"exit {code}; {'mentions' if word in text else 'silent'}",
            code == 0 and word in text and "Traceback" not in text,
        )


# ------------------------------------------------------------------------------- checkpoints
class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def checkpoints(root: Path) -> None:
    tree = make_tree(root / "data")
    base = api.train(
        None, [*TINY, f"data.root={tree}", f"output.dir={root / 'base'}"], evaluate_after=False
    ).run_dir
    marker = root / "pwned"
    original = (base / "checkpoints" / "last.pt").read_bytes()
    variants = {
        "corrupt checkpoint": lambda p: p.write_bytes(
            bytes(random.Random(0).randrange(256) for _ in range(len(original)))
        ),
        "truncated checkpoint": lambda p: p.write_bytes(original[: len(original) // 3]),
        "empty checkpoint": lambda p: p.write_bytes(b""),
        "code-holding checkpoint": lambda p: torch.save({"format": ckpt_io.FORMAT, "x": Exploit(marker)}, p),
    }
    for name, damage in variants.items():
        run_dir = root / name.replace(" ", "_")
        shutil.copytree(base, run_dir)
        damage(run_dir / "checkpoints" / "last.pt")
        for command in (
            ["evaluate", str(run_dir), "--checkpoint", "last"],
            ["train", "--resume", str(run_dir)],
        ):
            code, _, err = run_cli(command)
            ok, observed = one_line_error(code, err)
            record(
                "checkpoints",
                f"{name}: {command[0]}",
                "exit 2, one line, nothing executed",
                observed,
                ok and not marker.exists(),
            )
    torch.save({"conv1.weight": Exploit(marker)}, root / "weights.pt")
    code, _, err = run_cli(
        [
            "train",
            *TINY,
            f"data.root={tree}",
            "model.backbone=timm:resnet18",
            f"model.pretrained_file={root / 'weights.pt'}",
            f"output.dir={root / 'never'}",
        ]
    )
    ok, observed = one_line_error(code, err)
    record(
        "checkpoints",
        "pickle as model.pretrained_file",
        "refused as unsafe, one line",
        observed,
        ok and "refused" in err and not marker.exists(),
    )
    for override, what in (
        ("model.head=mlp", "another head"),
        ("model.backbone_args={layout: mnist, width_mult: 0.5}", "another width"),
    ):
        config = (base / "config.yaml").read_bytes()
        code, _, err = run_cli(["train", "--resume", str(base), override])
        ok, observed = one_line_error(code, err)
        record(
            "checkpoints",
            f"resume with {what}",
            "exit 2, config.yaml byte-identical",
            observed,
            ok and (base / "config.yaml").read_bytes() == config,
        )


# ------------------------------------------------------------------------------- divergence
class AtStep(Callback):
    name = "at_step"

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_train_step_end(self, trainer) -> None:
        if trainer.state.step == self.step:
            self.action(trainer)


def with_callbacks(*callbacks):
    build = api.build_callbacks
    api.build_callbacks = lambda cfg, run_dir: [*callbacks, *build(cfg, run_dir)]
    return build


def divergence(root: Path) -> None:
    def blow_up(trainer):
        with torch.no_grad():
            next(trainer.model.head.parameters()).fill_(float("inf"))

    for name, step in (("inside an epoch (step 17 of 24)", 17), ("on the last step of an epoch (24)", 24)):
        out = root / f"div{step}"
        build = with_callbacks(AtStep(step, blow_up))
        try:
            api.train(None, [*RUN, f"output.dir={out}"], evaluate_after=False)
            observed, ok = "no error", False
        except TrainingError as exc:
            observed, ok = str(exc)[:110], "\n" not in str(exc) and "epoch 2" in str(exc)
        finally:
            api.build_callbacks = build
        (run_dir,) = out.glob("*/*")
        finite = True
        for f in (run_dir / "checkpoints").glob("*.pt"):
            ckpt = ckpt_io.load_checkpoint(f)
            finite &= all(
                bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.is_floating_point()
            )
        best = ckpt_io.load_checkpoint(run_dir / "checkpoints" / "best.pt")["metrics"].get("val_loss", 0.0)
        record(
            "divergence",
            name,
            "stops with one line naming epoch/step; saved checkpoints finite",
            f"{observed}; checkpoints {'finite' if finite else 'NON-FINITE'}",
            ok and finite and np.isfinite(best),
        )
    out = root / "skip"
    build = with_callbacks()
    from imgcls.engine.trainer import Trainer

    weighted, hit = Trainer._weighted_sum, []

    def nan_once(self, terms):
        loss = weighted(self, terms)
        if self.model.training and self.state.step == 5 and not hit:
            hit.append(1)
            return loss * float("nan")
        return loss

    Trainer._weighted_sum = nan_once
    try:
        run = api.train(
            None, [*RUN, "train.on_nonfinite=skip_step", f"output.dir={out}"], evaluate_after=False
        )
        progress = ckpt_io.load_checkpoint(run.run_dir / "checkpoints" / "last.pt")["progress"]
        record(
            "divergence",
            "NaN loss once with on_nonfinite=skip_step",
            "1 step skipped, run completes",
            f"{progress['skipped_steps']} skipped, {progress['step']} steps",
            progress["skipped_steps"] == 1,
        )
    finally:
        Trainer._weighted_sum = weighted
        api.build_callbacks = build


# ------------------------------------------------------------------------------- disk full
@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int):
    """A real small file system: a tmpfs when we may mount (root), else None (the caller limits file sizes)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield "tmpfs" if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> None:
    with contextlib.suppress(OSError), open(directory / "filler.bin", "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)


def disk_full(root: Path) -> None:
    tree = make_tree(root / "data", per_class=12)
    mount = root / "small"
    with small_filesystem(mount, 2048) as kind:
        if kind is None:  # no mount: a file-size limit makes writes past it fail with EFBIG
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            kind = "RLIMIT_FSIZE"
        method = kind

        class FillAfterEpoch(Callback):
            name = "filler"

            def on_epoch_end(self, trainer, metrics) -> None:
                if metrics["epoch"] == 1:
                    if method == "tmpfs":
                        fill(mount)
                    else:
                        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

        build = with_callbacks()
        build_inner = api.build_callbacks
        api.build_callbacks = lambda cfg, run_dir: [*build_inner(cfg, run_dir), FillAfterEpoch()]
        try:
            code, _, err = run_cli(
                ["train", *TINY, "train.epochs=2", f"data.root={tree}", f"output.dir={mount}"]
            )
        finally:
            api.build_callbacks = build
            if method != "tmpfs":
                import resource

                resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        ok, observed = one_line_error(code, err)
        runs = list(mount.glob("*/*"))
        intact = (
            bool(runs)
            and ckpt_io.load_checkpoint(runs[0] / "checkpoints" / "last.pt")["progress"]["global_epoch"] == 1
        )
        temps = list(mount.rglob(".*.tmp"))
        record(
            "disk full",
            f"checkpoint write ({method})",
            "one line 'no space left … previous checkpoint is intact'",
            f"{observed}; last.pt epoch 1 {'intact' if intact else 'LOST'}; {len(temps)} temp file(s)",
            ok and "no space left on device" in err and intact and not temps,
            method=method,
        )
        if runs and method == "tmpfs":
            code, _, err = run_cli(["evaluate", str(runs[0]), "--checkpoint", "last"])
            ok, observed = one_line_error(code, err)
            record(
                "disk full",
                "report write (tmpfs)",
                "one line 'no space left'",
                observed,
                ok and "no space left" in err,
            )


# ------------------------------------------------------------------------------- DDP
SITE = r"""
import os
if os.environ.get("IMGCLS_FAULT") and os.environ.get("RANK") == "1":
    import signal
    from imgcls.engine.trainer import Trainer
    from imgcls.errors import DataError
    orig = Trainer._optimizer_step
    def patched(self):
        stepped = orig(self)
        if self.state.step == 3:
            if os.environ["IMGCLS_FAULT"] == "raise":
                raise DataError("injected failure on rank 1")
            os.kill(os.getpid(), signal.SIGTERM)
        return stepped
    Trainer._optimizer_step = patched
"""


def ddp(root: Path) -> None:
    tree = make_tree(root / "data", per_class=16)
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    for fault, expected_code in (("raise", 2), ("sigterm", 143)):
        out = root / fault
        e = {**env(), "IMGCLS_FAULT": fault, "PYTHONPATH": f"{site}:{REPO / 'src'}"}
        args = [
            sys.executable,
            "-m",
            "imgcls",
            "train",
            *TINY,
            "train.epochs=2",
            "train.batch_size=4",
            f"data.root={tree}",
            "--nproc",
            "2",
            "--no-eval",
            f"output.dir={out}",
        ]
        start = time.perf_counter()
        try:
            proc = subprocess.run(args, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            code, err = None, "HUNG"
        took = time.perf_counter() - start
        if fault == "raise":
            held = code == expected_code and "rank 1 exited with code 2" in " ".join(err.split())
            observed = f"exit {code} in {took:.0f} s; {'names rank 1' if held else err[-150:]}"
            record(
                "DDP", "a rank raises at step 3", "job ends (no hang), exit 2 naming the rank", observed, held
            )
        else:
            runs = list(out.glob("*/*"))
            rec = runs[0] / "checkpoints" / "recovery.pt" if runs else None
            step = (
                ckpt_io.load_checkpoint(rec)["progress"]["step"]
                if rec is not None and rec.is_file()
                else None
            )
            held = code == expected_code and step == 3
            record(
                "DDP",
                "SIGTERM on rank 1 at step 3",
                "both ranks stop after step 3, recovery.pt saved, exit 143",
                f"exit {code} in {took:.0f} s; recovery.pt at step {step}",
                held,
            )


# ------------------------------------------------------------------------------- predict
def predict(root: Path) -> None:
    tree = make_tree(root / "data")
    run_dir = api.train(
        None, [*TINY, f"data.root={tree}", f"output.dir={root / 'runs'}"], evaluate_after=False
    ).run_dir
    (root / "text.png").write_text("not an image")
    (root / "folder.png").mkdir()
    (root / "half.png").write_bytes((tree / "test" / "a" / "00.png").read_bytes()[:40])
    good = [
        str(tree / "test" / "a" / "00.png"),
        str(tree / "test" / "b" / "01.png"),
        str(tree / "test" / "c" / "00.png"),
    ]
    bad = [
        str(root / "missing.png"),
        str(root / "text.png"),
        str(root / "folder.png"),
        str(root / "half.png"),
    ]
    files = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3]]
    code, out, err = run_cli(["predict", str(run_dir), *files])
    predicted = [line.split(":")[0] for line in out.splitlines()]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    record(
        "predict",
        "3 good + 4 bad files",
        "3 predictions, 4 error lines, exit 2",
        f"exit {code}; {len(predicted)} predicted, {len(errors)} error lines",
        code == 2 and predicted == good and len(errors) == 4,
    )
    code, out, _ = run_cli(["predict", str(run_dir), *files, "--json"])
    rows = json.loads(out) if out.strip().startswith("[") else []
    record(
        "predict",
        "same with --json",
        "7 rows, 4 with an error entry",
        f"exit {code}; {sum('error' in r for r in rows)} error rows",
        code == 2 and len(rows) == 7 and sum("error" in r for r in rows) == 4,
    )
    code, out, err = run_cli(["predict", str(run_dir), *good])
    record(
        "predict",
        "3 good files",
        "exit 0, 3 predictions",
        f"exit {code}; {len(out.splitlines())} lines",
        code == 0 and len(out.splitlines()) == 3,
    )


def checkpoint_cost(root: Path) -> dict:
    """A recovery write's time as a share of a training step (same tiny run, every step)."""
    from imgcls.engine.callbacks import RecoveryCheckpointer

    holder: list[RecoveryCheckpointer] = []
    build = api.build_callbacks

    def capture(cfg, run_dir):
        callbacks = build(cfg, run_dir)
        holder.extend(c for c in callbacks if isinstance(c, RecoveryCheckpointer))
        return callbacks

    api.build_callbacks = capture
    try:
        run = api.train(
            None,
            [*RUN, "train.epochs=1", "train.checkpoint_every_steps=1", f"output.dir={root}"],
            evaluate_after=False,
        )
    finally:
        api.build_callbacks = build
    rec = holder[0]
    row = ckpt_io.load_checkpoint(run.run_dir / "checkpoints" / "last.pt")["history"][0]
    step_s = (row["train_time_s"] - rec.write_s) / row["step"]
    return {
        "writes": rec.writes,
        "write_ms": 1000 * rec.write_s / max(rec.writes, 1),
        "step_ms": 1000 * step_s,
        "share": rec.write_s / max(rec.writes, 1) / step_s,
        "size_kb": (run.run_dir / "checkpoints" / "last.pt").stat().st_size / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer random interruption points, no DDP")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imgcls-faults-") as tmp:
        root = Path(tmp)
        groups = [
            ("malformed", malformed),
            ("checkpoints", checkpoints),
            ("predict", predict),
            ("divergence", divergence),
            ("disk_full", disk_full),
        ]
        for name, fn in groups:
            (root / name).mkdir()
            fn(root / name)
        (root / "interruptions").mkdir()
        interruptions(root / "interruptions", n_random=1 if args.quick else 6)
        if not args.quick:
            (root / "ddp").mkdir()
            ddp(root / "ddp")
        cost = checkpoint_cost(root / "cost")
    held = sum(r["held"] for r in ROWS)
    lost = [r["steps_lost"] for r in ROWS if r.get("steps_lost") is not None]
    by_group: dict[str, list[int]] = {}
    for r in ROWS:
        by_group.setdefault(r["group"], [0, 0])
        by_group[r["group"]][0] += 1
        by_group[r["group"]][1] += r["held"]
    lines = [
        f"# Fault injection: {held} of {len(ROWS)} cases held",
        "",
        f"`python benchmarks/faults.py{' --quick' if args.quick else ''}`, {time.perf_counter() - started:.0f} s on "
        f"{os.cpu_count()} CPU cores. Steps redone after an interruption (recovery checkpoint every 4 steps): "
        f"at most {max(lost) if lost else '-'}. A recovery write costs {cost['write_ms']:.0f} ms = "
        f"{100 * cost['share']:.0f} % of one {cost['step_ms']:.0f} ms step of this tiny model "
        f"({cost['size_kb']:.0f} KiB checkpoint).",
        "",
        "| group | cases | held |",
        "|---|---:|---:|",
    ]
    lines += [f"| {g} | {n} | {h} |" for g, (n, h) in by_group.items()]
    lines += ["", "| group | case | expected | observed | held |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['group']} | {r['case']} | {r['expected']} | {r['observed'].replace('|', '/')} | {'yes' if r['held'] else '**no**'} |"
        for r in ROWS
    ]
    write_results(
        "faults" if not args.quick else "faults_quick",
        {
            "cases": len(ROWS),
            "held": held,
            "max_steps_lost": max(lost) if lost else None,
            "checkpoint_cost": cost,
            "by_group": by_group,
            "rows": ROWS,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
