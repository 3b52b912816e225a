"""Processes that share the CPU split its cores (runtime/cpu_threads.py): sweep workers and DDP ranks get
cores // N intra-op threads each, unless the user set OMP_NUM_THREADS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fake_proc import fake_proc, write_files
from imgcls.config import load_config
from imgcls.engine import sweep as sw
from imgcls.runtime import cpu_threads
from imgcls.runtime.cpu_threads import THREADS_ENV, shared_cpu_env, shared_cpu_threads, threads_per_process


@pytest.mark.parametrize(
    ("cpus", "processes", "expected"), [(8, 1, 8), (8, 3, 2), (2, 2, 1), (2, 4, 1), (1, 1, 1)]
)
def test_each_process_gets_its_share_of_the_cores_and_at_least_one(monkeypatch, cpus, processes, expected):
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: cpus)
    assert threads_per_process(processes) == expected


def test_usable_cpus_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this platform")
    assert cpu_threads.usable_cpus() == len(os.sched_getaffinity(0))


def test_the_users_setting_wins_and_a_blank_one_does_not_count(monkeypatch):
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 8)
    assert shared_cpu_env(2, {THREADS_ENV: "3", "X": "y"}) == {THREADS_ENV: "3", "X": "y"}
    assert shared_cpu_env(2, {THREADS_ENV: " "})[THREADS_ENV] == "4"
    assert shared_cpu_env(4, {})[THREADS_ENV] == "2"


def test_a_process_started_with_the_shared_env_runs_that_many_torch_threads(monkeypatch):
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 6)
    env = shared_cpu_env(3, {k: v for k, v in os.environ.items() if k != THREADS_ENV})
    threads = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(threads) == 2


def test_the_block_sets_the_variable_for_child_processes_and_restores_it(monkeypatch):
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 4)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    with shared_cpu_threads(2):
        assert os.environ[THREADS_ENV] == "2"
    assert THREADS_ENV not in os.environ
    monkeypatch.setenv(THREADS_ENV, "1")
    with shared_cpu_threads(2):
        assert os.environ[THREADS_ENV] == "1"
    assert os.environ[THREADS_ENV] == "1"


def test_local_sweep_workers_split_the_cores_instead_of_each_taking_all(tmp_path, monkeypatch):
    """Before, K workers ran K × cores threads: measured 2.6-2.8x fewer images/s in all on 2 cores."""
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 4)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    space = {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}
    plan = sw.make_plan(load_config(None, []), space, trials=2, out=tmp_path / "sweep", study="threads")
    script = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('OMP_NUM_THREADS', 'unset'))"
    monkeypatch.setattr(
        sw, "worker_command", lambda plan, i: [sys.executable, "-c", script, str(tmp_path / f"threads{i}")]
    )
    sw.run_local_workers(plan, 2)
    assert [(tmp_path / f"threads{i}").read_text() for i in (1, 2)] == ["2", "2"]
    assert THREADS_ENV not in os.environ  # the parent's own environment is untouched


def test_the_ddp_launcher_gives_each_rank_its_share(monkeypatch):
    import torch.distributed.run as torchrun

    from imgcls import cli

    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 8)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    seen = []
    monkeypatch.setattr(torchrun, "run", lambda args: seen.append(os.environ.get(THREADS_ENV)))
    assert cli.launch_ddp(["--standalone", "--nproc-per-node=2", "-m", "imgcls", "train"]) == 0
    assert seen == ["4"] and THREADS_ENV not in os.environ


def _v1(quota: str) -> dict[str, str]:
    return {"cpu.cfs_quota_us": quota + "\n", "cpu.cfs_period_us": "100000\n"}


def test_a_cgroup_v1_quota_is_the_tightest_along_the_path_to_the_root(tmp_path):
    cpu = tmp_path / "cpu"
    write_files(cpu, _v1("-1"))
    write_files(cpu / "docker", _v1("300000"))
    write_files(cpu / "docker" / "abc", _v1("150000"))
    proc = fake_proc(
        tmp_path,
        "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        [("cgroup", "/", str(cpu), "rw,cpu,cpuacct"), ("cgroup", "/", str(tmp_path / "mem"), "rw,memory")],
    )
    assert cpu_threads.cpu_quota(proc) == 1.5


def test_a_cgroup_v2_limit_and_a_container_seeing_its_own_cgroup_as_the_root(tmp_path):
    unified = tmp_path / "unified"
    write_files(unified, {"cpu.max": "max 100000\n"})
    write_files(unified / "user.slice" / "job", {"cpu.max": "200000 100000\n"})
    proc = fake_proc(tmp_path, "0::/user.slice/job\n", [("cgroup2", "/", str(unified), "rw")])
    assert cpu_threads.cpu_quota(proc) == 2.0
    # inside a container's cgroup namespace its cgroup is "/", and the mount's top holds its limit
    container = tmp_path / "container"
    write_files(container, {"cpu.max": "50000 100000\n"})
    proc2 = tmp_path / "c"
    proc2.mkdir()
    (proc2 / "cgroup").write_text("0::/\n")
    (proc2 / "mountinfo").write_text(f"40 31 0:40 / {container} rw - cgroup2 cgroup2 rw\n")
    assert cpu_threads.cpu_quota(proc2) == 0.5


@pytest.mark.parametrize(
    ("memberships", "files"),
    [
        ("0::/job\n", {"cpu.max": "max 100000\n"}),  # no limit
        ("0::/job\n", {"cpu.max": "garbage\n"}),  # unreadable
        ("0::/job\n", {}),  # no cpu controller files
        (
            "0::/elsewhere/job\n",
            {"cpu.max": "100000 100000\n"},
        ),  # the process's cgroup is not under this mount
    ],
)
def test_no_limit_or_an_unreadable_one_is_none(tmp_path, memberships, files):
    unified = tmp_path / "unified"
    write_files(unified / "job", files)
    root = "/elsewhere-not" if "elsewhere" in memberships else "/"
    proc = fake_proc(tmp_path, memberships, [("cgroup2", root, str(unified), "rw")])
    assert cpu_threads.cpu_quota(proc) is None


def test_missing_proc_files_mean_no_limit(tmp_path):
    assert cpu_threads.cpu_quota(tmp_path / "nothing") is None


def test_usable_cpus_are_the_whole_cpus_of_the_quota_and_at_least_one(monkeypatch):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for quota, expected in ((None, cpus), (0.5, 1), (1.5, min(cpus, 1)), (1000.0, cpus)):
        monkeypatch.setattr(cpu_threads, "cpu_quota", lambda quota=quota: quota)
        assert cpu_threads.usable_cpus() == expected


def test_training_threads_follow_the_quota_unless_the_user_chose(monkeypatch):
    import torch

    from imgcls.runtime.precision import configure_backends

    before = torch.get_num_threads()
    cfg = load_config(None, []).train
    try:
        torch.set_num_threads(2)
        monkeypatch.delenv(THREADS_ENV, raising=False)
        monkeypatch.setattr(cpu_threads, "cpu_quota", lambda: 1.0)
        configure_backends(cfg, torch.device("cpu"))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv(THREADS_ENV, "2")  # the user's choice stands
        configure_backends(cfg, torch.device("cpu"))
        assert torch.get_num_threads() == 2
        cfg.threads = 2  # and so does the config's
        monkeypatch.delenv(THREADS_ENV)
        configure_backends(cfg, torch.device("cpu"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_inference_fits_torch_threads_to_the_quota_before_loading(tmp_path, monkeypatch):
    import torch

    from imgcls import api
    from imgcls.errors import UserError

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.delenv(THREADS_ENV, raising=False)
        monkeypatch.setattr(cpu_threads, "cpu_quota", lambda: 1.0)
        with pytest.raises(UserError):
            api.load(tmp_path / "no_run")  # `imgcls predict` and `imgcls.load` start here
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
