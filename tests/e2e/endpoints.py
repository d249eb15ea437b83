"""Directory endpoints that look like machines: shared OS files, own identity and user data."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tests.cli.corpus import make_tree


def make_endpoint(root: Path, hostname: str, user: str, *, os_seed: int = 11) -> Path:
    make_tree(root, seed=os_seed, small=200, large_mb=3)  # the "OS": identical on every endpoint
    etc = root / "etc"
    (etc / "os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n')
    (etc / "hostname").write_text(hostname + "\n")
    (etc / "machine-id").write_text(random.Random(hostname).randbytes(16).hex() + "\n")
    (etc / "app/app.conf").write_text("[main]\nmode = production\nworkers = 4\n")
    home = root / "home" / user
    (home / "Documents").mkdir(parents=True, exist_ok=True)
    (home / "Documents/thesis.txt").write_text(f"{user}'s thesis, draft 1\n" * 200)
    (home / "Documents/photo.raw").write_bytes(random.Random(user).randbytes(512 * 1024))
    os.chown(home / "Documents/thesis.txt", 1000, 1000)
    (root / "var/log/syslog").write_text("noise that is never protected\n")
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text("not a real proc\n")
    return root


def protected(desc: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    """What a default policy protects: everything but the excluded class's content."""
    return {k: v for k, v in desc.items() if not k.startswith(("var/log/", "proc/"))}
