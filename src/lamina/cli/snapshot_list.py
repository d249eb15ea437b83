"""What ``lamina snapshot list`` does, as a plain function: the Typer command
(``snapshot.py``) and the quick entry (``quick.py``) both call it, so the two print
the same. No Typer, Rich or SQLAlchemy on the way (tests/cli/test_startup.py)."""

from __future__ import annotations

import sys

from lamina.cli.output import emit_json, human_bytes
from lamina.cli.store_open import read_snapshots
from lamina.db.location import StoreLocation


def list_snapshots(loc: StoreLocation, source: str | None, as_json: bool) -> None:
    """List snapshots, oldest first."""
    snaps = read_snapshots(loc, source)
    if as_json:
        emit_json([x.to_public() for x in snaps])
        return
    for x in snaps:
        sys.stdout.write(
            f"{x.id[:12]}  {x.time:%Y-%m-%d %H:%M:%S}  {x.files:>8} files  "
            f"{human_bytes(x.bytes):>10}  {x.source}\n"
        )
    sys.stdout.flush()
