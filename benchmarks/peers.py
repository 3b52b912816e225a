"""imgcls vs its peers on the same model, data and machine, one after another in one process (issue 11).

Rows (img/s of training, timm ``resnet18`` on 1×28×28 Fashion-MNIST at batch 256 by default):
- **ceiling, per format**: forward + backward + optimiser step (torch's default foreach AdamW) on a ready
  normalised tensor, for every precision × memory-format candidate (the best is "the best-format compute
  ceiling");
- **imgcls**: a real training epoch through the trainer with ``train.precision: auto``,
  ``train.channels_last: auto`` and ``optim.fused: null`` (the format and the optimiser kernel chosen by
  measurement, ``engine/autotune.py``), and the ceiling of that same execution on a fixed batch;
- ceilings and imgcls are measured in interleaved rounds and reported as medians;
- **plain PyTorch**: DataLoader + per-sample torchvision v2 transforms (``peer_loop.py``), fp32, 2 workers;
- **timm train.py** (optional, ``--timm-train PATH``): timm's training script is not in the timm wheel;
  take ``train.py`` from the timm repository (github.com/huggingface/pytorch-image-models, same version as
  the installed wheel) and pass its path. It runs on torchvision's FashionMNIST files, which this script
  lays out from the local Debian copy, with the best CPU setting found among ``--timm-settings``.
Ratios, not absolute numbers, are what to quote: the machine is shared and drifts between runs.

    .venv/bin/python benchmarks/peers.py [--backbone timm:resnet18] [--timm-train /path/to/train.py]
    .venv/bin/python benchmarks/peers.py --quick
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import build_trainer, fixed_batch_step
from common import time_steps, write_results

from imgcls.config import load_config
from imgcls.data.prepare import prepare_data
from imgcls.engine.autotune import Execution, candidate_grid
from imgcls.models.classifier import build_model

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def make_trainer(overrides: list[str], batch: int, images: int):
    return build_trainer(
        [
            *overrides,
            f"train.batch_size={batch}",
            "train.progress=false",
            "output.tensorboard=false",
            f"data.train_subset={images}",
            "data.val_fraction=0",
            "augment.crop_padding=2",
            "augment.hflip=0.5",
            "train.autotune_max_share=1.0",
        ],
        batch,
    )


def ceilings_and_imgcls(
    overrides: list[str], batch: int, steps: int, repeats: int
) -> tuple[list[dict], dict]:
    """The per-format ceilings (torch's default foreach optimiser) and imgcls's auto-tuned epoch, measured
    in ``repeats`` interleaved rounds (the machine drifts by 10-20 % between minutes, so every row sees the
    same drift); each row is the median of its rounds. The ceiling of imgcls's own chosen execution (same
    trainer, fixed batch) is measured in the same rounds, so the engine's overhead is a paired ratio."""
    cfg, data, _ = make_trainer(overrides, batch, batch * 2)
    formats = []
    for precision, channels_last in candidate_grid(cfg.train, torch.device("cpu")):
        _, _, t = make_trainer(
            [
                *overrides,
                f"train.precision={precision}",
                f"train.channels_last={channels_last}",
                "optim.fused=false",
            ],
            batch,
            batch * 2,
        )
        t._setup_stage()
        t._set_train_mode()
        formats.append(((precision, channels_last), fixed_batch_step(t, data, batch)))
    _, _, trainer = make_trainer(overrides, batch, batch * steps)
    start = time.perf_counter()
    trainer._tune_execution()
    tune_s = time.perf_counter() - start
    trainer._setup_stage()
    trainer.train_epoch()  # warm-up epoch (allocator, oneDNN kernels)
    own_ceiling = fixed_batch_step(trainer, data, batch)
    rounds: dict[str, list[float]] = {}
    for r in range(repeats):
        for (precision, channels_last), step in formats:
            ips = batch / time_steps(step, warmup=2, steps=steps)
            rounds.setdefault(f"{precision}/{channels_last}", []).append(ips)
        trainer._set_train_mode()
        rounds.setdefault("own_ceiling", []).append(batch / time_steps(own_ceiling, warmup=1, steps=steps))
        start = time.perf_counter()
        metrics = trainer.train_epoch()
        rounds.setdefault("imgcls", []).append(metrics["train_images"] / (time.perf_counter() - start))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rounds.items()), flush=True)
    ceilings = [
        {
            "precision": precision,
            "channels_last": channels_last,
            "img_per_s": statistics.median(rounds[f"{precision}/{channels_last}"]),
            "rounds": rounds[f"{precision}/{channels_last}"],
        }
        for (precision, channels_last), _ in formats
    ]
    ex: Execution = trainer.execution
    paired = [e / c for e, c in zip(rounds["imgcls"], rounds["own_ceiling"], strict=True)]
    imgcls = {
        "img_per_s": statistics.median(rounds["imgcls"]),
        "rounds": rounds["imgcls"],
        "own_ceiling_img_per_s": statistics.median(rounds["own_ceiling"]),
        "ratio_to_own_ceiling": statistics.median(paired),
        "precision": ex.precision,
        "channels_last": ex.channels_last,
        "fused_optimizer": ex.fused_optimizer,
        "execution": ex.describe(),
        "tune_s": tune_s,
        "candidates": ex.candidates,
        "optimizer_candidates": ex.optimizer_candidates,
    }
    return ceilings, imgcls


