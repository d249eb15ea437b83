"""httpx without its command-line tool: importing this module imports httpx as
``lamina.cli.main`` does.

httpx's ``__init__`` imports its own command-line tool (click, pygments, Rich: about
0.1 s of CPU) unless that import fails; Lamina never runs that tool. The entry point
blocks it before anything imports httpx; a process that does not start there (a
restore's fork server, which imports the modules its workers need, ``Opener.modules``)
imports this module instead. Its one effect is that import, as a module's import is.
"""

from __future__ import annotations

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

__all__ = ["httpx"]
