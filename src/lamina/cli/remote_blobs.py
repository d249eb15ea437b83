"""The blobs of a restore as download (``lamina cvd restore --output``), read through the
server's API: the restoring process's source and each worker process's own.

A module of its own, importing little, because a restore's fork server imports it
(``WORKER_MODULES``) for every worker: ``lamina.cli.cvd`` brings typer and every admin
command group's module (about 0.13 s of CPU), which no worker uses.
"""

from __future__ import annotations

from typing import Any

from lamina.cli.client import Api
from lamina.tree.sources import BatchedBlobs, http_blobs

#: What a restore's fork server imports once for all its workers (``Opener.modules``):
#: the HTTP client every worker makes, without its command-line tool (``Api`` imports
#: httpx when it is made, so that other commands load it only when they make a
#: request; a worker did, with that tool: about 0.13 s of CPU each), and this module.
WORKER_MODULES = ("lamina.cli.httpx_lean", __name__)


def remote_blobs(api: Api, id_key: bytes | None) -> BatchedBlobs:
    """Blobs read through the server's API. With the store's ``id_key`` (a restore as
    download hands it to a caller allowed ``data.read``) the server only decrypts them and
    this process inflates each one and hashes it against its id; without (a version-3
    server) the server decrypts, inflates and verifies them."""

    def post(path: str, body: Any) -> bytes:
        out = api.post(path, body)
        return out if isinstance(out, bytes) else b""

    return http_blobs(post, id_key, stored=id_key is not None)


def worker_blobs(url: str, token: str | None, id_key: bytes | None) -> BatchedBlobs:
    """A restore worker process's own client of the server (``remote_blobs``)."""
    return remote_blobs(Api(url, token), id_key)
