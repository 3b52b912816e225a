"""The command line answers every user mistake with a clear message, exit code 2 and no traceback.

Usage errors (an unknown option or command, a missing argument, a bad number) and bad config files run in real
subprocesses (``python -m imgcls``); the path mistakes run in-process through ``imgcls.cli.main`` (milliseconds
each): a RUN_DIR that is missing, a plain folder, a file (empty, text, random bytes, a checkpoint), a run whose
checkpoint is corrupt; outputs (``compare -o``, ``data dedup --out``, ``export -o``, ``predict --explain-dir``) that
are a folder where a file is expected or the reverse, under a file, or unwritable, all refused before any slow work.
``predict --explain`` gives same-named images from different folders different figure files, and a second
Ctrl-C while the CLI exits after an interruption ends it quietly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imgcls import api
from imgcls.evaluation.explain import explain_stems
from test_cli import REPO, cli_env, run, run_concurrently, squeeze
from test_robust_inputs import TINY, assert_one_line_error, make_tree, run_cli
from tiny_runs import single_thread

as_root = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions"
)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, data tree) of an evaluated 1-epoch run on 16×16 images of 3 classes."""
    tmp = tmp_path_factory.mktemp("usage_errors")
    root = make_tree(tmp / "data")
    with single_thread():
        result = api.train(None, [*TINY, f"data.root={root}", f"output.dir={tmp / 'runs'}"])
    return result.run_dir, root


# ------------------------------------------------------------------------------- usage errors (subprocesses)
def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


USAGE_CASES = {  # name: (arguments, words the error line must hold)
    "unknown-option": (["train", "--bogus"], ["No such option: --bogus"]),
    "unknown-command": (["trian"], ["No such command 'trian'"]),
    "missing-argument": (["evaluate"], ["Missing argument", "run_dir"]),
    "bad-int": (["data", "dedup", "{tmp}", "--workers", "abc"], ["Invalid value for '--workers'", "integer"]),
    "bad-float": (["export", "{tmp}", "--atol", "tiny"], ["Invalid value for '--atol'"]),
}


