"""A restore worker's blob source that checks what its fork server imported
(``test_restore_workers``): a module of its own, since the fork server imports it and
the test module imports the admin commands."""

from __future__ import annotations

import sys

from lamina.cli.remote_blobs import worker_blobs
from lamina.tree.sources import BatchedBlobs

#: What a restore's fork server must not import for workers that read through a server.
HEAVY = {"typer", "click", "rich", "lamina.cli.cvd"}


def lean_worker_blobs(url: str, token: str | None, id_key: bytes | None) -> BatchedBlobs:
    """``worker_blobs``, refusing to open in a worker whose fork server did not import
    httpx already, or imported httpx's command-line tool or the admin commands (typer)."""
    mods = set(sys.modules)
    if "httpx" not in mods or sys.modules.get("httpx._main") is not None:
        raise AssertionError("the fork server did not import httpx without its tool")
    if HEAVY & mods:
        raise AssertionError(f"the fork server imported {sorted(HEAVY & mods)}")
    return worker_blobs(url, token, id_key)


def main(url: str, token: str, key_hex: str, root_hex: str, out: str) -> None:
    """Restore ``root_hex`` into ``out`` over two workers opened by ``lean_worker_blobs``,
    in a process of its own (a fork server starts once per process, with the modules of
    the first restore that needed it); prints the files restored and the errors."""
    import functools
    from pathlib import Path

    from lamina.cli.client import Api
    from lamina.cli.remote_blobs import WORKER_MODULES, remote_blobs
    from lamina.tree.restore import restore_tree
    from lamina.tree.restore_types import Opener

    key = bytes.fromhex(key_hex)
    st = restore_tree(
        remote_blobs(Api(url, token), key),
        bytes.fromhex(root_hex),
        Path(out),
        processes=2,
        opener=Opener(
            functools.partial(lean_worker_blobs, url, token, key), (*WORKER_MODULES, __name__)
        ),
    )
    print(st.files, st.errors)


if __name__ == "__main__":
    main(*sys.argv[1:])
