"""Streaming a migrated CVD's user data in while the machine runs.

After ``agent boot`` applied a migration's boot set, each agent cycle restores
the snapshot's user-data class into the live root, in batches, saving progress
after each. A file already on the machine that differs from the snapshot's is
never overwritten: it is counted as ``kept_local`` and left alone; a file that
appears between the check and the restore is renamed aside as
``NAME.lamina-local`` by the restore itself. Restores write temporary names
and rename, so an interrupted stream (a reboot, a lost connection) leaves whole
files only, and the next cycle carries on from what is still missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamina.agent.live import compare_live, lstat_or_none
from lamina.layers.rules import RuleSet, globs
from lamina.store.keys import ChunkingSecret
from lamina.tree.model import Entry, decode_tree
from lamina.tree.paths import Load
from lamina.tree.restore import restore_tree
from lamina.tree.restore_types import BlobSource

BATCH = 256
KEEP_ASIDE = ".lamina-local"


@dataclass
class StreamProgress:
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    kept_local: int = 0
    errors: list[str] = field(default_factory=list)
    done: bool = False

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["errors"] = self.errors[:20]
        return d


def walk_class(
    load: Load, tree: bytes, rules: RuleSet, cls: str, prefix: str = ""
) -> Iterator[tuple[str, Entry]]:
    """The entries below ``tree`` (paths as ``walk`` gives them) in the folders where a
    path of class ``cls`` can be: a folder none of the class's patterns can reach below
    (``/usr`` for the user data) is listed, not read. The staging read the system's
    folders already: the stream reads only the user data's."""
    patterns = globs(rules.classes.get(cls, ()))
    for e in decode_tree(load(tree)):
        path = f"{prefix}/{e.name.decode(errors='surrogateescape')}"
        yield path, e
        if e.subtree is not None and patterns.below(path) is not False:
            yield from walk_class(load, e.subtree, rules, cls, path)


def stream_user_data(
    blobs: BlobSource,
    tree_root: bytes,
    root: Path,
    rules: RuleSet,
    chunking: ChunkingSecret,
    on_progress: Callable[[StreamProgress], None] | None = None,
    streamed_class: str = "user_data",
) -> StreamProgress:
    """Restore what is missing of the snapshot's user data; keep what the machine changed."""
    prog = StreamProgress()
    todo: list[tuple[str, int]] = []
    for path, e in walk_class(blobs.get, tree_root, rules, streamed_class):
        if e.type == "dir" or rules.classify(path) != streamed_class:
            continue
        if rules.hardware_bound(path):
            continue
        rel = path.lstrip("/")
        prog.files_total += 1
        prog.bytes_total += e.size
        st = lstat_or_none(root / rel)
        if st is None:
            todo.append((rel, e.size))
        elif compare_live(root / rel, st, e, chunking) == "content":
            prog.kept_local += 1  # changed on the new machine: never overwritten
        else:
            prog.files_done += 1
            prog.bytes_done += e.size
    if on_progress:
        on_progress(prog)
    for i in range(0, len(todo), BATCH):
        batch = todo[i : i + BATCH]
        res = restore_tree(
            blobs,
            tree_root,
            root,
            paths=[rel for rel, _ in batch],
            chunking=chunking,
            keep_aside=KEEP_ASIDE,
        )
        prog.errors += res.errors
        prog.files_done += len(batch)
        prog.bytes_done += sum(size for _, size in batch)
        if on_progress:
            on_progress(prog)
    prog.done = not prog.errors
    return prog
