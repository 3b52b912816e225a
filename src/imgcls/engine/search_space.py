"""Search spaces for ``imgcls sweep``: a YAML mapping from any dotted config key to a distribution.

    optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}
    optim.weight_decay: {log_uniform: [1.0e-5, 1.0e-1]}
    model.drop_rate: {uniform: [0.0, 0.5]}
    model.head_args.order: {choice: [1, 2, 4]}
    train.batch_size: {int_uniform: [64, 256, 64]}      # optional third value: the step

Each key becomes one Optuna parameter (named by the key) and, in a trial, one ordinary config
override ``key=value`` — so a trial's ``config.yaml`` is a plain imgcls config and the sweep needs no
method-specific code. The space is checked against the experiment config before any trial runs: a
bad distribution, range or key is one :class:`~imgcls.errors.ConfigError` line naming the key.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.config import ExperimentConfig, apply_overrides, build_config, read_yaml_file
from imgcls.errors import ConfigError

KINDS = ("uniform", "log_uniform", "int_uniform", "choice")
_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: the config ``key`` and its distribution."""

    key: str
    kind: str  # one of KINDS
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None  # int_uniform only
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this parameter's value (decoded to the config value)."""
        if self.kind == "uniform":
            return trial.suggest_float(self.key, float(self.low), float(self.high))
        if self.kind == "log_uniform":
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=True)
        if self.kind == "int_uniform":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=self.step or 1)
        return decode_choice(trial.suggest_categorical(self.key, [encode_choice(c) for c in self.choices]))

    def candidates(self) -> list[Any]:
        """Values that span the distribution (the ends, or every choice): each must make a valid config."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int_uniform" and (
            value != int(value) or (int(value) - int(self.low)) % (self.step or 1)
        ):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice " + ", ".join(json.dumps(c) for c in self.choices)
        step = f" step {self.step}" if self.step and self.step != 1 else ""
        return f"{self.kind.replace('_', '-')} [{self.low:g}, {self.high:g}]{step}"


def encode_choice(value: Any) -> Any:
    """Optuna's categorical values must be scalars: lists and mappings travel as JSON text."""
    return value if isinstance(value, _SCALARS) else "json:" + json.dumps(value, sort_keys=True)


def decode_choice(value: Any) -> Any:
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value


def override(key: str, value: Any) -> str:
    """A ``key=value`` command-line override carrying ``value`` exactly (JSON is valid YAML)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"search space '{key}': value {value} is not a finite number")
    return f"{key}={json.dumps(value)}"


def _number(key: str, kind: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        what = "integers" if integer else "numbers"
        raise ConfigError(f"search space '{key}': {kind} bounds must be {what}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"search space '{key}': {kind} bounds must be finite, got {value!r}")
    return int(value) if integer else float(value)


def parse_param(key: str, spec: Any) -> Param:
    """One ``key: {distribution: arguments}`` entry → :class:`Param` (one-line errors naming the key)."""
    example = f"e.g. {key}: {{log_uniform: [1.0e-4, 1.0e-1]}}"
    if not isinstance(key, str) or not key.strip() or " " in key or key.startswith(".") or key.endswith("."):
        raise ConfigError(f"search space key {key!r} is not a dotted config key such as optim.lr")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"search space '{key}' must be a mapping with one distribution ({', '.join(KINDS)}), {example}"
        )
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"search space '{key}': unknown distribution '{kind}'{hint} (use one of {', '.join(KINDS)})"
        )
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(
                f"search space '{key}': choice needs a non-empty list of values, e.g. {{choice: [1, 2, 4]}}"
            )
        encoded = [encode_choice(c) for c in args]
        if len(set(map(json.dumps, encoded))) != len(encoded):
            raise ConfigError(f"search space '{key}': choice lists a value twice ({args})")
        return Param(key, kind, choices=tuple(args))
    n_args = (2, 3) if kind == "int_uniform" else (2,)
    if not isinstance(args, list) or len(args) not in n_args:
        form = "[low, high] or [low, high, step]" if kind == "int_uniform" else "[low, high]"
        raise ConfigError(f"search space '{key}': {kind} needs {form}, got {args!r}")
    integer = kind == "int_uniform"
    low, high = (_number(key, kind, v, integer) for v in args[:2])
    if not low < high:
        raise ConfigError(f"search space '{key}': {kind} needs low < high, got [{low}, {high}]")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"search space '{key}': log_uniform needs 0 < low, got [{low}, {high}]")
    step = None
    if len(args) == 3:
        step = int(_number(key, kind, args[2], True))
        if step < 1 or (high - low) % step:
            raise ConfigError(
                f"search space '{key}': int_uniform step {step} must be ≥ 1 and divide high − low ({high - low})"
            )
    return Param(key, kind, low, high, step)


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's config values, key → value (in the space's order)."""
        return {p.key: p.suggest(trial) for p in self.params}

    def overrides(self, values: dict[str, Any]) -> list[str]:
        return [override(k, v) for k, v in values.items()]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The YAML form (``parse_space(space.to_dict())`` gives the same space back)."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.params:
            if p.kind == "choice":
                out[p.key] = {"choice": list(p.choices)}
            else:
                out[p.key] = {p.kind: [p.low, p.high] + ([p.step] if p.step else [])}
        return out

    def check_against(self, cfg: ExperimentConfig) -> None:
        """Every key/value the space can produce must give a valid config (else one line naming the key)."""
        base = cfg.model_dump(mode="json")
        for p in self.params:
            for value in p.candidates():
                raw = json.loads(json.dumps(base))
                try:
                    build_config(apply_overrides(raw, [override(p.key, value)]))
                except ConfigError as exc:
                    raise ConfigError(f"search space '{p.key}' (value {json.dumps(value)}): {exc}") from None

    def defaults_in(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """The config's own values of the space's keys, where the space contains them (the baseline trial)."""
        flat = cfg.model_dump(mode="json")
        out = {}
        for p in self.params:
            node: Any = flat
            for part in p.key.split("."):
                node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is not _MISSING and p.contains(node):
                out[p.key] = encode_choice(node) if p.kind == "choice" else node
        return out


_MISSING = object()


def parse_space(raw: Any, source: str = "search space") -> SearchSpace:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{source} must be a non-empty mapping of dotted config keys to distributions, "
            "e.g. optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}"
        )
    return SearchSpace(tuple(parse_param(key, spec) for key, spec in raw.items()))


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file '{p}' not found; see configs/sweeps/*.yaml for examples")
    # read like a config file: UTF-8, one line naming the file for any problem (deep nesting, alias bombs and
    # duplicate keys included)
    raw = read_yaml_file(p, "search space file", "configs/sweeps/linear.yaml")
    return parse_space(raw, f"search space file '{p}'")  # a bad entry's line names its key
