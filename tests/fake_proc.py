"""Fake ``/proc/self`` trees (``cgroup``, ``mountinfo``) and cgroup folders for the cgroup readers' tests
(CPU quota in ``test_cpu_threads.py``, memory headroom in ``test_memory_check.py``)."""

from __future__ import annotations


def fake_proc(tmp_path, memberships: str, mounts: list[tuple[str, str, str, str]]):
    """A /proc/self with ``cgroup`` and ``mountinfo``; mounts are (fstype, root, mount point, super options)."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(memberships)
    (proc / "mountinfo").write_text(
        "".join(
            f"{30 + i} 23 0:{28 + i} {root} {point} rw,relatime - {fstype} {fstype} {options}\n"
            for i, (fstype, root, point, options) in enumerate(mounts)
        )
        + "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
    )
    return proc


def write_files(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