def plain_pytorch(overrides: list[str], batch: int, steps: int, workers: int) -> dict:
    from peer_loop import loader, train_plain

    cfg = load_config(None, [*overrides, f"data.train_subset={batch * steps}", "data.val_fraction=0"])
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(data.class_names), data.channels)
    dl = loader(data.train.images, data.train.labels, data.mean, data.std, batch, True, workers=workers)
    train_plain(model, dl, 1, 1e-3, 0.05, max_steps=3)  # warm-up
    r = train_plain(model, dl, 1, 1e-3, 0.05)
    ips = r["images"] / r["seconds"]
    print(f"plain PyTorch loop (fp32, {workers} workers): {ips:,.0f} img/s", flush=True)
    return {"img_per_s": ips, "workers": workers}


def timm_train(script: Path, model: str, batch: int, steps: int, settings: list[str]) -> dict:
    """Run timm's train.py for ``steps`` batches per setting; its own log gives samples/s (running average)."""
    root = Path(tempfile.mkdtemp(prefix="timm_fmnist_"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        with gzip.open(FMNIST / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    rows = []
    for setting in settings:
        cmd = [
            sys.executable,
            str(script),
            "--data-dir",
            str(root),
            "--dataset",
            "torch/fashion_mnist",
            "--val-split",
            "test",
            "--model",
            model.removeprefix("timm:"),
            "--num-classes",
            "10",
            "--in-chans",
            "1",
            "--input-size",
            "1",
            "28",
            "28",
            "--mean",
            "0.2860",
            "--std",
            "0.3530",
            "--batch-size",
            str(batch),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--workers",
            "2",
            "--log-interval",
            "5",
            "--opt",
            "adamw",
            "--lr",
            "1e-3",
            "--hflip",
            "0.5",
            "--scale",
            "1.0",
            "1.0",
            "--ratio",
            "1.0",
            "1.0",
            "--output",
            str(root / "out"),
            *setting.split(),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rates, lines = [], []
        for line in proc.stdout:
            lines.append(line)
            m = re.findall(r"([\d.]+)/s", line)
            if m and "Train:" in line:
                rates.append(float(m[-1]))  # running average samples/s
                if len(rates) * 5 >= steps:
                    proc.kill()
                    break
        proc.wait()
        if not rates:
            rows.append({"setting": setting, "error": "".join(lines[-5:]).strip()[-500:]})
            print(f"timm train.py [{setting}]: failed", flush=True)
            continue
        rows.append({"setting": setting, "img_per_s": statistics.median(rates[len(rates) // 2 :])})
        print(f"timm train.py [{setting}]: {rows[-1]['img_per_s']:,.0f} img/s", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return {"settings": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="timm:resnet18")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument(
        "--timm-train", type=Path, default=None, help="path to timm's train.py (not in the wheel)"
    )
    ap.add_argument(
        "--timm-settings",
        default="|--amp --amp-dtype bfloat16|--channels-last",
        help="'|'-separated extra argument sets for timm's train.py; the best is reported",
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of ceilings + imgcls epoch")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default="peers")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.batch, args.repeats = 4, 64, 1
    overrides = [f"model.backbone={args.backbone}", "model.head=linear"]
    result = {"backbone": args.backbone, "batch": args.batch, "steps": args.steps}
    result["ceilings"], result["imgcls"] = ceilings_and_imgcls(
        overrides, args.batch, args.steps, args.repeats
    )
    result["plain_pytorch"] = plain_pytorch(overrides, args.batch, args.steps, workers=2)
    if args.timm_train is not None:
        result["timm_train"] = timm_train(
            args.timm_train, args.backbone, args.batch, args.steps, args.timm_settings.split("|")
        )
    best_ceiling = max(c["img_per_s"] for c in result["ceilings"])
    lines = ["| what | img/s | × best-format ceiling |", "|---|---|---|"]
    for c in result["ceilings"]:
        lines.append(
            f"| ceiling {c['precision']}{' + channels_last' if c['channels_last'] else ''} | "
            f"{c['img_per_s']:,.0f} | {c['img_per_s'] / best_ceiling:.2f} |"
        )
    im = result["imgcls"]
    lines.append(
        f"| ceiling of imgcls's chosen execution ({im['execution']}) | {im['own_ceiling_img_per_s']:,.0f} | "
        f"{im['own_ceiling_img_per_s'] / best_ceiling:.2f} |"
    )
    lines.append(
        f"| **imgcls** epoch (auto → {im['execution']}) | {im['img_per_s']:,.0f} | "
        f"{im['img_per_s'] / best_ceiling:.2f} |"
    )
    pp = result["plain_pytorch"]
    lines.append(
        f"| plain PyTorch DataLoader + torchvision (fp32) | {pp['img_per_s']:,.0f} | "
        f"{pp['img_per_s'] / best_ceiling:.2f} |"
    )
    timm_rows = [r for r in result.get("timm_train", {}).get("settings", []) if "img_per_s" in r]
    for r in timm_rows:
        lines.append(
            f"| timm train.py `{r['setting'] or 'fp32'}` | {r['img_per_s']:,.0f} | "
            f"{r['img_per_s'] / best_ceiling:.2f} |"
        )
    result["ratio_to_best_ceiling"] = im["img_per_s"] / best_ceiling
    result["ratio_to_own_ceiling"] = im["ratio_to_own_ceiling"]
    result["ratio_to_plain"] = im["img_per_s"] / pp["img_per_s"]
    lines.append(
        f"\nimgcls / best-format ceiling: **{result['ratio_to_best_ceiling']:.2f}**; imgcls epoch / the ceiling of "
        f"its own execution (paired rounds): **{result['ratio_to_own_ceiling']:.2f}**; imgcls / plain loop: "
        f"**{result['ratio_to_plain']:.2f}**"
    )
    if timm_rows:
        best_timm = max(r["img_per_s"] for r in timm_rows)
        result["ratio_to_timm_best"] = im["img_per_s"] / best_timm
        lines.append(f"; imgcls / timm train.py's best CPU setting: **{result['ratio_to_timm_best']:.2f}**")
    write_results(args.name + ("_quick" if args.quick else ""), result, "\n".join(lines))


if __name__ == "__main__":
    main()
