"""Content-defined chunking with FastCDC 2020 (native, via pyfastcdc).

The gear table is XORed with the store's secret seed, so chunk boundaries depend
on the secret and do not fingerprint known content. pyfastcdc's ``avg_size`` is
the size *after* the minimum skip (its real mean is ``min + avg``); we pass
``avg - min`` so the store's declared average is the real one.
"""

from __future__ import annotations

from collections.abc import Iterator

from pyfastcdc import FastCDC

from lamina.store.chunking import ChunkingSecret


class Chunker:
    """Cuts buffers and files into chunks. One instance per thread."""

    def __init__(self, secret: ChunkingSecret) -> None:
        self.secret = secret
        self._cdc = FastCDC(
            avg_size=max(secret.avg_size - secret.min_size, 256),
            min_size=secret.min_size,
            max_size=secret.max_size,
            normalized_chunking=1,
            seed=secret.chunker_seed,
        )

    def cut(self, data: bytes | memoryview) -> Iterator[memoryview]:
        """Yield consecutive views of ``data`` that cover it exactly."""
        if len(data) <= self.secret.min_size:
            if len(data):
                yield memoryview(data)
            return
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data
