"""What a server killed while receiving a disk leaves under ``DATA/flex-tmp`` goes when
the next one starts (the crash audit's S4: a multi-GB upload killed midway stayed there
for ever, on the disk the packs live on); what a live process receives stays."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lamina.config import ServerSettings
from lamina.server.app import open_context
from lamina.server.services import flex_images
from tests.server.conftest import ADMIN_PASSWORD

_RECEIVE = """
import sys
from pathlib import Path
from lamina.server.services import flex_images
d = flex_images.tmp_dir(Path(sys.argv[1]))
(d / "disk.upload").write_bytes(b"half a disk " * 1000)
print(d, flush=True)
"""


def test_a_stopped_servers_uploads_go_at_the_next_start_and_a_live_ones_stay(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    settings = ServerSettings(data=data, admin_password=ADMIN_PASSWORD)
    open_context(settings)
    # A server process receiving a disk, then gone (as if killed: nothing removed).
    p = subprocess.run(
        [sys.executable, "-c", _RECEIVE, str(data)], capture_output=True, text=True, check=True
    )
    dead = Path(p.stdout.strip())
    assert (dead / "disk.upload").exists()
    live = flex_images.tmp_dir(data)  # this process's: still receiving
    (live / "disk.upload").write_bytes(b"arriving")
    base = data / "flex-tmp"
    old, new = base / "0123abcd.upload", base / "4567cdef.fetch"  # the layout before
    for f in (old, new):
        f.write_bytes(b"x" * 100)
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    # folders a process stopped while making them (no owner yet): old, and just made
    half, fresh = base / "halfmade", base / "justmade"
    for d in (half, fresh):
        d.mkdir()
    os.utime(half, (two_days_ago, two_days_ago))

    open_context(settings)  # the next start
    assert not dead.exists() and not old.exists() and not half.exists()
    assert fresh.exists()
    assert (live / "disk.upload").read_bytes() == b"arriving" and new.exists()
    assert flex_images.tmp_dir(data) == live  # the live process keeps its folder