@pytest.fixture(scope="module")
def usage_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every usage case, run as concurrent subprocesses (start-up dominates their time)."""
    tmp = str(tmp_path_factory.mktemp("usage"))
    return run_concurrently(
        {name: [a.replace("{tmp}", tmp) for a in args] for name, (args, _) in USAGE_CASES.items()}
    )


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_error_exits_2_with_usage_and_no_traceback(usage_runs, case):
    result = usage_runs[case]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert "Usage:" in result.stderr and "--help' for help" in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.stderr
    for words in USAGE_CASES[case][1]:
        assert words in error[0], (words, result.stderr)


CONFIG_CASES = {  # name: (file name, content or None for a folder, words of the one error line)
    "folder": ("configs_folder", None, ["is a folder, not a config file", "configs/quickstart.yaml"]),
    "list": ("list.yaml", "- optim\n- train\n", ["must hold a mapping of sections"]),
    "scalar": ("scalar.yaml", "just words\n", ["must hold a mapping of sections"]),
    "invalid": ("bad.yaml", "optim: [1, 2\ntrain: :\n", ["is not valid YAML at line 2"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_file_is_one_line(tmp_path, case):
    name, content, words = CONFIG_CASES[case]
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    result = run("train", str(path), f"output.dir={tmp_path / 'runs'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
    for w in [str(path), *words]:
        assert squeeze(w) in squeeze(result.stderr), (w, result.stderr)
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_as_config_suggests_resume(tiny, capsys, monkeypatch):
    run_dir, _ = tiny
    code, _, err = run_cli(["train", str(run_dir)], capsys, monkeypatch)
    assert_one_line_error(code, err, "is a folder, not a config file", f"imgcls train --resume {run_dir}")
    code, _, err = run_cli(["config", "show", str(run_dir)], capsys, monkeypatch)
    assert_one_line_error(code, err, f"pass its config file '{run_dir / 'config.yaml'}'")


def test_a_config_file_and_resume_together_are_refused(tiny, capsys, monkeypatch):
    run_dir, _ = tiny
    code, _, err = run_cli(
        ["train", "configs/quickstart.yaml", "--resume", str(run_dir)], capsys, monkeypatch
    )
    assert_one_line_error(
        code, err, "pass either a config file or --resume RUN_DIR, not both", "train.epochs=20"
    )


def test_huge_cache_and_dedup_sizes_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    for args in (
        ["data", "cache", str(tmp_path), str(tmp_path / "c"), "--size", "100000"],
        ["data", "dedup", str(tmp_path), "--size", "100000"],
    ):
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 2 and "4096" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_a_batch_larger_than_the_test_set_times_inference_on_the_test_set(tiny, tmp_path):
    run_dir, _ = tiny
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with single_thread():
        metrics = api.evaluate(copy, data_overrides=["eval.batch_size=100000"])
    assert metrics["inference_batch_size"] == metrics["num_samples"] <= 1024


# ------------------------------------------------------------------------------- RUN_DIR and --checkpoint
def command_for(name: str, run_dir: Path, image: Path) -> list[str]:
    return {
        "predict": ["predict", str(run_dir), str(image)],
        "evaluate": ["evaluate", str(run_dir)],
        "export": ["export", str(run_dir)],
    }[name]


def bad_run_dir(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / {"missing": "no_such_run", "folder": "plain", "empty": "empty.pt"}.get(
        kind, f"{kind}.pt"
    )
    if kind == "folder":
        path.mkdir()
        (path / "notes.txt").write_text("not a run\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a text file renamed to .pt\n")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    return path


BAD_RUN_DIRS = {  # kind: words of the one error line (besides the path)
    "missing": ["run directory", "does not exist", "runs/<name>/<time>"],
    "folder": ["is not a run directory", "no config.yaml", "runs/<name>/<time>"],
    "empty": ["is a file, not a run directory", "runs/<name>/<time>"],
    "text": ["is a file, not a run directory", "runs/<name>/<time>"],
    "random": ["is a file, not a run directory", "runs/<name>/<time>"],
}


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
@pytest.mark.parametrize("kind", list(BAD_RUN_DIRS))
def test_bad_run_dir_is_one_line_naming_it(tmp_path, capsys, monkeypatch, command, kind):
    path = bad_run_dir(tmp_path, kind)
    code, out, err = run_cli(command_for(command, path, tmp_path / "any.png"), capsys, monkeypatch)
    assert_one_line_error(code, err, f"'{path}'", *BAD_RUN_DIRS[kind])
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name] if kind != "missing" else []
    )  # nothing written


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_checkpoint_file_as_run_dir_names_its_run(tiny, tmp_path, capsys, monkeypatch, command):
    run_dir, root = tiny
    checkpoint = run_dir / "checkpoints" / "best.pt"
    code, _, err = run_cli(
        command_for(command, checkpoint, root / "test" / "a" / "00.png"), capsys, monkeypatch
    )
    assert_one_line_error(
        code, err, "is a checkpoint file", f"pass its run directory '{run_dir}'", "--checkpoint"
    )


def test_folder_of_runs_suggests_one_of_them(tiny, capsys, monkeypatch):
    run_dir, _ = tiny
    runs = run_dir.parent.parent  # output.dir: <name>/<time> below it
    code, _, err = run_cli(["evaluate", str(runs)], capsys, monkeypatch)
    assert_one_line_error(code, err, "is not a run directory but holds 1 run(s)", f"e.g. '{run_dir}'")


def test_run_without_checkpoint_suggests_resume(tiny, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(tiny[0] / "config.yaml", run_dir / "config.yaml")
    code, _, err = run_cli(["export", str(run_dir)], capsys, monkeypatch)
    assert_one_line_error(code, err, "has no checkpoint yet", f"imgcls train --resume {run_dir}")


@pytest.mark.parametrize("content", [b"", b"plain text, not a checkpoint\n", os.urandom(4096)])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_corrupt_checkpoint_in_a_run_is_one_line(tiny, tmp_path, capsys, monkeypatch, content, command):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny[0] / "config.yaml", run_dir / "config.yaml")
    (run_dir / "checkpoints" / "best.pt").write_bytes(content)
    code, _, err = run_cli(
        command_for(command, run_dir, tiny[1] / "test" / "a" / "00.png"), capsys, monkeypatch
    )
    # the words are runtime/checkpoint.py's; here: one line naming the file
    assert_one_line_error(code, err, "checkpoint", f"'{run_dir / 'checkpoints' / 'best.pt'}'")


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_bad_checkpoint_name_is_one_line(tiny, capsys, monkeypatch, command):
    run_dir, root = tiny
    args = command_for(command, run_dir, root / "test" / "a" / "00.png")
    code, _, err = run_cli([*args, "--checkpoint", "newest"], capsys, monkeypatch)
    assert_one_line_error(code, err, "--checkpoint must be best, last, ema or swa, not 'newest'")
    file = str(run_dir / "checkpoints" / "best.pt")
    code, _, err = run_cli([*args, "--checkpoint", file], capsys, monkeypatch)
    assert_one_line_error(code, err, f"not a file ('{file}')", "pass the run directory", "--checkpoint last")


# ------------------------------------------------------------------------------- output paths
def test_compare_output_in_a_new_folder_is_created(tiny, tmp_path, capsys, monkeypatch):
    target = tmp_path / "new" / "folder" / "table.md"
    code, out, err = run_cli(["compare", str(tiny[0]), "-o", str(target)], capsys, monkeypatch)
    assert code == 0, err
    assert target.read_text().startswith("| run |") and f"wrote {target} (1 row(s))" in " ".join(out.split())


def test_export_output_in_a_new_folder_is_created(tiny, tmp_path, capsys, monkeypatch):
    target = tmp_path / "new" / "exports"
    code, _, err = run_cli(["export", str(tiny[0]), "--torchscript", "-o", str(target)], capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p.name for p in target.iterdir()) == ["export.json", "model.torchscript.pt"]


def output_case(case: str, run_dir: Path, root: Path, target: Path) -> list[str]:
    image = str(root / "test" / "a" / "00.png")
    return {
        "compare": ["compare", str(run_dir), "-o", str(target)],
        "dedup": ["data", "dedup", str(root / "train"), "--out", str(target), "--workers", "0"],
        "export": ["export", str(run_dir), "-o", str(target)],
        "explain-dir": ["predict", str(run_dir), image, "--explain-dir", str(target)],
    }[case]


FILE_OUTPUTS = {"compare": "--output", "dedup": "--out"}
FOLDER_OUTPUTS = {"export": "--output", "explain-dir": "--explain-dir"}


@pytest.fixture
def no_slow_work(monkeypatch):
    """Make the slow steps fail the test if they start: a bad output must be refused before them."""

    def too_late(*args, **kwargs):
        raise AssertionError("started the work before checking the output path")

    for name in ("data_dedup", "export", "predict"):
        monkeypatch.setattr(api, name, too_late)
    monkeypatch.setattr("imgcls.evaluation.compare.compare_runs", too_late)


@pytest.mark.parametrize("case", list(FILE_OUTPUTS))
def test_folder_given_as_output_file_is_refused_first(
    tiny, tmp_path, capsys, monkeypatch, no_slow_work, case
):
    target = tmp_path / "a_folder"
    target.mkdir()
    code, _, err = run_cli(output_case(case, *tiny, target), capsys, monkeypatch)
    assert_one_line_error(code, err, f"{FILE_OUTPUTS[case]} '{target}' is a folder", "pass a file path")
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("case", list(FOLDER_OUTPUTS))
def test_file_given_as_output_folder_is_refused_first(
    tiny, tmp_path, capsys, monkeypatch, no_slow_work, case
):
    target = tmp_path / "a_file"
    target.write_text("keep me\n")
    code, _, err = run_cli(output_case(case, *tiny, target), capsys, monkeypatch)
    assert_one_line_error(code, err, f"{FOLDER_OUTPUTS[case]} '{target}' is a file", "pass a folder")
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("case", [*FILE_OUTPUTS, *FOLDER_OUTPUTS])
def test_output_below_a_file_is_refused_first(tiny, tmp_path, capsys, monkeypatch, no_slow_work, case):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me\n")
    target = blocker / "sub" / "out"
    code, _, err = run_cli(output_case(case, *tiny, target), capsys, monkeypatch)
    assert_one_line_error(code, err, f"'{target}' cannot be created: '{blocker}' is a file, not a folder")
    assert blocker.read_text() == "keep me\n"


@as_root
@pytest.mark.parametrize("case", [*FILE_OUTPUTS, *FOLDER_OUTPUTS])
def test_unwritable_output_is_refused_first(tiny, tmp_path, capsys, monkeypatch, no_slow_work, case):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        target = locked / "new" / "out"
        code, _, err = run_cli(output_case(case, *tiny, target), capsys, monkeypatch)
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, err, f"'{target}' cannot be written: no write permission in '{locked}'")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("case", [*FILE_OUTPUTS, *FOLDER_OUTPUTS])
def test_output_without_permission_is_refused_first(tiny, tmp_path, capsys, monkeypatch, no_slow_work, case):
    """The same as above where the tests run as root: the permission check itself is made to say no."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, *args, **kw: Path(p) != locked and real_access(p, *args, **kw)
    )
    target = locked / "out"
    code, _, err = run_cli(output_case(case, *tiny, target), capsys, monkeypatch)
    assert_one_line_error(code, err, f"'{target}' cannot be written: no write permission in '{locked}'")


