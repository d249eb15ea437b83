"""What a restore that resumes into a staging folder a killed restore left does besides
an ordinary restore onto files (``lamina.tree.restore.Restorer``, ``_into``).

An entry that fails is removed from the staging folder (whatever the killed restore left
under its name, cut short or another snapshot's, must not be moved into place); if it
cannot be, or the restore stops before its walk is done (an interrupt, a fatal error),
nothing is moved into place: the staging folder stays as it is, for the next restore to
resume. What it removes there goes whatever it is (``restore_stage.force_remove``: a
folder the killed restore finished read-only too).
"""

from __future__ import annotations

import contextlib
import os

from lamina.tree.restore_stage import force_remove, own_folder
from lamina.tree.restore_writer import FileWriter


class ResumingWriter(FileWriter):
    """A ``FileWriter`` for restores onto files: resuming into a staging folder
    (``_resuming``), keeping a requested path found in place aside (``keep_aside``)."""

    keep_aside: bytes | None = None

    #: resuming: an entry that failed could not be removed (the staging folder stays)
    _unsafe = False

    def _walked_into(self, fd: int) -> None:
        """Resuming: folder ``fd`` is walked (made writable, and this user's when the
        restore keeps no owners); closed if that fails."""
        try:
            own_folder(fd, None if self.same_owner else self._ids[0])
        except BaseException:
            os.close(fd)
            raise

    def _drop_failed(self, fd: int, name: bytes) -> None:
        if not self._resuming:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                force_remove(fd, name)
        except OSError as err:
            self._unsafe = True
            self._report(f"{os.fsdecode(name)}: {err.strerror} (cannot be removed)")

    def _remove(self, fd: int, name: bytes) -> None:
        if not self._resuming:
            super()._remove(fd, name)
        else:  # in the staging folder: whatever the killed restore left, read-only or not
            with contextlib.suppress(FileNotFoundError):
                force_remove(fd, name)

    def _keep_aside(self, fd: int, name: bytes, rel: list[bytes]) -> None:
        """Rename a requested path found in place to NAME + suffix, inside folder ``fd``
        (reached by the walk, never through a symlink)."""
        assert self.keep_aside is not None
        if self._existing(fd, name) is None:
            return
        aside = name + self.keep_aside
        os.rename(name, aside, src_dir_fd=fd, dst_dir_fd=fd)
        self.stats.kept.append(os.fsdecode(b"/".join([*rel[:-1], aside])))
