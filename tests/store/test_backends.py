"""The ``Backend`` contract, run against every backend: local, memory, and S3 (real SeaweedFS)."""

from __future__ import annotations

import os
import socket
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lamina.errors import BackendError, IntegrityError, NotFoundError, UsageError
from lamina.store.backends import Backend, open_backend
from lamina.store.backends.s3 import S3Backend

if TYPE_CHECKING:
    from tests.conftest import S3Server

DATA = bytes(range(256)) * 40 + b"tail-of-the-object"  # 10 258 bytes, every byte value


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        url = str(tmp_path / "store")
    elif request.param == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    else:
        url = request.getfixturevalue("s3_url")
    b = open_backend(url)
    yield b
    b.close()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Backend]:
    b = open_backend(str(tmp_path / "store"))
    yield b
    b.close()


def make_s3(server: S3Server, bucket: str, **options: Any) -> S3Backend:
    return S3Backend(
        bucket,
        "store",
        endpoint_url=server.endpoint,
        region=server.region,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **options,
    )


# -- the contract, for every backend ---------------------------------------------


def test_round_trip(backend: Backend) -> None:
    backend.write("packs/ab/ab01", DATA)
    backend.write("empty", b"")

    assert backend.read("packs/ab/ab01") == DATA
    assert backend.size("packs/ab/ab01") == len(DATA)
    assert backend.exists("packs/ab/ab01")
    assert backend.read("empty") == b""
    assert backend.size("empty") == 0


def test_ranged_reads(backend: Backend) -> None:
    backend.write("obj", DATA)

    assert backend.read("obj", 0, 10) == DATA[:10]
    assert backend.read("obj", 1000, 333) == DATA[1000:1333]
    assert backend.read("obj", 5000) == DATA[5000:]
    assert backend.read("obj", len(DATA) - 1, 1) == DATA[-1:]
    assert backend.read("obj", 0, len(DATA)) == DATA
    assert backend.read("obj", 7, 0) == b""
    assert backend.read("obj", len(DATA)) == b""


def test_negative_offset_reads_the_tail(backend: Backend) -> None:
    backend.write("obj", DATA)

    assert backend.read("obj", -18) == b"tail-of-the-object"
    assert backend.read("obj", -1) == DATA[-1:]
    assert backend.read("obj", -len(DATA)) == DATA


@pytest.mark.parametrize(
    ("offset", "length"),
    [(len(DATA) - 5, 10), (len(DATA), 1), (len(DATA) + 100, 5), (-len(DATA) - 1, None)],
    ids=["past-end", "at-end", "beyond-end", "tail-longer-than-object"],
)
def test_short_read_is_an_integrity_error(
    backend: Backend, offset: int, length: int | None
) -> None:
    backend.write("obj", DATA)

    with pytest.raises(IntegrityError):
        backend.read("obj", offset, length)


def test_tail_of_an_empty_object_is_an_integrity_error(backend: Backend) -> None:
    backend.write("empty", b"")

    with pytest.raises(IntegrityError):
        backend.read("empty", -1)


def test_missing_object(backend: Backend) -> None:
    backend.write("other", b"x")

    for read in (
        lambda: backend.read("nope"),
        lambda: backend.read("nope", 3, 4),
        lambda: backend.read("nope", -4),
        lambda: backend.size("nope"),
    ):
        with pytest.raises(NotFoundError):
            read()
    assert not backend.exists("nope")


def test_an_empty_store_lists_nothing_and_reads_nothing(backend: Backend) -> None:
    # For S3 the bucket does not exist yet: it is made on the first write.
    assert list(backend.list()) == []
    assert not backend.exists("packs/x")
    with pytest.raises(NotFoundError):
        backend.read("packs/x")
    backend.delete("packs/x")


def test_list_with_prefix(backend: Backend) -> None:
    objects = {"a/1": b"1", "a/2": b"22", "ab": b"333", "b/1": b"4444", "b/c/d": b"55555"}
    for name, data in objects.items():
        backend.write(name, data)

    assert dict(backend.list()) == {n: len(d) for n, d in objects.items()}
    assert dict(backend.list("a/")) == {"a/1": 1, "a/2": 2}
    assert dict(backend.list("a")) == {"a/1": 1, "a/2": 2, "ab": 3}
    assert dict(backend.list("b/c/")) == {"b/c/d": 5}
    assert list(backend.list("zzz")) == []


def test_delete_is_idempotent(backend: Backend) -> None:
    backend.write("packs/1", DATA)
    backend.write("packs/2", DATA)

    backend.delete("packs/1")
    backend.delete("packs/1")
    backend.delete("never-written")

    assert not backend.exists("packs/1")
    with pytest.raises(NotFoundError):
        backend.read("packs/1")
    assert dict(backend.list()) == {"packs/2": len(DATA)}


def test_writing_the_same_bytes_again_is_harmless(backend: Backend) -> None:
    backend.write("packs/1", DATA)
    backend.write("packs/1", DATA)

    assert backend.read("packs/1") == DATA
    assert dict(backend.list()) == {"packs/1": len(DATA)}


def test_threads_share_one_backend(backend: Backend) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(8):
                name = f"t{worker}/{i}"
                data = f"{worker}:{i}:".encode() * 50
                backend.write(name, data)
                assert backend.read(name) == data
                assert backend.read(name, 2, 3) == data[2:5]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(list(backend.list())) == 6 * 8


