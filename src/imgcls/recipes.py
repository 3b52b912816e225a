"""Shipped recipes: the experiment configs and taxonomy files that come with imgcls, found by name.

The repository's top-level ``configs/`` directory is the one source; a wheel carries a copy as package data
(``imgcls/configs``, copied by ``setup.py`` at build time), and a source checkout or an editable install
reads ``configs/`` itself. ``imgcls train quickstart`` or ``imgcls train fashion_mnist/fch_rbf`` resolve a
shipped recipe when no such file exists (a path always wins); ``imgcls configs`` lists the recipes with
their one-line descriptions (the first comment line of each file).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from imgcls.errors import ConfigError

#: the sub-folder of taxonomy files (not experiment configs)
TAXONOMIES = "taxonomies"
#: the sub-folder of sweep search spaces (``imgcls sweep --space``; not experiment configs)
SWEEP_SPACES = "sweeps"
SUFFIXES = (".yaml", ".yml")
#: a command-line override (``train.epochs=3``) where a config file was expected
_OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+)*=")


def shipped_root() -> Path | None:
    """The folder of shipped recipes: the package data of an installed wheel, else the checkout's ``configs/``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parents[1] / "configs"):
        if (candidate / "quickstart.yaml").is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Recipe:
    name: str  # e.g. "fashion_mnist/fch_rbf"
    path: Path
    description: str


def description(path: Path) -> str:
    """The first comment line of a YAML file, without the ``#`` ('' when it starts with no comment)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        return stripped.lstrip("#").strip() if stripped.startswith("#") else ""
    return ""


def list_recipes() -> list[Recipe]:
    """Every shipped experiment config (taxonomy files and sweep search spaces excluded), sorted by name."""
    root = shipped_root()
    if root is None:
        return []
    recipes = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix in SUFFIXES and path.is_file() and rel.parts[0] not in (TAXONOMIES, SWEEP_SPACES):
            recipes.append(Recipe(rel.with_suffix("").as_posix(), path, description(path)))
    return recipes


def _shipped(name: str, folder: str | None = None) -> Path | None:
    root = shipped_root()
    if root is None:
        return None
    rel = Path(name).as_posix().removeprefix("./").removeprefix("configs/")
    base = root / folder if folder and not rel.startswith(f"{folder}/") else root
    for candidate in (base / rel, *(base / f"{rel}{s}" for s in SUFFIXES)):
        if candidate.is_file():
            return candidate
    return None


def resolve_config(spec: str | Path) -> Path:
    """``spec`` itself when it is a file; else the shipped recipe of that name (``quickstart``,
    ``fashion_mnist/fch_rbf``, ``configs/quickstart.yaml``); else a one-line :class:`ConfigError`. A path that
    exists but is no regular file (a FIFO, a process substitution ``<(...)``, a device) is refused rather than
    read: it can be read once only (or block), and a run is named after its config file. A spec that looks
    like an override (``train.epochs=3``) gets a message saying that the config file comes first."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.exists() and not path.is_dir():  # a pipe (`<(...)`), socket or device: read once, maybe never
        raise ConfigError(
            f"config file '{spec}' is not a regular file (a pipe, process substitution <(...) or device); "
            "save the config to a .yaml file and pass its path"
        )
    found = _shipped(str(spec))
    if found is not None:
        return found
    if _OVERRIDE.match(str(spec)):
        raise ConfigError(
            f"config file '{spec}' not found: it looks like an override (section.key=value); the config file "
            f"comes first and the overrides after it, e.g. configs/quickstart.yaml {spec}"
        )
    names = [r.name for r in list_recipes()]
    close = difflib.get_close_matches(str(spec).removesuffix(".yaml").removeprefix("configs/"), names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"config file '{spec}' not found, and no shipped recipe has that name; pass a YAML file such as "
        f"configs/quickstart.yaml, or a recipe name (`imgcls configs` lists them).{hint}"
    )


def resolve_taxonomy(spec: str) -> Path | None:
    """The shipped taxonomy file ``spec`` names (``fashion_mnist.yaml``, ``taxonomies/fashion_mnist``,
    ``configs/taxonomies/fashion_mnist.yaml``), or None."""
    return _shipped(spec, TAXONOMIES)
