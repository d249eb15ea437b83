"""Run a ``lamina`` command inside the test process, as ``python -m lamina.cli`` would run it.

A ``lamina`` subprocess spends most of its time starting: the interpreter, the CLI's
imports and, under ``make test``, coverage (about 1 to 2 s of CPU each; the suite makes
hundreds of them). :func:`invoke` calls the same ``lamina.cli.main()`` with the same
arguments, environment and standard input, and returns what ``subprocess.run`` would: the
exit code, stdout and stderr. Around the call it swaps in, and afterwards puts back,
everything of the process a command reads or changes: ``sys.argv``, the standard streams,
``os.environ``, the SIGINT handler, the root logger's handlers and levels, and
``__main__`` (so usage lines name ``python -m lamina.cli`` as a subprocess's do).

Tests about the process itself (start-up imports, packaging, signals, a terminal) run
real subprocesses; so does every call when ``LAMINA_TESTS_SUBPROCESS=1`` is set (the
helpers in tests/cli/conftest.py and tests/e2e/conftest.py read it).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import traceback
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import lamina.cli

#: Set to 1 to run every ``lamina`` command of the tests in its own process.
SUBPROCESS_ENV = "LAMINA_TESTS_SUBPROCESS"

# The loggers ``lamina.cli.logs.setup_logging`` sets a level on or clears.
_LOGGERS = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "alembic")
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


def subprocesses_wanted(env: Mapping[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get(SUBPROCESS_ENV, "") == "1"


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _logging_kept() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = {n: logging.getLogger(n) for n in (*_LOGGERS, *_UVICORN)}
    kept = {n: (lg.level, lg.handlers[:], lg.propagate) for n, lg in named.items()}
    try:
        yield
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
        for n, (lvl, hs, propagate) in kept.items():
            named[n].setLevel(lvl)
            named[n].handlers[:] = hs
            named[n].propagate = propagate


def _umask() -> int:
    """This process's umask, read without setting it (a server thread of the test may be
    creating files meanwhile)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise RuntimeError("no Umask line in /proc/self/status")


def invoke(
    args: Sequence[str], env: Mapping[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``lamina <args>`` in this process; the result as ``subprocess.run(..., text=True)``."""
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode()), encoding="utf-8")
    main_module = types.ModuleType("__main__")
    main_module.__package__ = "lamina.cli"
    saved = (sys.argv, sys.stdin, sys.stdout, sys.stderr, sys.modules["__main__"])
    sigint = signal.getsignal(signal.SIGINT)
    umask = _umask()
    cwd = os.getcwd()
    code = 0
    with _environment(env), _logging_kept():
        sys.argv = [os.path.join(os.path.dirname(lamina.cli.__file__), "__main__.py"), *args]
        sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
        sys.modules["__main__"] = main_module
        try:
            lamina.cli.main()
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            # What the interpreter does with an uncaught exception: the traceback, exit 1.
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.argv, sys.stdin, sys.stdout, sys.stderr, sys.modules["__main__"] = saved
            signal.signal(signal.SIGINT, sigint)
            os.umask(umask)
            os.chdir(cwd)
    return subprocess.CompletedProcess(
        ["lamina", *args],
        code,
        out.getvalue().decode("utf-8", errors="replace"),
        err.getvalue().decode("utf-8", errors="replace"),
    )
