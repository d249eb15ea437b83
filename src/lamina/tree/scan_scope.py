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


def _per_path(rel: bytes) -> tuple[bool | None, bool | None]:
    return None, None


def estimate(
    root: Path, exclude: ExcludeFn, prune: PruneFn, folder: FolderExcludeFn = _per_path
) -> tuple[int, int]:
    """Files and bytes a scan will cover (a walk of metadata only), for progress percentages.

    ``folder`` answers for a whole folder's files and sub-folders, as the scanner asks it:
    ``exclude`` is called only for a path it leaves undecided (a folder's walk costs one
    call, not one per entry), and a file's size is read from its folder's descriptor (one
    name looked up, not the whole path again)."""
    files = size = 0
    todo = [(os.fsencode(root), b"")]
    while todo:
        path, rel = todo.pop()
        file_answer, dir_answer = folder(rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            with os.scandir(fd) as it:
                entries = list(it)
            for de in entries:
                try:
                    if de.is_dir(follow_symlinks=False):
                        child = os.fsencode(de.name)
                        child_rel = rel + b"/" + child if rel else child
                        out = dir_answer if dir_answer is not None else exclude(child_rel, True)
                        if not out and not prune(child_rel):
                            todo.append((path + b"/" + child, child_rel))
                    elif de.is_file(follow_symlinks=False):
                        if file_answer is None:
                            child = os.fsencode(de.name)
                            if exclude(rel + b"/" + child if rel else child, False):
                                continue
                        elif file_answer:
                            continue
                        files += 1
                        size += os.lstat(de.name, dir_fd=fd).st_size
                except OSError:
                    continue
        except OSError:
            continue
        finally:
            os.close(fd)
    return files, size
