"""Build step that ships the recipes: the wheel carries the repository's ``configs/`` (experiment configs and
taxonomy files) as package data under ``imgcls/configs``. ``configs/`` stays the one source; editable
installs and source checkouts read it in place (see ``imgcls.recipes``). Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def recipe_files() -> list[Path]:
    """The files under configs/ a wheel ships (relative paths)."""
    source = ROOT / "configs"
    suffixes = (".yaml", ".yml", ".json", ".csv")
    return sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file() and p.suffix in suffixes)


class BuildPyWithRecipes(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads configs/ in place
        target = Path(self.build_lib) / "imgcls" / "configs"
        for rel in recipe_files():
            self.mkpath(str((target / rel).parent))
            self.copy_file(str(ROOT / "configs" / rel), str(target / rel), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs += [str(Path(self.build_lib) / "imgcls" / "configs" / rel) for rel in recipe_files()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithRecipes})
