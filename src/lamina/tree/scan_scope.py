"""What a scan covers: the callbacks that leave paths out, and an estimate of the files
and bytes it will read (a walk of metadata only, for progress percentages)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

#: (path relative to the root, is a directory) -> leave it out entirely
ExcludeFn = Callable[[bytes, bool], bool]
#: directory relative to the root -> keep the directory but none of its content
PruneFn = Callable[[bytes], bool]
#: folder relative to the root -> ``ExcludeFn``'s answer for every file in it and for
#: every sub-folder in it (None: it depends on the name, ask ``ExcludeFn`` for each).
#: Asked once per folder, so a folder a policy decides whole costs no call per entry.
FolderExcludeFn = Callable[[bytes], tuple[bool | None, bool | None]]


def estimate(root: Path, exclude: ExcludeFn, prune: PruneFn) -> tuple[int, int]:
    """Files and bytes a scan will cover (a walk of metadata only), for progress percentages."""
    files = size = 0
    todo = [(os.fsencode(root), b"")]
    while todo:
        path, rel = todo.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            continue
        for de in entries:
            child_rel = rel + b"/" + de.name if rel else de.name
            try:
                is_dir = de.is_dir(follow_symlinks=False)
                if exclude(child_rel, is_dir):
                    continue
                if is_dir:
                    if not prune(child_rel):
                        todo.append((de.path, child_rel))
                elif de.is_file(follow_symlinks=False):
                    files += 1
                    size += de.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return files, size