def test_dedup_writes_its_manifest_into_a_new_folder(tiny, tmp_path, capsys, monkeypatch):
    target = tmp_path / "new" / "manifest.json"
    code, out, err = run_cli(output_case("dedup", *tiny, target), capsys, monkeypatch)
    assert code == 0, err
    assert target.is_file() and f"manifest: {target}" in out


# ------------------------------------------------------------------------------- explanation file names
def test_same_named_images_in_two_folders_get_two_explanations(tiny, tmp_path, capsys, monkeypatch):
    run_dir, root = tiny
    images = [root / "test" / "a" / "00.png", root / "test" / "b" / "00.png"]
    folder = tmp_path / "explain"
    code, out, err = run_cli(
        ["predict", str(run_dir), *map(str, images), "--explain-dir", str(folder)], capsys, monkeypatch
    )
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "a_00_feature_maps.png",
        "a_00_gradcam.png",
        "b_00_feature_maps.png",
        "b_00_gradcam.png",
    ]
    assert (
        f"gradcam: {folder / 'a_00_gradcam.png'}" in out and f"gradcam: {folder / 'b_00_gradcam.png'}" in out
    )


def test_explain_stems_are_unique_and_stable():
    assert explain_stems(["/data/cat/0.png"]) == ["0"]
    assert explain_stems(["/data/cat/0.png", "/data/dog/0.png"]) == ["cat_0", "dog_0"]
    assert explain_stems(["/d/x/0.png", "/d/x/0.jpg", "/d/x/0.png"]) == ["0", "0_2", "0_3"]
    assert explain_stems(["/d/a b.png", "/d/a_b.png", "/d/A_B.png"]) == ["a_b", "a_b_2", "A_B_3"]
    assert explain_stems([None, "/d/image_0.png", None]) == ["image_0", "image_0_2", "image_2"]
    assert explain_stems(["/d/v1.2/cat.png", "/d/v1.3/cat.png"]) == ["v1.2_cat", "v1.3_cat"]
    assert explain_stems(["photos/cat/0.png", "photos/dog/0.png"]) == explain_stems(
        [os.path.abspath("photos/cat/0.png"), os.path.abspath("photos/dog/0.png")]
    )


