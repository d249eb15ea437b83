"""What keeps data alive: root sources and the tree walker the collector and check use.

The store does not know the tree format (that is ``lamina.tree``'s), so callers
hand in a ``Walker`` that lists what a tree object references. Roots are a list
of sources so later owners (layer versions, flex images) add theirs beside the
snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lamina.store.catalog import Catalog

#: tree object bytes -> (subtree ids, data chunk ids)
Walker = Callable[[bytes], tuple[list[bytes], list[bytes]]]


@dataclass(frozen=True)
class Root:
    """One thing that must stay readable: its label (for reports) and its blob ids.

    ``trees`` are tree objects, walked as trees whatever kind their index rows say:
    a blob is a tree because a root or a ``subtree`` names it, never because of its
    row (one blob, one kind). ``blobs`` are kept as they are (a snapshot record);
    one whose row says TREE is walked too, for root sources written before
    ``trees`` existed.
    """

    label: str
    blobs: tuple[bytes, ...]
    trees: tuple[bytes, ...] = ()


RootSource = Callable[[], Iterable[Root]]


def snapshot_roots(catalog: Catalog) -> RootSource:
    """Every kept snapshot: its snapshot object and its root tree."""

    def source() -> Iterable[Root]:
        for s in catalog.snapshots():
            yield Root(
                f"snapshot {s.id[:12]} of {s.source}", (bytes.fromhex(s.id),), trees=(s.root,)
            )

    return source
