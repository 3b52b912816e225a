"""Comparing evaluated runs in one table (Markdown or CSV) — how the README's result tables are made.

Seed 004 compared its models by hand from ``test_metrics.txt`` files (SPEC §5.6); here every
evaluated run directory contributes its ``config.yaml`` and ``metrics.json``. Runs whose configs
(name included) are identical apart from ``train.seed`` (and settings that cannot change results: output paths,
progress bars, data location and loader workers) are one row, with mean ± sample standard
deviation over the seeds. Runs sharing a name but not a config get the differing keys in their
label, so a sweep such as ``optim.lr=1e-3`` vs ``3e-3`` reads as two labelled rows.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import UserError

#: config keys that do not define an experiment (never split or label a row)
IGNORED_KEYS = {
    "train.seed",
    "output.dir",
    "output.tensorboard",
    "train.progress",
    "train.log_every",
    "data.root",
    "data.num_workers",
    "data.download",
    # what evaluation draws, not what it measures
    "eval.plots",
    "eval.embeddings_plot",
    "eval.gradcam",
    "eval.max_plot_samples",
    "eval.image_projection",
}

#: (key, header, format) of the numeric columns; keys are metrics.json keys
METRIC_COLUMNS = [
    ("accuracy", "accuracy", "{:.4f}"),
    ("macro_f1", "macro F1", "{:.4f}"),
    ("ece", "ECE", "{:.4f}"),
    ("params", "params", "{:,.0f}"),
    ("train_time_s", "train time (s)", "{:,.1f}"),
    ("inference_img_per_s", "img/s", "{:,.0f}"),
]


@dataclass
class RunRecord:
    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.config.get("output", {}).get("name") or self.run_dir.parent.name

    @property
    def seed(self) -> int | None:
        return self.config.get("train", {}).get("seed")


@dataclass
class ComparisonRow:
    label: str
    backbone: str
    head: str
    runs: list[RunRecord]
    values: dict[str, list[float]] = field(default_factory=dict)  # metric key -> one value per run

    def mean(self, key: str) -> float | None:
        v = self.values.get(key, [])
        return statistics.fmean(v) if v else None

    def std(self, key: str) -> float | None:
        v = self.values.get(key, [])
        return statistics.stdev(v) if len(v) > 1 else None

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def repeated_seeds(self) -> bool:
        """Several runs of one seed in the row (reruns, not a spread over seeds)."""
        return len(self.seeds) != len(set(self.seeds))


@dataclass
class Comparison:
    rows: list[ComparisonRow]
    skipped: list[str] = field(default_factory=list)  # directories without metrics, with the reason

    def to_markdown(self) -> str:
        header = ["run", "backbone", "head", *[h for _, h, _ in METRIC_COLUMNS], "seeds"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(METRIC_COLUMNS) + "---|"]
        for row in self.rows:
            cells = [row.label, f"`{row.backbone}`", f"`{row.head}`"]
            for key, _, fmt in METRIC_COLUMNS:
                mean, std = row.mean(key), row.std(key)
                cells.append(
                    "–"
                    if mean is None
                    else fmt.format(mean) + (f" ± {fmt.format(std)}" if std is not None else "")
                )
            cells.append(_seeds_text(row.seeds) + (" *(repeated seeds)*" if row.repeated_seeds else ""))
            lines.append("| " + " | ".join(cells) + " |")
        if any(len(r.runs) > 1 for r in self.rows):
            lines += ["", "Rows with several seeds show mean ± sample standard deviation over the seeds."]
        if any(r.repeated_seeds for r in self.rows):
            lines += [
                "Rows marked *(repeated seeds)* hold reruns of one seed: their ± is not seed-to-seed variation; "
                "train with other `train.seed` values to measure it."
            ]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        header = ["run", "backbone", "head", "num_runs", "seeds"]
        for key, _, _ in METRIC_COLUMNS:
            header += [key, f"{key}_std"]
        writer.writerow(header)
        for row in self.rows:
            line: list[Any] = [
                row.label,
                row.backbone,
                row.head,
                len(row.runs),
                " ".join(str(s) for s in row.seeds),
            ]
            for key, _, _ in METRIC_COLUMNS:
                mean, std = row.mean(key), row.std(key)
                line += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
            writer.writerow(line)
        return buf.getvalue()


def _seeds_text(seeds: list[int | None]) -> str:
    shown = ", ".join("?" if s is None else str(s) for s in seeds)
    return shown if len(seeds) == 1 else f"{len(seeds)}: {shown}"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def experiment_key(config: dict[str, Any]) -> str:
    """A string equal for configs that differ only in ``IGNORED_KEYS`` (e.g. the seed)."""
    flat = {k: v for k, v in flatten(config).items() if k not in IGNORED_KEYS}
    return json.dumps(flat, sort_keys=True, default=str)


def find_run_dirs(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories (holding ``metrics.json``) at or below each path; also the skipped runs, with reasons."""
    found: list[Path] = []
    skipped: list[str] = []
    expanded: list[Path] = []
    for raw in paths:  # the API gets no shell: expand 'runs/*/*' here as the shell does for the CLI
        text = str(raw)
        if glob.has_magic(text) and not Path(text).exists():
            matches = sorted(glob.glob(text))
            if not matches:
                raise UserError(
                    f"'{text}' matches no folder; pass run directories such as runs/<name>/<time> or runs/*"
                )
            expanded += [Path(m) for m in matches]
        else:
            expanded.append(Path(raw))
    for path in expanded:
        if not path.exists():
            raise UserError(
                f"'{path}' does not exist; pass run directories such as runs/<name>/<time> or runs/*"
            )
        if (path / "metrics.json").is_file():
            found.append(path)
            continue
        if (path / "config.yaml").is_file():
            skipped.append(f"{path}: not evaluated yet (no metrics.json); run `imgcls evaluate {path}`")
            continue
        below = sorted({p.parent for p in path.rglob("metrics.json") if (p.parent / "config.yaml").is_file()})
        if not below:
            skipped.append(f"{path}: no evaluated run inside")
        found += below
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, skipped


