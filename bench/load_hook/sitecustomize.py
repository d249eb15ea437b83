"""Loaded at start-up by the load test's agents only: ``bench.load_seen`` puts this folder
first on their ``PYTHONPATH`` and names a folder in ``LAMINA_BENCH_POLL_LOG``.

Times each agent poll (``/agent/config``, ``/agent/work``) as the agent sees it: from
the call that sends the request (``httpx.Client.send``) to its answer read whole (a
request that is not streamed is read inside ``send``), the agent's own HTTP work, its
waits for a core and the connection's included. One line per poll, appended as it ends
to ``polls-PID.tsv`` in that folder: route, the epoch second it ended, its seconds, the
HTTP status (0: no answer), and the seconds of it the agent's thread waited for a core
(its run-queue wait, ``/proc/thread-self/schedstat``: under ``SCHED_IDLE`` on a shared
host, most of a slow poll). Without the variable, nothing is patched.
"""

from __future__ import annotations

import os

_FOLDER = os.environ.get("LAMINA_BENCH_POLL_LOG")

if _FOLDER:
    import time
    from typing import Any

    import httpx

    _ROUTES = ("/api/v1/agent/config", "/api/v1/agent/work")
    _send = httpx.Client.send
    _fd: list[int] = []

    def _run_delay() -> float:
        """Seconds this thread has waited on a run queue (0 where the kernel does not say)."""
        try:
            with open("/proc/thread-self/schedstat", "rb") as f:
                return int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def _timed_send(self: httpx.Client, request: httpx.Request, **kw: Any) -> httpx.Response:
        path = request.url.path
        if path not in _ROUTES:
            return _send(self, request, **kw)
        status = 0
        waited0 = _run_delay()
        t0 = time.perf_counter()
        try:
            response = _send(self, request, **kw)
            status = response.status_code
            return response
        finally:
            seconds = time.perf_counter() - t0
            waited = _run_delay() - waited0
            if not _fd:
                name = os.path.join(str(_FOLDER), f"polls-{os.getpid()}.tsv")
                _fd.append(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
            os.write(
                _fd[0],
                f"{path}\t{time.time():.3f}\t{seconds:.6f}\t{status}\t{waited:.6f}\n".encode(),
            )

    httpx.Client.send = _timed_send  # type: ignore[method-assign]
