"""The machine a bench ran on, as the results files and the README's table name it.

Read from ``/proc`` and ``/sys`` only (no privileges, no extra tools): the CPU model and
cores, memory, the kernel, the disk under the work folder (device, size, rotational as the
kernel reports it, filesystem), and the load average when the bench started. On a virtual
machine the disk is the virtual one (``vda``); its backing storage cannot be seen from
inside, which the README's table says.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str | None:
    """The first ``model name`` of /proc/cpuinfo."""
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return None


def memory_bytes() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


@dataclass(frozen=True)
class Mount:
    source: str
    point: str
    fstype: str
    options: frozenset[str]


def mount_of(path: Path) -> Mount | None:
    """The mount ``path`` is on: the longest mount point above it in /proc/self/mounts."""
    best: Mount | None = None
    target = os.fspath(path.resolve())
    for line in (_read("/proc/self/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.point)):
            best = Mount(parts[0], point, parts[2], frozenset(parts[3].split(",")))
    return best


def _filesystem(path: Path) -> tuple[str | None, str | None]:
    """The mount source and filesystem type of the longest mount point above ``path``."""
    m = mount_of(path)
    return (m.source, m.fstype) if m else (None, None)


def disk(path: Path) -> dict[str, Any]:
    """The block device and filesystem holding ``path`` (the nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    source, fstype = _filesystem(path)
    out: dict[str, Any] = {"source": source, "fstype": fstype}
    st = os.stat(path)
    sysdev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not sysdev.exists():  # overlayfs, tmpfs: no block device of its own
        return out
    dev = sysdev.resolve()
    if (dev / "partition").exists():
        dev = dev.parent
    size = _read(dev / "size")
    rotational = _read(dev / "queue" / "rotational")
    out.update(
        device=dev.name,
        model=_read(dev / "device" / "model"),
        size_bytes=int(size) * 512 if size and size.isdigit() else None,
        rotational=None if rotational is None else rotational == "1",
    )
    return out


DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")


def page_out_schemes(root: Path = DAMON) -> list[dict[str, Any]]:
    """The kernel's running DAMON schemes that page memory out (proactive reclaim): how
    long a region must have gone unaccessed, in seconds, and the bytes a second allowed.
    Page cache older than that is dropped whatever the free memory, which is why the
    benches read each step's inputs just before it (``bench.run.Run.warm``)."""
    out: list[dict[str, Any]] = []
    for kd in sorted(root.glob("[0-9]*")):
        if _read(kd / "state") != "on":
            continue
        for ctx in sorted((kd / "contexts").glob("[0-9]*")):
            aggr_us = _read(ctx / "monitoring_attrs" / "intervals" / "aggr_us")
            for sch in sorted((ctx / "schemes").glob("[0-9]*")):
                if _read(sch / "action") != "pageout":
                    continue
                min_age = _read(sch / "access_pattern" / "age" / "min")
                quota = _read(sch / "quotas" / "bytes")
                reset = _read(sch / "quotas" / "reset_interval_ms")
                age_s = (
                    int(min_age) * int(aggr_us) / 1e6
                    if min_age and aggr_us and min_age.isdigit() and aggr_us.isdigit()
                    else None
                )
                rate = (
                    int(quota) * 1000 / int(reset)
                    if quota and reset and quota.isdigit() and reset.isdigit() and int(reset)
                    else None
                )
                out.append(
                    {"idle_s": age_s, "bytes_per_s": rate, "operations": _read(ctx / "operations")}
                )
    return out


def describe(work: Path) -> dict[str, Any]:
    """What the results files record of the machine, taken when a bench starts."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "disk": disk(work),
        "load_at_start": list(os.getloadavg()),
        "page_out": page_out_schemes(),
    }


def disk_label(d: dict[str, Any]) -> str:
    """``vda 256 GiB (rotational per the kernel), ext4`` from :func:`disk`'s answer."""
    parts = [d.get("device") or d.get("source") or "?"]
    if d.get("model"):
        parts.append(str(d["model"]))
    if d.get("size_bytes"):
        parts.append(f"{d['size_bytes'] / 2**30:.0f} GiB")
    if d.get("rotational") is not None:
        parts.append("(rotational per the kernel)" if d["rotational"] else "(non-rotational)")
    label = " ".join(parts)
    return f"{label}, {d['fstype']}" if d.get("fstype") else label
