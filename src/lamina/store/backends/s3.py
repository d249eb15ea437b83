"""A store on any S3-compatible object service (AWS S3, SeaweedFS, MinIO, Ceph RGW, ...).

An object's key is ``<prefix>/<name>``. A single PUT is atomic on S3, so ``write``
needs no temp objects. The service checks each upload against a Content-MD5
header: every S3-compatible service honours it, while botocore's newer default
(CRC checksums in a chunked trailer) is refused by some, so that is turned off.

One botocore client is made in ``__init__`` and shared: clients are thread-safe,
sessions are not, so no session outlives the constructor.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lamina.errors import BackendError, IntegrityError, NotFoundError, UsageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_DEFAULT_REGION = "us-east-1"
_MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})
_MISSING_BUCKET = "NoSuchBucket"
_BUCKET_IS_OURS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


def _error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3Backend:
    """Objects are keys below ``prefix`` in ``bucket``; the bucket is made on first write.

    Credentials not given here come from boto3's usual chain (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, the shared credentials file, an instance role).
    A custom ``endpoint_url`` gets path-style addressing, which S3-compatible
    services need; AWS itself keeps virtual-host addressing.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        list_page_size: int = 1000,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        max_attempts: int = 5,
    ) -> None:
        if not bucket:
            raise UsageError("an S3 store URL needs a bucket: s3://BUCKET/PREFIX")
        if (access_key is None) != (secret_key is None):
            raise UsageError("give both an S3 access key and a secret key, or neither")
        if not 1 <= list_page_size <= 1000:
            raise UsageError(f"list_page_size must be 1..1000, not {list_page_size}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        self._page_size = list_page_size
        query = {k: v for k, v in (("endpoint", endpoint_url), ("region", region)) if v}
        self.url = f"s3://{bucket}/{self.prefix}" + (f"?{urlencode(query)}" if query else "")

        try:
            session = boto3.session.Session(
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name=region,
            )
        except BotoCoreError as e:  # e.g. AWS_PROFILE names a missing profile
            raise BackendError(f"cannot open {self.url}: {e}") from e
        self.region = region or session.region_name or _DEFAULT_REGION
        config = Config(
            region_name=self.region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            max_pool_connections=32,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="lamina",
        )
        try:
            self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        except ValueError as e:
            raise UsageError(f"cannot open {self.url}: {e}") from e  # a malformed endpoint
        except BotoCoreError as e:
            raise BackendError(f"cannot open {self.url}: {e}") from e
        self._bucket_lock = threading.Lock()
        self._bucket_ready = False

    # -- names and errors ---------------------------------------------------

    def _key(self, name: str) -> str:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts) or "\0" in name:
            raise UsageError(f"invalid object name {name!r}")
        return self._key_prefix + name

    def _failure(self, action: str, name: str, e: ClientError | BotoCoreError) -> BackendError:
        where = f"{name} in {self.url}" if name else self.url
        if isinstance(e, ClientError):
            error = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            detail = f"{error.get('Code', 'error')} (HTTP {status}): {error.get('Message', '')}"
            return BackendError(f"cannot {action} {where}: {detail.rstrip(': ')}")
        return BackendError(f"cannot {action} {where}: {e}")

    def _not_found(self, name: str, e: ClientError) -> NotFoundError | None:
        code = _error_code(e)
        if code in _MISSING_OBJECT:
            return NotFoundError(f"object {name} not found in {self.url}")
        if code == _MISSING_BUCKET:
            return NotFoundError(f"object {name} not found: bucket {self.bucket} does not exist")
        return None

    # -- the bucket ---------------------------------------------------------

    def _create_bucket(self) -> None:
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                if self.region == _DEFAULT_REGION:
                    self._client.create_bucket(Bucket=self.bucket)
                else:
                    # The stubs list AWS's regions; S3-compatible services name their own.
                    location = {"LocationConstraint": self.region}
                    self._client.create_bucket(
                        Bucket=self.bucket,
                        CreateBucketConfiguration=location,  # type: ignore[arg-type]
                    )
            except ClientError as e:
                # Another writer made it first ("owned"), or it exists under an
                # account we cannot see ("exists"): the retried PUT tells which.
                if _error_code(e) not in _BUCKET_IS_OURS:
                    raise self._failure("create bucket", "", e) from e
            except BotoCoreError as e:
                raise self._failure("create bucket", "", e) from e
            self._bucket_ready = True

    # -- the contract -------------------------------------------------------

    def write(self, name: str, data: bytes) -> None:
        key = self._key(name)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        for attempt in (1, 2):
            try:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5)
                self._bucket_ready = True
                return
            except ClientError as e:
                if attempt == 1 and _error_code(e) == _MISSING_BUCKET:
                    self._bucket_ready = False
                    self._create_bucket()
                    continue
                raise self._failure("write", name, e) from e
            except BotoCoreError as e:
                raise self._failure("write", name, e) from e

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        if length is not None and (length < 0 or offset < 0):
            raise UsageError(f"cannot read {length} bytes at {offset} of {name}")
        if length == 0:
            if self.size(name) < offset:
                raise IntegrityError(f"object {name} is shorter than {offset} bytes")
            return b""
        if offset < 0:
            byte_range = f"bytes={offset}"
        elif length is not None:
            byte_range = f"bytes={offset}-{offset + length - 1}"
        elif offset > 0:
            byte_range = f"bytes={offset}-"
        else:
            byte_range = ""
        try:
            if byte_range:
                response = self._client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            else:
                response = self._client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                data = body.read()
        except ClientError as e:
            if missing := self._not_found(name, e):
                raise missing from e
            if _error_code(e) != "InvalidRange":
                raise self._failure("read", name, e) from e
            # The range starts past the end. Reading "the rest" from there is
            # empty, as a file read would be; anything else is a short object.
            if length is None and offset >= 0:
                return b""
            data = b""
        except BotoCoreError as e:
            raise self._failure("read", name, e) from e
        if offset < 0 and len(data) != -offset:
            raise IntegrityError(f"object {name} is shorter than {-offset} bytes")
        if length is not None and len(data) != length:
            raise IntegrityError(
                f"object {name} is truncated: wanted {length} bytes at {offset}, got {len(data)}"
            )
        return data

    def size(self, name: str) -> int:
        key = self._key(name)
        try:
            return self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as e:
            if missing := self._not_found(name, e):
                raise missing from e
            raise self._failure("stat", name, e) from e
        except BotoCoreError as e:
            raise self._failure("stat", name, e) from e

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except NotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self._key_prefix + prefix,
            PaginationConfig={"PageSize": self._page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    key = item.get("Key", "")
                    if key.endswith("/") or not key.startswith(self._key_prefix):
                        continue  # a folder marker some services keep, never an object of ours
                    yield key[len(self._key_prefix) :], item.get("Size", 0)
        except ClientError as e:
            if _error_code(e) == _MISSING_BUCKET:
                return
            raise self._failure("list", prefix or "objects", e) from e
        except BotoCoreError as e:
            raise self._failure("list", prefix or "objects", e) from e

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if self._not_found(name, e):
                return
            raise self._failure("delete", name, e) from e
        except BotoCoreError as e:
            raise self._failure("delete", name, e) from e

    def remove_stale_temps(self, before: float) -> int:
        return 0  # (a PUT lands whole or not at all)

    def close(self) -> None:
        self._client.close()
