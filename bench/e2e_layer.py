"""The layer-update figure: a reference endpoint, a recorded change, and the bytes an assigned endpoint downloads against the bytes that changed."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CommandFailed,
    rmtree,
)
from bench.corpus import copy_tree
from bench.e2e_lamina import LaminaE2E
from bench.e2e_procs import Cli

LAYER_MB = 150.0  # the reference endpoint: this much of the corpus (all of it when smaller)


def copy_sample(src: Path, dst: Path, budget: float, seed: int) -> dict[str, int]:
    """Regular files and symlinks of ``src`` copied to ``dst`` (modes and times kept),
    picked at random (seeded) until ``budget`` bytes; all of it when it is smaller."""
    picks: list[tuple[str, int, bool]] = []
    for dirpath, _dirs, names in os.walk(src):
        for name in names:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode):
                picks.append((os.path.relpath(p, src), st.st_size, stat.S_ISLNK(st.st_mode)))
    picks.sort()
    random.Random(seed).shuffle(picks)
    total = files = 0
    for rel, size, is_link in picks:
        if not is_link and total + size > budget:
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if is_link:
            os.symlink(os.readlink(src / rel), out)
        else:
            shutil.copy2(src / rel, out)
            total += size
        files += 1
    return {"files": files, "bytes": total}


def change_bytes(root: Path, fraction: float, seed: int) -> dict[str, Any]:
    """Overwrite about ``fraction`` of the bytes under ``root``, same sizes: a region in
    the middle of the 4 largest files (most of it) and 16 small files (4 to 256 KiB). In a
    tree without files over 256 KiB (the small-files corpus) whole files, picked at random,
    are rewritten until the changes add up to ``fraction``."""
    rng = random.Random(seed)
    files = sorted(
        (p.stat().st_size, p)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_nlink == 1
    )
    total = sum(s for s, _ in files)
    target = total * fraction
    large = [p for s, p in files[-4:] if s >= 256 * 1024]
    small = [p for s, p in files if 4096 <= s <= 256 * 1024]
    small = rng.sample(small, min(16, len(small)))
    plan: list[tuple[Path, int]] = []
    for p in small:
        plan.append((p, max(64, p.stat().st_size // 8)))
    rest = max(0.0, target - sum(n for _, n in plan))
    for p in large:
        plan.append((p, min(p.stat().st_size // 2, int(rest / len(large)))))
    if not large:  # no large file takes the rest: whole files do, picked at random
        planned = {p for p, _ in plan}
        pool = [(s, p) for s, p in files if s >= 64 and p not in planned]
        rng.shuffle(pool)
        for s, p in pool:
            if sum(n for _, n in plan) >= target:
                break
            plan.append((p, s))
    changed: list[dict[str, Any]] = []
    for p, n in plan:
        if n <= 0:
            continue
        mode = p.stat().st_mode
        if not mode & stat.S_IWUSR:
            os.chmod(p, stat.S_IMODE(mode) | stat.S_IWUSR)
        size = p.stat().st_size
        off = (size - n) // 2
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(rng.randbytes(n))
        changed.append(
            {"path": os.fspath(p.relative_to(root)), "size": size, "offset": off, "bytes": n}
        )
    return {
        "tree_bytes": total,
        "changed_bytes": sum(c["bytes"] for c in changed),
        "large_files": len([c for c in changed if c["size"] > 256 * 1024]),
        "small_files": len([c for c in changed if c["size"] <= 256 * 1024]),
        "files": changed,
    }


def sha256(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def layer_update(
    lam: LaminaE2E, corpus: Path, work: Path, seed: int, layer_mb: float = LAYER_MB
) -> dict[str, Any]:
    """Capture a base layer v1 from a reference endpoint (a sample of the corpus) and apply
    it to a target endpoint (a copy of the same tree); change ~1% of the reference's bytes,
    capture v2, deliver it: how many bytes the target downloads against how many changed."""
    base = work / "layers"
    ref_root, tgt_root = base / "ref" / "root", base / "tgt" / "root"
    copied = copy_sample(corpus, ref_root, layer_mb * 1024 * 1024, seed)
    tgt_root.parent.mkdir(parents=True)
    copy_tree(ref_root, tgt_root)
    admin, url = lam.admin, lam.server.url
    ref_token = admin.json("token", "create", "--policy", "bench", "--reference")["token"]
    tgt_token = admin.json("token", "create", "--policy", "bench")["token"]

    def enroll(name: str, token: str, root: Path) -> tuple[Cli, Path, str]:
        cli, state = Cli(base / name / "config", lam.agent.env), base / name / "state"
        before = {c["id"] for c in admin.json("cvd", "list")}
        cli.run(
            "agent", "enroll", "--server", url, "--token", token, "--root", root, "--state", state
        )
        cvd = cli.json("agent", "status", "--state", state).get("cvd_id") or ""
        if not cvd:
            [cvd] = [c["id"] for c in admin.json("cvd", "list") if c["id"] not in before]
        return cli, state, cvd

    ref, ref_state, ref_cvd = enroll("ref", ref_token, ref_root)
    ref.run("agent", "run", "--once", "--state", ref_state)
    v1 = admin.json("layer", "capture", ref_cvd, "--name", "bench-base")
    tgt, tgt_state, tgt_cvd = enroll("tgt", tgt_token, tgt_root)
    tgt.run("agent", "run", "--once", "--state", tgt_state)
    [a1] = admin.json("layer", "assign", tgt_cvd, "--base", "bench-base:1")
    tgt.run("agent", "run", "--once", "--state", tgt_state)
    tgt.run("agent", "boot", "--state", tgt_state)
    tgt.run("agent", "run", "--once", "--sync", "--state", tgt_state)

    changes = change_bytes(ref_root, 0.01, seed)
    ref.run("agent", "run", "--once", "--sync", "--state", ref_state)
    v2 = admin.json("layer", "capture", ref_cvd, "--update", "bench-base")
    [a2] = admin.json("layer", "assign", tgt_cvd, "--base", "bench-base:2")
    if not a2.get("task"):
        raise CommandFailed(f"assigning v2 made no task: {a2}")
    t0 = time.perf_counter()
    tgt.run("agent", "run", "--once", "--state", tgt_state, sync_first=True)
    stage_s = time.perf_counter() - t0
    task = admin.json("task", "show", a2["task"])
    result = task.get("result") or {}
    tgt.run("agent", "boot", "--state", tgt_state)
    differ = [
        c["path"]
        for c in changes["files"]
        if sha256(tgt_root / c["path"]) != sha256(ref_root / c["path"])
    ]
    layer_bytes = v2["versions"][-1].get("bytes") or v1["versions"][0].get("bytes")
    down, changed = result.get("downloaded_bytes"), changes["changed_bytes"]
    out = {
        "reference_tree": copied,
        "layer_files": v2["versions"][-1].get("files"),
        "layer_bytes": layer_bytes,
        "changed_bytes": changed,
        "changed_files": len(changes["files"]),
        "downloaded_bytes": down,
        "seeded_bytes": result.get("seeded_bytes"),
        "delta_files": result.get("delta_files"),
        "downloaded_per_changed": down / changed if down is not None and changed else None,
        "downloaded_per_layer": down / layer_bytes if down is not None and layer_bytes else None,
        "stage_s": round(stage_s, 2),
        "verified": not differ,
        "differing_files": differ,
        "v1_assign": a1,
        "task": task,
        "changes": changes,
    }
    rmtree(base)
    return out
