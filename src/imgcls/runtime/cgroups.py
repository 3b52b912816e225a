"""Linux control groups as a process sees them: the folders of its cgroup, and of every cgroup above it up to
the root of each mounted hierarchy, where limits such as a CPU quota (``runtime/cpu_threads.py``) or a memory
limit (``runtime/memory.py``) are written. Read through ``/proc/self/cgroup`` and ``/proc/self/mountinfo``, so
a container's own cgroup (shown as ``/``) and cgroup v1 and v2 are handled alike.
"""

from __future__ import annotations

import os
from pathlib import Path


def cgroup_folders(controller: str, proc: Path = Path("/proc/self")) -> list[tuple[str, Path]]:
    """``(version, folder)`` for the process's cgroup and each one above it (innermost first), in the cgroup v2
    hierarchy and in the v1 hierarchy that carries ``controller`` (``"cpu"``, ``"memory"``); empty where cgroups
    cannot be read."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    member: dict[str, str] = {}  # "v2" / "v1" → the process's cgroup path in that hierarchy
    for line in memberships:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0":
            member["v2"] = path
        elif controller in controllers.split(","):
            member["v1"] = path
    folders: list[tuple[str, Path]] = []
    for line in mounts:
        fields = line.split()
        sep = fields.index("-") if "-" in fields else len(fields)
        if len(fields) < sep + 4:
            continue
        fstype, root, mount_point, options = fields[sep + 1], fields[3], fields[4], fields[sep + 3].split(",")
        version = (
            "v2" if fstype == "cgroup2" else "v1" if fstype == "cgroup" and controller in options else None
        )
        if version is None or version not in member:
            continue
        inside = os.path.relpath(member[version], root)
        if inside.startswith(".."):  # the process's cgroup is not visible under this mount
            continue
        top = Path(mount_point)
        folder = Path(os.path.normpath(top / inside))
        while True:
            folders.append((version, folder))
            if folder == top or folder.parent == folder:
                break
            folder = folder.parent
    return folders
