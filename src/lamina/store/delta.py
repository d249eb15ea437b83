"""File deltas: a new version of a file as a zstd frame against the old version.

Format version 1 (``DELTA_VERSION``): one zstd frame (RFC 8878) of the new
file's bytes, compressed with the old file's bytes as a raw-content dictionary
(dictionary id 0: the same frame ``zstd --patch-from=OLD`` writes), with the
content size in the frame header. Reading one needs exactly the old bytes the
writer used; nothing else is framed here: the caller names the old and the new
version (their chunk ids) around it and verifies the result against the new
version's chunk ids (see ``docs/design.md``, "File deltas").

Parameters were measured on the bench's data (24 MiB of shared libraries, 1% of
it rewritten with random bytes): zstd's fast strategies (levels 1-4) barely use
a large dictionary (10x the changed bytes), the greedy strategy with hash and
chain tables sized to the dictionary gives 1.02x in about 2 s; small files use
level 19 (about 1.003x, milliseconds).
"""

from __future__ import annotations

import io

import zstandard

from lamina.errors import IntegrityError, TooLargeError
from lamina.store.blob import frame_content_size

DELTA_VERSION = 1
#: Old and new versions above this size are sent as chunks (the endpoint's chunker
#: cuts a file in pieces of this size, so a delta's result is one piece).
MAX_FILE = 64 * 1024 * 1024
#: Below this (old + new), the slow but tight level 19.
SMALL = 512 * 1024


def _dict(old: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _window_log(old_size: int, new_size: int) -> int:
    return max(10, min(27, (old_size + new_size).bit_length()))


#: Bytes compared to find where an edit's edges are (``_edges``).
PROBE = 64


def _common_run(a: memoryview, b: memoryview, from_end: bool) -> int:
    """How many first (or last) bytes ``a`` and ``b`` share: slices compared whole,
    halved around the first difference (no copies)."""
    n, at, step = min(len(a), len(b)), 0, 1 << 16
    while at < n:
        k = min(step, n - at)
        if from_end:
            same = a[len(a) - at - k : len(a) - at] == b[len(b) - at - k : len(b) - at]
        else:
            same = a[at : at + k] == b[at : at + k]
        if same:
            at += k
        elif k == 1:
            break
        else:
            step = max(1, k // 2)
    return at


def _edges(old: bytes, new: bytes) -> tuple[int, int]:
    """How many first and last bytes of ``new`` stand in ``old`` as they are (each found
    by its first or last ``PROBE`` bytes; 0 when not found)."""
    if len(new) < PROBE:
        return 0, 0
    head = tail = 0
    at = old.find(new[:PROBE])
    if at >= 0:
        head = _common_run(memoryview(new), memoryview(old)[at:], from_end=False)
    end = old.rfind(new[-PROBE:])
    if end >= 0:
        tail = _common_run(memoryview(new), memoryview(old)[: end + PROBE], from_end=True)
    return head, min(tail, len(new) - head)


def make_delta(old: bytes, new: bytes) -> bytes:
    """The new version as a zstd frame against ``old`` (deterministic for one zstd build).

    zstd keeps a block raw when compressing it saves less than 1/64 of it (1/128 at
    level 19), so a 128 KiB block that straddles an edit's edge paid its unchanged bytes
    whole (about 1.3 KB an edge on the bench's binaries): blocks end at the edges of
    what changed between the start and the end (``_edges``). A standard frame all the
    same: ``apply_delta`` reads it as any other."""
    if len(old) > MAX_FILE or len(new) > MAX_FILE:
        raise TooLargeError(f"a delta is made for files up to {MAX_FILE} bytes")
    if len(old) + len(new) <= SMALL:
        params = zstandard.ZstdCompressionParameters.from_level(
            19, source_size=len(new), dict_size=len(old)
        )
    else:
        table = max(17, min(23, len(old).bit_length()))
        params = zstandard.ZstdCompressionParameters.from_level(
            5,
            source_size=len(new),
            dict_size=len(old),
            window_log=_window_log(len(old), len(new)),
            hash_log=table,
            chain_log=table,
        )
    head, tail = _edges(old, new)
    c = zstandard.ZstdCompressor(dict_data=_dict(old), compression_params=params)
    # The size is pledged: the frame header states it, as apply_delta requires.
    z = c.compressobj(size=len(new))
    out = []
    for start, stop in ((0, head), (head, len(new) - tail), (len(new) - tail, len(new))):
        if stop > start:
            out += [z.compress(new[start:stop]), z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)]
    out.append(z.flush())
    return b"".join(out)


def apply_delta(old: bytes, delta: bytes, size: int) -> bytes:
    """The new version from ``old`` and a delta, which must give exactly ``size`` bytes.

    The delta may be hostile: a frame that is not zstd, that needs another dictionary,
    declares or yields another size, or a window above what ``make_delta`` uses is an
    ``IntegrityError``; never more than ``size + 1`` bytes are decoded."""
    if size > MAX_FILE:
        raise TooLargeError(f"a delta is applied for files up to {MAX_FILE} bytes")
    declared = frame_content_size(delta, "the delta")
    if declared != size:
        raise IntegrityError(f"the delta declares {declared} bytes, the new version has {size}")
    dctx = zstandard.ZstdDecompressor(
        dict_data=_dict(old), max_window_size=1 << _window_log(len(old), size)
    )
    try:
        with dctx.stream_reader(io.BytesIO(delta), read_across_frames=False) as r:
            out = bytearray()
            while len(out) <= size and (piece := r.read(size + 1 - len(out))):
                out += piece
    except zstandard.ZstdError as e:
        raise IntegrityError(f"the delta does not decode against the old version: {e}") from e
    if len(out) != size:
        raise IntegrityError(f"the delta gives {len(out)} bytes, the new version has {size}")
    return bytes(out)
