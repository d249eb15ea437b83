"""The TLS contexts of Lamina's HTTP clients (the admin's CLI, the agent): one per
process for each trust setting.

Building a context loads its CA certificates: from a bundle file (certifi's, which
httpx uses by default, or the system's) OpenSSL parses every certificate in it, about
50 ms of CPU, and httpx builds a context for every client it makes. A process that
makes several clients (an agent enrolls, then runs; tests and benches run many
commands in one process) pays that once per setting here. A context is never changed
once built: every Lamina client speaks HTTP/1.1, so the ALPN list httpcore sets on it
before each handshake is the same for all of them.

The contexts verify exactly as the ones they replace did: the key of each cache is the
whole setting it is built from (the environment's CA file and folder, a bundle file's
identity and version, a PEM's text).
"""

from __future__ import annotations

import functools
import os
import ssl

from lamina.errors import UsageError


def system_context() -> ssl.SSLContext:
    """What httpx builds for ``verify=True``: the CA file ``SSL_CERT_FILE`` names, else
    the folder ``SSL_CERT_DIR`` names, else certifi's bundle."""
    return _system(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _system(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    import httpx  # (its create_ssl_context reads the same two variables)

    return httpx.create_ssl_context(verify=True)


def bundle_context(path: str) -> ssl.SSLContext:
    """The system's defaults trusting the CA bundle at ``path`` (a PEM file) instead of the
    system's CAs; the same context until the file is replaced or changed."""
    try:
        st = os.stat(path)
        return _bundle(path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load the CA bundle {path}: {e}") from e


@functools.lru_cache(maxsize=8)
def _bundle(path: str, dev: int, ino: int, mtime_ns: int, size: int) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=path)
