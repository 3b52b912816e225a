"""Shipped recipes (imgcls.recipes, setup.py): a recipe name resolves to a shipped config when no such file
exists (a path wins), ``imgcls configs`` lists them with their first comment line, and a wheel built from
the repository carries configs/ and taxonomies as package data: installed into a fresh virtual environment,
outside the repository, it resolves a recipe by name."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.config import load_config
from imgcls.errors import ConfigError
from imgcls.recipes import description, list_recipes, resolve_config, resolve_taxonomy, shipped_root
from imgcls.taxonomy import build_taxonomy

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a folder outside the repository, as a user of the installed package does."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_checkout_configs_folder_is_the_source():
    assert shipped_root() == CONFIGS


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("quickstart", "quickstart.yaml"),
        ("fashion_mnist/fch_rbf", "fashion_mnist/fch_rbf.yaml"),
        ("fashion_mnist/fch_rbf.yaml", "fashion_mnist/fch_rbf.yaml"),
        ("configs/quickstart.yaml", "quickstart.yaml"),  # the repository path works outside the repository
    ],
)
def test_recipe_names_resolve_outside_the_repository(elsewhere, spec, expected):
    assert not Path(spec).exists()
    assert resolve_config(spec) == CONFIGS / expected
    assert load_config(spec).output.name == Path(expected).stem


def test_a_path_wins_over_a_recipe_name(elsewhere):
    (elsewhere / "quickstart").write_text("train: {epochs: 1}\n")
    assert resolve_config("quickstart") == Path("quickstart")
    assert load_config("quickstart").train.epochs == 1


def test_an_unknown_name_suggests_the_closest_recipe(elsewhere):
    with pytest.raises(ConfigError, match=r"not found.*Did you mean 'fashion_mnist/fch_rbf'\?$"):
        load_config("fashion_mnist/fch_rfb")


def test_recipes_list_with_their_first_comment_line():
    recipes = {r.name: r for r in list_recipes()}
    shipped = {p.relative_to(CONFIGS).with_suffix("").as_posix() for p in CONFIGS.rglob("*.yaml")}
    assert set(recipes) == {name for name in shipped if not name.startswith(("taxonomies/", "sweeps/"))}
    first = CONFIGS.joinpath("quickstart.yaml").read_text().splitlines()[0]
    assert recipes["quickstart"].description == first.removeprefix("# ")
    assert recipes["fashion_mnist/fch_rbf"].description.startswith("RBF-FCH (seed 000) on Fashion-MNIST")


def test_description_is_the_first_comment_line(tmp_path):
    (tmp_path / "a.yaml").write_text("\n#   Hello there\n# second\ndata: {}\n")
    (tmp_path / "b.yaml").write_text("data: {}\n# late comment\n")
    assert description(tmp_path / "a.yaml") == "Hello there"
    assert description(tmp_path / "b.yaml") == ""


def test_imgcls_configs_command_lists_names_and_descriptions():
    result = CliRunner().invoke(app, ["configs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(list_recipes())
    line = next(x for x in lines if x.startswith("fashion_mnist/fch_rbf "))
    assert "RBF-FCH (seed 000) on Fashion-MNIST" in line


def test_shipped_taxonomy_resolves_by_its_repository_path(elsewhere):
    assert (
        resolve_taxonomy("configs/taxonomies/fashion_mnist.yaml")
        == CONFIGS / "taxonomies" / "fashion_mnist.yaml"
    )
    assert resolve_taxonomy("fashion_mnist.yaml") == CONFIGS / "taxonomies" / "fashion_mnist.yaml"
    from imgcls.data.sources import FASHION_MNIST_CLASSES

    classes = FASHION_MNIST_CLASSES
    tree = build_taxonomy("configs/taxonomies/fashion_mnist.yaml", classes)
    assert tree.num_classes == 10


@pytest.mark.slow  # ≈ 25 s (wheel build, venv, install, two interpreter start-ups); the tests above cover resolution
def test_wheel_ships_the_recipes_and_resolves_one_by_name_in_a_fresh_venv(tmp_path):
    """Build the wheel from a copy of the repository (the checkout stays clean), install it into a new
    virtual environment, and run its ``imgcls`` from outside the repository."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "configs", source / "configs")
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "LINES")}
    env["OMP_NUM_THREADS"] = "1"

    def run(*cmd, cwd=tmp_path) -> str:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path / "dist"),
        ".",
        cwd=source,
    )
    (wheel,) = (tmp_path / "dist").glob("imgcls-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv))
    python = venv / "bin" / "python"
    # the dependencies (torch, ...) come from this interpreter's site-packages, after the venv's own: a plain
    # path entry, so the .pth files there (the repository's editable install) are not processed
    purelib = Path(
        run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    (purelib / "zz_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        str(wheel),
    )

    script = (
        "import json, imgcls.recipes as r\n"
        "from imgcls.config import load_config, config_to_yaml\n"
        "cfg = load_config('fashion_mnist/fch_rbf')\n"
        "print(json.dumps({'module': r.__file__, 'root': str(r.shipped_root()), 'name': cfg.output.name,\n"
        "  'args': cfg.resolved_component_args()['model.head_args'],\n"
        "  'taxonomy': str(r.resolve_taxonomy('configs/taxonomies/fashion_mnist.yaml'))}))\n"
    )
    found = json.loads(run(str(python), "-c", script))
    assert found["module"].startswith(str(venv)) and found["root"] == str(
        Path(found["module"]).parent / "configs"
    )
    assert found["name"] == "fch_rbf" and found["args"]["memory_size"] == 1024
    assert found["taxonomy"] == found["root"] + "/taxonomies/fashion_mnist.yaml"
    listed = run(str(venv / "bin" / "imgcls"), "configs")  # the installed console script
    assert "quickstart" in listed and "fashion_mnist/fch_rbf" in listed