# -- names that could escape the store -----------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "a/./b", "/abs", "a//b", "", "a\0b"])
def test_local_rejects_unsafe_names(local: Backend, name: str) -> None:
    with pytest.raises(UsageError):
        local.write(name, b"x")
    with pytest.raises(UsageError):
        local.read(name)


@pytest.mark.parametrize("name", ["../x", "a/../x", "", "a//b"])
def test_s3_rejects_the_names_local_rejects(s3_server: S3Server, s3_bucket: str, name: str) -> None:
    b = make_s3(s3_server, s3_bucket)
    with pytest.raises(UsageError):
        b.write(name, b"x")
    b.close()


# -- local: atomic writes -------------------------------------------------------------


def test_local_write_leaves_no_temp_files_and_mode_0600(tmp_path: Path) -> None:
    b = open_backend(str(tmp_path / "store"))
    b.write("packs/ab/ab01", DATA)
    b.write("packs/ab/ab01", DATA)
    b.write("top", b"x")

    files = sorted(str(p.relative_to(tmp_path / "store")) for p in (tmp_path / "store").rglob("*"))
    assert files == ["packs", "packs/ab", "packs/ab/ab01", "top"]
    for name in ("packs/ab/ab01", "top"):
        mode = os.stat(tmp_path / "store" / name).st_mode
        assert stat.S_IMODE(mode) == 0o600
    b.close()


# -- S3 specifics -----------------------------------------------------------------------


def test_s3_lists_across_pages(s3_server: S3Server, s3_bucket: str) -> None:
    b = make_s3(s3_server, s3_bucket, list_page_size=3)
    requests = []
    b._client.meta.events.register(
        "after-call.s3.ListObjectsV2", lambda **kw: requests.append(kw["parsed"])
    )
    names = {f"packs/{i:02x}": i for i in range(11)}
    for name, size in names.items():
        b.write(name, b"x" * size)
    b.write("other/1", b"x")

    assert dict(b.list("packs/")) == names
    assert len(requests) == 4  # 3 + 3 + 3 + 2
    b.close()


def test_s3_keys_live_below_the_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    b = open_backend(s3_server.url(s3_bucket, prefix="deep/store"))
    b.write("packs/1", b"abc")

    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["deep/store/packs/1"]
    assert dict(b.list()) == {"packs/1": 3}
    client.close()
    b.close()


def test_s3_url_names_the_store_without_secrets(s3_url: str) -> None:
    b = open_backend(s3_url)
    assert isinstance(b, S3Backend)
    assert b.url.startswith(f"s3://{b.bucket}/store?endpoint=http")
    assert "secret" not in b.url
    b.close()


def test_s3_rejects_a_negative_offset_with_a_length(s3_server: S3Server, s3_bucket: str) -> None:
    b = make_s3(s3_server, s3_bucket)
    b.write("obj", DATA)
    with pytest.raises(UsageError):
        b.read("obj", -10, 5)
    b.close()


def test_s3_bad_credentials_are_a_backend_error(s3_server: S3Server, s3_bucket: str) -> None:
    b = S3Backend(
        s3_bucket,
        "store",
        endpoint_url=s3_server.endpoint,
        region="us-east-1",
        access_key=s3_server.access_key,
        secret_key="wrong",
        max_attempts=1,
    )
    with pytest.raises(BackendError) as caught:
        b.write("obj", b"x")
    assert "\n" not in caught.value.message
    assert "SignatureDoesNotMatch" in caught.value.message
    b.close()


def test_s3_unreachable_service_is_a_backend_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        b = S3Backend(
            "bucket",
            "store",
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key="a",
            secret_key="b",
            max_attempts=1,
            connect_timeout=1,
        )
        for call in (lambda: b.write("obj", b"x"), lambda: b.read("obj"), lambda: list(b.list())):
            with pytest.raises(BackendError) as caught:
                call()
            assert "\n" not in caught.value.message
        b.close()


def test_s3_creates_its_bucket_once_under_concurrent_first_writes(
    s3_server: S3Server, s3_bucket: str
) -> None:
    backends = [make_s3(s3_server, s3_bucket) for _ in range(4)]
    errors: list[BaseException] = []

    def first_write(i: int) -> None:
        try:
            backends[i].write(f"obj{i}", b"x" * i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=first_write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert dict(backends[0].list()) == {f"obj{i}": i for i in range(4)}
    for b in backends:
        b.close()


def test_s3_bucket_in_another_region(s3_server: S3Server, s3_bucket: str) -> None:
    b = S3Backend(
        s3_bucket,
        "store",
        endpoint_url=s3_server.endpoint,
        region="eu-west-1",
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    b.write("obj", b"abc")
    assert b.read("obj", -2) == b"bc"
    b.close()


def test_a_folder_another_writer_made_is_synced_before_a_pack_in_it_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers: one made ``packs/ab`` and has not synced ``packs/`` yet when the other
    writes a pack into it; the second must sync ``packs/`` itself before its write
    returns, or a power loss could take the folder with an acknowledged pack (the crash
    audit's S2: it skipped the sync when the folder existed)."""
    from lamina.store.backends import local

    synced: list[Path] = []
    monkeypatch.setattr(local, "fsync_dir", lambda d: synced.append(Path(d)))
    (tmp_path / "packs" / "ab").mkdir(parents=True)  # the other writer's, not synced
    local.LocalBackend(tmp_path).write("packs/ab/abcd", b"a pack")
    assert tmp_path / "packs" in synced