# ------------------------------------------------------------------------------- Ctrl-C pressed twice
def run_interrupted_train(tmp_path: Path, raised: str) -> subprocess.CompletedProcess:
    """``imgcls train`` whose training raises ``raised``, in a process that gets one more SIGINT while it
    exits (an atexit callback sends it, as a second Ctrl-C pressed quickly after the first would land)."""
    script = textwrap.dedent(
        f"""
        import atexit, os, signal, sys, time
        from imgcls import api, cli
        from imgcls.errors import TrainingInterrupted

        def train(*args, **kwargs):
            raise {raised}

        def second_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
            print("atexit callback finished", file=sys.stderr)

        api.train = train
        atexit.register(second_ctrl_c)
        sys.argv = ["imgcls", "train", "configs/quickstart.yaml", "output.dir={tmp_path}"]
        cli.main()
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (
            'TrainingInterrupted("stopped by SIGINT at epoch 1; resume with `imgcls train --resume R`", 130)',
            "interrupted: stopped by SIGINT at epoch 1; resume with `imgcls train --resume R`",
        ),
        ("KeyboardInterrupt", "interrupted: resume a training run with `imgcls train --resume RUN_DIR`"),
    ],
)
def test_second_ctrl_c_while_exiting_is_quiet(tmp_path, raised, message):
    result = run_interrupted_train(tmp_path, raised)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
