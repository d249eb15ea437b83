"""`lamina cvd restore --output` over worker processes: each worker is a client of the
real server of its own (`cvd.worker_blobs`), reading blobs as stored and hashing them."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from lamina.cli.client import Api
from lamina.cli.cvd import id_key_of, remote_blobs, worker_blobs
from lamina.tree.restore import restore_tree
from lamina.tree.restore_types import Opener

from .conftest import Live


def test_a_cvd_restore_in_worker_processes_reads_through_the_server(
    live: Live, tmp_path: Path
) -> None:
    dev = live.device("desk-4")
    files = {f"f{i:02d}".encode(): os.urandom(1000 + 37 * i) for i in range(40)}
    snap = dev.commit_files({name: [data] for name, data in files.items()})
    hd = live.user("hd", "helpdesk")
    doc = hd.post(f"/cvds/{dev.cvd_id}/snapshots/{snap}/download", json={"paths": []}).json()
    token = hd.headers["Authorization"].removeprefix("Bearer ")
    key = id_key_of(doc)
    out = tmp_path / "out"
    parent = remote_blobs(Api(live.url, token), key)
    st = restore_tree(
        parent,
        bytes.fromhex(doc["root"]),
        out,
        processes=2,
        opener=Opener(functools.partial(worker_blobs, live.url, token, key), ("lamina.cli.cvd",)),
    )
    assert st.errors == [] and st.files == 40
    assert {os.fsencode(p.name): p.read_bytes() for p in out.iterdir()} == files
    # the restoring process read the tree (4 KiB here), none of the files (68 KiB)
    assert parent.fetched_bytes < sum(map(len, files.values())) // 4
