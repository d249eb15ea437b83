"""What a restore that resumes into a staging folder a killed restore left does besides
an ordinary restore onto files (``lamina.tree.restore.Restorer``, ``_into``).

Each file it keeps or writes, and each symlink and node it makes, is recorded by device
and inode (``_proved``), and each folder it walks (``_visited``): if it does not finish
cleanly, everything else is removed from the staging folder before the rest is moved
into place (``restore_stage.prune``), so nothing the killed restore cut short, nor
another snapshot's file, is ever published. What it removes there goes whatever it is
(``restore_stage.force_remove``: a folder the killed restore finished read-only too).
"""

from __future__ import annotations

import contextlib
import os

from lamina.tree.restore_stage import force_remove, own_folder, prune
from lamina.tree.restore_writer import FileWriter


class ResumingWriter(FileWriter):
    """A ``FileWriter`` that can resume into a staging folder (``_proved`` not None)."""

    def _pruned(self, stage_fd: int, stage: bytes) -> bool:
        """A resumed restore that did not finish cleanly: what it did not prove or make is
        removed from the staging folder before the rest is moved into place (the killed
        restore's files may be cut short, or another snapshot's). False: some of it could
        not be, and the staging folder stays for the next restore to resume."""
        assert self._proved is not None
        try:
            prune(stage_fd, self._proved, self._visited)
        except OSError as err:
            self._report(f"{os.fsdecode(stage)}: {err.strerror}: left as it is, to resume")
            return False
        return True

    def _walked_into(self, fd: int) -> None:
        """Resuming: folder ``fd`` is walked (made writable, and this user's when the
        restore keeps no owners); closed if that fails."""
        try:
            own_folder(fd, None if self.same_owner else self._ids)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._visited.add((st.st_dev, st.st_ino))

    def _prove(self, fd: int, name: bytes) -> None:
        """Resuming: ``name`` in folder ``fd`` was made by this restore."""
        if self._proved is not None:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            self._proved.add((st.st_dev, st.st_ino))

    def _remove(self, fd: int, name: bytes) -> None:
        if self._proved is None:
            super()._remove(fd, name)
        else:  # in the staging folder: whatever the killed restore left, read-only or not
            with contextlib.suppress(FileNotFoundError):
                force_remove(fd, name)
