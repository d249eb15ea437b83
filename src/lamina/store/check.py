"""Verify a store: structure always, every byte with ``read_data``.

Structure: every indexed pack exists with its recorded size; every index row
lies inside its pack; every root's trees decode and every blob they name is
indexed. With ``read_data``: every pack is read whole, its header compared with
the index, and every blob decrypted, decompressed and re-hashed. Each problem
names the pack, the blob and the roots that depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import blake3

from lamina.errors import IntegrityError, LaminaError
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.catalog import PACK_OK, PACK_WRITING
from lamina.store.pack import FOOTER, pack_name_from_object, pack_object_name, read_entries
from lamina.store.progress import ProgressFn
from lamina.store.repository import Store
from lamina.store.roots import Root, RootSource, Walker


@dataclass
class CheckReport:
    packs: int = 0
    blobs: int = 0
    trees: int = 0
    roots: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check(
    store: Store,
    sources: Sequence[RootSource],
    walk: Walker,
    *,
    read_data: bool = False,
    progress: ProgressFn | None = None,
) -> CheckReport:
    rep = CheckReport()
    cat = store.catalog
    on_disk: dict[str, int] = {}
    for name, size in store.backend.list("packs/"):
        pack = pack_name_from_object(name)
        if pack is None:
            rep.warnings.append(f"unexpected object {name} in the pack area")
        else:
            on_disk[pack] = size
    packs = cat.packs()
    known = {p.name: p for p in packs}
    bad_packs: set[str] = set()
    for p in packs:
        if p.state == PACK_WRITING:
            if p.name in on_disk:
                rep.warnings.append(
                    f"pack {p.name[:16]} was written but never indexed (an interrupted backup); "
                    f"gc removes it, rebuild-index adopts it"
                )
            continue
        if p.state != PACK_OK:
            continue
        rep.packs += 1
        if p.name not in on_disk:
            rep.errors.append(f"pack {p.name[:16]} is indexed but missing from the store")
            bad_packs.add(p.name)
        elif on_disk[p.name] != p.size:
            rep.errors.append(
                f"pack {p.name[:16]} is {on_disk[p.name]} bytes, the index says {p.size} (truncated?)"
            )
            bad_packs.add(p.name)
    for name in on_disk:
        if name not in known:
            rep.warnings.append(f"pack {name[:16]} is not in the index (rebuild-index adopts it)")

    sizes = {p.name: p.size for p in packs}
    damaged: set[bytes] = set()
    for row in cat.iter_blobs():
        rep.blobs += 1
        limit = sizes.get(row.pack, 0) - FOOTER.size
        if row.offset + row.length > limit:
            rep.errors.append(
                f"blob {row.id.hex()[:16]} lies outside pack {row.pack[:16]} "
                f"({row.offset}+{row.length} > {limit})"
            )
            damaged.add(row.id)
        if row.pack in bad_packs:
            damaged.add(row.id)

    if read_data:
        _read_all(store, packs, bad_packs, on_disk, rep, damaged, progress)

    # Walk every root: trees must decode, every named blob must be indexed and sound.
    seen: set[bytes] = set()
    walked: set[bytes] = set()
    for src in sources:
        for root in src():
            rep.roots += 1
            problems = _walk_root(store, walk, root, seen, walked, damaged, rep)
            for msg in problems:
                rep.errors.append(f"{root.label}: {msg}")
    return rep


def _read_all(
    store: Store,
    packs: Sequence[object],
    bad_packs: set[str],
    on_disk: dict[str, int],
    rep: CheckReport,
    damaged: set[bytes],
    progress: ProgressFn | None,
) -> None:
    cat = store.catalog
    names = [p for p in on_disk if p not in bad_packs]
    for i, name in enumerate(sorted(names)):
        if progress:
            progress("reading packs", i, len(names))
        indexed = {r.id: r for r in cat.pack_blobs(name)}
        try:
            data = store.backend.read(pack_object_name(name))
        except LaminaError as err:
            rep.errors.append(f"pack {name[:16]}: cannot read: {err.message}")
            damaged.update(indexed)
            continue
        rep.bytes_read += len(data)
        if blake3.blake3(data).hexdigest() != name:
            rep.errors.append(f"pack {name[:16]}: content does not match its name (damaged)")
        try:
            entries = read_entries(store.keys.data_key, data)
        except IntegrityError as err:
            rep.errors.append(f"pack {name[:16]}: {err.message}")
            damaged.update(indexed)
            continue
        in_header = {e.id: e for e in entries}
        for bid, row in indexed.items():
            e = in_header.get(bid)
            if e is None or (e.offset, e.length) != (row.offset, row.length):
                rep.errors.append(
                    f"pack {name[:16]}: blob {bid.hex()[:16]} is indexed there but not in its header"
                )
                damaged.add(bid)
        for e in entries:
            try:
                blob.open_sealed(
                    store.keys.data_key,
                    store.keys.chunking.id_key,
                    e.kind,
                    e.id,
                    data[e.offset : e.offset + e.length],
                    e.raw_length,
                )
            except IntegrityError as err:
                rep.errors.append(f"pack {name[:16]}: blob {e.id.hex()[:16]}: {err.message}")
                damaged.add(e.id)


def _walk_root(
    store: Store,
    walk: Walker,
    root: Root,
    seen: set[bytes],
    walked: set[bytes],
    damaged: set[bytes],
    rep: CheckReport,
) -> list[str]:
    """Problems under one root. A blob is a tree because a root or a ``subtree`` names
    it, not because of its index row, as for the collector; a tree the store holds
    only as DATA is damage (a device uploaded a tree as data; one blob, one kind)."""
    problems: list[str] = []
    cat = store.catalog
    todo = list(root.trees)
    fresh = [b for b in root.blobs if b not in seen]
    if fresh:
        have = cat.locate(fresh)
        for bid in fresh:
            seen.add(bid)
            loc = have.get(bid)
            if loc is None:
                problems.append(f"blob {bid.hex()[:16]} is missing from the store")
            elif bid in damaged:
                problems.append(f"blob {bid.hex()[:16]} in pack {loc.pack[:16]} is damaged")
            elif loc.kind == BlobKind.TREE:
                todo.append(bid)
    while todo:
        batch = list({t for t in todo[:256] if t not in walked})
        todo = todo[256:]
        locs = cat.locate(batch, kind=BlobKind.TREE)
        others = [b for b in batch if b not in locs]
        as_other = cat.locate(others) if others else {}
        for bid in batch:
            walked.add(bid)
            seen.add(bid)
            loc = locs.get(bid)
            if loc is None:
                loc = as_other.get(bid)
                if loc is None:
                    problems.append(f"tree {bid.hex()[:16]} is missing from the store")
                    continue
                problems.append(
                    f"tree {bid.hex()[:16]} is stored only as a {loc.kind.name} blob "
                    f"in pack {loc.pack[:16]}, not as a tree (kind confusion; "
                    f"`lamina store gc` stores it again as a tree)"
                )
            if bid in damaged:
                problems.append(f"tree {bid.hex()[:16]} in pack {loc.pack[:16]} is damaged")
                continue
            rep.trees += 1
            try:
                subtrees, chunks = walk(store.open_blob(bid, loc))
            except LaminaError as e:
                problems.append(f"tree {bid.hex()[:16]}: {e.message}")
                continue
            fresh = [c for c in chunks if c not in seen]
            if fresh:
                have = cat.locate(fresh, kind=BlobKind.DATA)
                lacking = [c for c in fresh if c not in have]
                elsewhere = cat.locate(lacking) if lacking else {}
                for c in fresh:
                    seen.add(c)
                    if c in have:
                        if c in damaged:
                            problems.append(
                                f"tree {bid.hex()[:16]} names chunk {c.hex()[:16]}, damaged in "
                                f"pack {have[c].pack[:16]}"
                            )
                    elif c in elsewhere:
                        # Readable (content is checked against the id) and kept by gc,
                        # which marks by reference: not damage, but not as written.
                        rep.warnings.append(
                            f"tree {bid.hex()[:16]} names chunk {c.hex()[:16]}, stored only as "
                            f"a {elsewhere[c].kind.name} blob"
                        )
                    else:
                        problems.append(
                            f"tree {bid.hex()[:16]} names chunk {c.hex()[:16]}, missing from the store"
                        )
            todo.extend(t for t in subtrees if t not in walked)
    return problems