def load_record(run_dir: Path) -> RunRecord:
    """A run's metrics.json and config.yaml; a UserError (one line) when either is unreadable or no mapping."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: JSON and UTF-8 decoding errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read run '{run_dir}': {first}") from None
    for name, value in (("metrics.json", metrics), ("config.yaml", config)):
        if not isinstance(value, dict):
            raise UserError(
                f"cannot read run '{run_dir}': its {name} holds a {type(value).__name__}, not a mapping"
            )
    if "train_time_s" not in metrics and (run_dir / "train_summary.json").is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a damaged summary: no time, no crash
            metrics["train_time_s"] = json.loads((run_dir / "train_summary.json").read_text()).get(
                "train_time_s"
            )
    if metrics.get("evaluation_overrides"):  # re-evaluated on other data: a row of its own, labelled so
        config = {**config, "evaluated_with": " ".join(map(str, metrics["evaluation_overrides"]))}
    return RunRecord(run_dir, config, metrics)


def _labels(groups: list[list[RunRecord]]) -> list[str]:
    """Row labels: the run name, plus the config keys that tell apart groups sharing a name."""
    by_name: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_name.setdefault(g[0].name, []).append(i)
    labels = [g[0].name for g in groups]
    for name, members in by_name.items():
        if len(members) < 2:
            continue
        flats = [
            {k: v for k, v in flatten(groups[i][0].config).items() if k not in IGNORED_KEYS} for i in members
        ]
        keys = sorted({k for f in flats for k in f if any(f.get(k) != other.get(k) for other in flats)})
        for i, f in zip(members, flats, strict=True):
            diff = ", ".join(f"{k}={f.get(k)}" for k in keys)
            labels[i] = f"{name} ({diff})"
    return labels


def compare_runs(paths: list[str | Path], sort_by: str | None = "accuracy") -> Comparison:
    """Group the evaluated runs under ``paths`` by experiment and summarise each group (see module doc)."""
    run_dirs, skipped = find_run_dirs(paths)
    if not run_dirs:
        reasons = "; ".join(skipped) or "nothing found"
        raise UserError(f"no evaluated runs to compare ({reasons})")
    groups: dict[str, list[RunRecord]] = {}
    for run_dir in run_dirs:
        try:
            record = load_record(run_dir)
        except UserError as exc:  # one damaged run does not cost the table of the others
            skipped.append(f"{run_dir}: {exc}")
            continue
        groups.setdefault(experiment_key(record.config), []).append(record)
    if not groups:
        raise UserError(f"no readable evaluated runs to compare ({'; '.join(skipped)})")
    grouped = list(groups.values())
    rows = []
    for label, records in zip(_labels(grouped), grouped, strict=True):
        model = records[0].config.get("model", {})
        row = ComparisonRow(label, str(model.get("backbone", "?")), str(model.get("head", "?")), records)
        for key, _, _ in METRIC_COLUMNS:
            row.values[key] = [
                float(r.metrics[key]) for r in records if isinstance(r.metrics.get(key), (int, float))
            ]
        rows.append(row)
    valid = {k for k, _, _ in METRIC_COLUMNS}
    if sort_by:
        if sort_by not in valid:
            raise UserError(f"cannot sort by '{sort_by}'; use one of {', '.join(sorted(valid))}")
        lower_is_better = sort_by in ("ece", "params", "train_time_s")
        rows.sort(
            key=lambda r: (r.mean(sort_by) is None, (r.mean(sort_by) or 0.0) * (1 if lower_is_better else -1))
        )
    return Comparison(rows, skipped)
