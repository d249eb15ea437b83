"""The one error hierarchy of Lamina.

Every error carries a message, an exit code for the command line and an HTTP
status for the API, so the CLI and the API report the same failure the same
way. A stable ``code`` string names the error in JSON responses.

::

    LaminaError                      exit 1   HTTP 500  a bug or an unexpected state
    ├── UsageError                   exit 2   HTTP 400  the request or the arguments are wrong
    │   └── UnsafePathError          exit 2   HTTP 400  a path would escape its target (.., /, NUL)
    ├── NotFoundError                exit 3   HTTP 404  a named thing does not exist
    ├── ConflictError                exit 4   HTTP 409  the thing exists already / state forbids it
    │   ├── StoreBusyError           exit 4   HTTP 409  another process holds the store's lock
    │   └── UploadsPendingError      exit 4   HTTP 409  a commit waits for blobs other endpoints upload
    ├── IntegrityError               exit 5   HTTP 422  data is damaged: wrong hash, truncated, bad layout
    │   └── MissingDataError         exit 5   HTTP 422  something references data that is not stored
    ├── StoreKeyError                exit 6   HTTP 403  wrong key, wrong passphrase, sealed key file
    ├── AuthError                    exit 7   HTTP 401  not logged in / bad credentials
    │   ├── ForbiddenError           exit 7   HTTP 403  logged in, but not allowed
    │   └── RateLimitedError         exit 7   HTTP 429  too many failed attempts; wait
    ├── BackendError                 exit 8   HTTP 503  the object store or database failed
    └── TooLargeError                exit 9   HTTP 413  a size is above what Lamina accepts

A command that finished but skipped or could not restore some files is not an
error: it exits ``WARNINGS_EXIT`` (10), as restic exits 3 and borg 100 for the
same case (Lamina's 3 is "not found").

An error that means "a bug" is a plain ``LaminaError``; it never subclasses
``NotFoundError``, so a caller that treats "not found" gently cannot swallow it.
"""

from __future__ import annotations

from typing import Any

#: The exit code of a command that finished with warnings: files skipped or not restored.
WARNINGS_EXIT = 10


class LaminaError(Exception):
    """Root of every error Lamina raises on purpose.

    A subclass states what differs from its parent in its class line:
    ``class NotFoundError(LaminaError, code="not_found", exit_code=3, http_status=404)``.
    """

    code = "internal"
    exit_code = 1
    http_status = 500

    def __init_subclass__(
        cls,
        *,
        code: str | None = None,
        exit_code: int | None = None,
        http_status: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if exit_code is not None:
            cls.exit_code = exit_code
        if http_status is not None:
            cls.http_status = http_status

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class UsageError(LaminaError, code="bad_request", exit_code=2, http_status=400):
    """The request or the arguments are wrong."""


class UnsafePathError(UsageError, code="unsafe_path"):
    """A path would escape its target (``..``, ``/``, NUL)."""


class NotFoundError(LaminaError, code="not_found", exit_code=3, http_status=404):
    """A named thing does not exist."""


class ConflictError(LaminaError, code="conflict", exit_code=4, http_status=409):
    """The thing exists already, or its state forbids the change."""


class StoreBusyError(ConflictError, code="store_busy"):
    """Another process holds the store's lock."""


class UploadsPendingError(ConflictError, code="uploads_pending"):
    """A commit names blobs other endpoints are still uploading (in flight): ask again soon."""

    #: the ids still in flight, for the server's own use (never in the answer)
    promised: tuple[bytes, ...] = ()


class IntegrityError(LaminaError, code="integrity", exit_code=5, http_status=422):
    """Data is damaged: wrong hash, truncated, bad layout."""


class MissingDataError(IntegrityError, code="missing_data"):
    """Something references data that is not stored."""


class StoreKeyError(LaminaError, code="bad_key", exit_code=6, http_status=403):
    """Wrong key, wrong passphrase, or a sealed key file without its passphrase."""


class AuthError(LaminaError, code="unauthorized", exit_code=7, http_status=401):
    """Not logged in, or bad credentials."""


class ForbiddenError(AuthError, code="forbidden", http_status=403):
    """Logged in, but not allowed."""


class RateLimitedError(AuthError, code="rate_limited", http_status=429):
    """Too many failed attempts: wait."""


class BackendError(LaminaError, code="backend", exit_code=8, http_status=503):
    """The object store or the database failed."""


class TooLargeError(LaminaError, code="too_large", exit_code=9, http_status=413):
    """A size is above what Lamina accepts."""


_BY_STATUS: dict[int, type[LaminaError]] = {
    400: UsageError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
    422: IntegrityError,
    429: RateLimitedError,
    503: BackendError,
}


#: Errors a client tells apart from others of the same status by their ``code``.
_BY_CODE: dict[str, type[LaminaError]] = {
    cls.code: cls for cls in (MissingDataError, UploadsPendingError, StoreBusyError)
}


def from_status(status: int, message: str, code: str | None = None) -> LaminaError:
    """The error an HTTP client raises for an API error response (its ``code`` when known)."""
    by_code = _BY_CODE.get(code or "")
    if by_code is not None and by_code.http_status == status:
        return by_code(message)
    return _BY_STATUS.get(status, LaminaError)(message)
