"""The CPU of a commit asked again while a chunk it names is still promised.

An in-process server (threshold 1) and two devices: B uploads ``--folders`` folders of
100 one-chunk files and commits a snapshot naming them and one chunk A was told to send
and has not, so each commit is answered 409 ``uploads_pending``; after the first, the
next ``--retries`` are timed by ``getrusage`` of this process (client and server both);
then A sends the chunk and the commit must land. Prints the ms of CPU per retry.
``--common N``: B's snapshot also names N chunks A uploaded (common to B).

A/B: run it with ``PYTHONPATH=OTHER/src`` for the other code (docs/design.md, "The
commit under endpoints syncing at once (session 16)").
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve

from lamina.config import ServerSettings
from lamina.store.blob import BlobKind, blob_id
from lamina.tree.model import Entry, encode_tree


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(folders: int = 30, retries: int = 20, common: int = 0) -> float:
    """Seconds of CPU per commit retried (see the module's docstring)."""
    with tempfile.TemporaryDirectory() as d:
        s = ServerSettings(
            data=Path(d) / "data",
            port=free_port(),
            admin_password=ADMIN_PASSWORD,
            share_threshold=1,
        )
        for url in serve(s):
            srv = Live(url, s.data)
            a, b = srv.device("pc-a"), srv.device("pc-b")
            rng = random.Random(1)
            base = rng.randbytes(5000)
            wanted = blob_id(a.id_key, base)
            r = a.client.post("/agent/missing", json={"ids": [wanted.hex()]})
            assert r.json()["missing"] == [wanted.hex()], r.text  # A claims it
            shared = [rng.randbytes(200) for _ in range(common)]
            entries = []
            for f in range(folders):
                ids = b.upload([(BlobKind.DATA, rng.randbytes(200)) for _ in range(100)])
                files = [
                    Entry(name=b"f%03d" % i, type="file", size=200, content=[c])
                    for i, c in enumerate(ids)
                ]
                [tree] = b.upload([(BlobKind.TREE, encode_tree(files))])
                entries.append(Entry(name=b"d%03d" % f, type="dir", subtree=tree))
            if shared:  # A's chunks B names too (taken as common at B's commit)
                ids = a.upload([(BlobKind.DATA, x) for x in shared])
                files = [
                    Entry(name=b"c%05d" % i, type="file", size=200, content=[c])
                    for i, c in enumerate(ids)
                ]
                [tree] = b.upload([(BlobKind.TREE, encode_tree(files))])
                entries.append(Entry(name=b"common", type="dir", subtree=tree))
            entries.append(Entry(name=b"zz", type="file", size=len(base), content=[wanted]))
            [root] = b.upload([(BlobKind.TREE, encode_tree(entries))])
            body = {"root": root.hex(), "files": 100 * folders + 1, "bytes": 0}
            for n in range(retries + 1):
                if n == 1:
                    t0 = _cpu()
                r = b.client.post("/agent/commit", json=body)
                assert r.status_code == 409, r.text
            per = (_cpu() - t0) / max(retries, 1)
            a.upload([(BlobKind.DATA, base)])
            r = b.client.post("/agent/commit", json=body)
            assert r.status_code == 200, r.text
            for c in srv.clients:
                c.close()
    return per


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folders", type=int, default=30, help="folders of 100 files (default 30)")
    ap.add_argument("--retries", type=int, default=20, help="commits timed (default 20)")
    ap.add_argument("--common", type=int, default=0, help="chunks of A's B names (default 0)")
    args = ap.parse_args(argv)
    print(f"{run(args.folders, args.retries, args.common) * 1000:.2f} ms of CPU per commit retried")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
