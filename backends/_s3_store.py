"""The S3 calls the ``s3://`` backend uses, with botocore errors mapped to :mod:`duro.errors`.

Five operations: GET, PUT (plain, create-only with ``If-None-Match: *``, or compare-and-swap with
``If-Match``), LIST, DELETE (optionally ``If-Match``) and a bucket check. Idempotent calls are
retried here on transient failures (5xx, throttling, timeouts, connection errors) with
exponential backoff; a conditional PUT is attempted **once** and its outcome classified, because
only the caller can decide, by reading the slot back, whether an unknown outcome landed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from duro.backends._s3_faults import FaultInjector, RequestCounts
from duro.errors import BackendError, BackendUnavailable, ConfigError, DuroError

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

__all__ = ["Outcome", "PutResult", "S3Store"]

T = TypeVar("T")

_CREDENTIAL_CODES: Final = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException",
    "AuthorizationHeaderMalformed", "403",
})
_TRANSIENT_CODES: Final = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestTimeTooSkewed", "ConditionalRequestConflict",
    "OperationAborted", "500", "502", "503", "504",
})


class Outcome(Enum):
    """How a conditional PUT ended."""

    OK = "ok"
    PRECONDITION_FAILED = "412"
    """The condition did not hold (``If-None-Match``: the key exists; ``If-Match``: changed)."""
    NOT_FOUND = "404"
    """``If-Match`` on a key that does not exist."""
    UNKNOWN = "unknown"
    """409, 5xx, timeout or a dropped connection: the write may or may not have landed."""


@dataclass(frozen=True, slots=True)
class PutResult:
    """The outcome of one conditional PUT attempt."""

    outcome: Outcome
    etag: str | None = None
    error: BaseException | None = None


def _code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", "") or status), status


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (HTTPClientError, BotoConnectionError)):
        return True
    if isinstance(exc, ClientError):
        code, status = _code(exc)
        return code in _TRANSIENT_CODES or status in (409, 429) or status >= 500
    return False


class S3Store:
    """One bucket (and the client that reaches it), with duro's error mapping and retries."""

    def __init__(self, client: S3Client, bucket: str, endpoint: str, *, retries: int,
                 backoff: float = 0.05, timeout: float | None = None,
                 bulk_client: S3Client | None = None,
                 bulk_timeout: float | None = None) -> None:
        self.client = client
        self.bulk_client = bulk_client or client
        """The client for large bodies (checkpoint parts): its timeout is scaled to their size."""
        self.bucket = bucket
        self.endpoint = endpoint
        self.retries = retries
        self.backoff = backoff
        self.counts = RequestCounts()
        self.faults = FaultInjector()
        client.meta.events.register("before-send.s3", partial(self._before_send, timeout))
        if bulk_client is not None and bulk_client is not client:
            bulk_client.meta.events.register("before-send.s3",
                                             partial(self._before_send, bulk_timeout))

    def _before_send(self, timeout: float | None, request: Any, event_name: str = "",
                     **kwargs: Any) -> Any:
        return self.faults.apply(event_name.rsplit(".", 1)[-1], request, self.counts, timeout)

    # -- error mapping -----------------------------------------------------------------------

    def where(self, key: str | None = None) -> str:
        """A human description of *key*'s location, for error messages."""
        return f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"

    def map_error(self, exc: BaseException, what: str, key: str | None = None) -> DuroError:
        """Translate a botocore error into the duro error a user should see."""
        where = self.where(key)
        if isinstance(exc, DuroError):
            return exc
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return ConfigError(
                f"no usable AWS credentials for {where}: configure boto3's credential chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials or an "
                "instance role); credentials never go in the backend URL", orig=exc)
        if isinstance(exc, NoRegionError):
            return ConfigError(f"no AWS region for {where}: add ?region=... to the URL", orig=exc)
        if isinstance(exc, ClientError):
            code, status = _code(exc)
            if code == "NoSuchBucket":
                return ConfigError(
                    f"S3 bucket {self.bucket!r} does not exist at {self.endpoint} "
                    "(create it first; duro does not create buckets)", orig=exc)
            if code in _CREDENTIAL_CODES or status == 403:
                return ConfigError(
                    f"S3 at {self.endpoint} rejected the credentials for {where} ({code}): check "
                    "boto3's credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE) and the bucket policy", orig=exc)
            if _is_transient(exc):
                return BackendUnavailable(
                    f"S3 {what} on {where} failed ({code}); gave up after {self.retries + 1} "
                    "attempts", orig=exc)
            return BackendError(f"S3 {what} on {where} failed: {code}: {exc}", orig=exc)
        if isinstance(exc, (HTTPClientError, BotoConnectionError)):
            return BackendUnavailable(
                f"cannot reach S3 endpoint {self.endpoint} for {what} on {where}: {exc}", orig=exc)
        if isinstance(exc, BotoCoreError):
            return BackendError(f"S3 {what} on {where} failed: {exc}", orig=exc)
        return BackendError(f"S3 {what} on {where} failed: {type(exc).__name__}: {exc}",
                            orig=exc)

    def sleep_backoff(self, attempt: int) -> None:
        """Sleep before retry number *attempt* (1-based): exponential, with jitter."""
        delay = min(self.backoff * (2 ** (attempt - 1)), 2.0)
        time.sleep(delay * (0.5 + random.random()))

    def _retrying(self, what: str, key: str | None, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except (ClientError, BotoCoreError) as exc:
                if not _is_transient(exc) or attempt >= self.retries:
                    raise self.map_error(exc, what, key) from exc
            attempt += 1
            self.sleep_backoff(attempt)

    # -- operations --------------------------------------------------------------------------

    def get(self, key: str, *, bulk: bool = False) -> tuple[bytes, str] | None:
        """The body and ETag of *key*, or ``None`` if it does not exist (*bulk*: a large body,
        read with the bulk client's longer timeout)."""
        client = self.bulk_client if bulk else self.client

        def call() -> tuple[bytes, str] | None:
            try:
                resp = client.get_object(Bucket=self.bucket, Key=key)
                return resp["Body"].read(), str(resp.get("ETag", ""))
            except ClientError as exc:
                code, status = _code(exc)
                if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                    return None
                raise
        return self._retrying("GET", key, call)

    def put(self, key: str, body: bytes, *, bulk: bool = False) -> str:
        """An unconditional, idempotent PUT; returns the ETag (*bulk*: see :meth:`get`)."""
        client = self.bulk_client if bulk else self.client

        def call() -> str:
            return str(client.put_object(Bucket=self.bucket, Key=key, Body=body)
                       .get("ETag", ""))
        return self._retrying("PUT", key, call)

    def put_conditional(self, key: str, body: bytes, *, if_match: str | None = None,
                        bulk: bool = False) -> PutResult:
        """One PUT attempt, create-only (``If-None-Match: *``) or, with *if_match*, a CAS
        (*bulk*: see :meth:`get`).

        Raises a duro error only for failures that retrying cannot fix (credentials, bucket).
        """
        client = self.bulk_client if bulk else self.client
        try:
            if if_match is None:
                resp = client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                         IfNoneMatch="*")
            else:
                resp = client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                         IfMatch=if_match)
            return PutResult(Outcome.OK, str(resp.get("ETag", "")))
        except ClientError as exc:
            code, status = _code(exc)
            if status == 412 or code == "PreconditionFailed":
                return PutResult(Outcome.PRECONDITION_FAILED, error=exc)
            if if_match is not None and (code in ("NoSuchKey", "404") or status == 404):
                return PutResult(Outcome.NOT_FOUND, error=exc)
            if _is_transient(exc):
                return PutResult(Outcome.UNKNOWN, error=exc)
            raise self.map_error(exc, "PUT", key) from exc
        except (HTTPClientError, BotoConnectionError) as exc:
            return PutResult(Outcome.UNKNOWN, error=exc)
        except BotoCoreError as exc:
            raise self.map_error(exc, "PUT", key) from exc

    def delete(self, key: str, *, if_match: str | None = None) -> bool:
        """Delete *key*; with *if_match*, only if its ETag still matches (returns False if not)."""
        def call() -> bool:
            try:
                if if_match is None:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                else:
                    self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=if_match)
                return True
            except ClientError as exc:
                code, status = _code(exc)
                if status == 412 or code == "PreconditionFailed":
                    return False
                if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                    return True
                raise
        return self._retrying("DELETE", key, call)

    def list_keys(self, prefix: str, *, start_after: str | None = None,
             limit: int | None = None) -> Iterator[str]:
        """Keys under *prefix* in byte order, after *start_after*, at most *limit*."""
        token: str | None = None
        left = limit
        while left is None or left > 0:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token is not None:
                kwargs["ContinuationToken"] = token
            elif start_after is not None:
                kwargs["StartAfter"] = start_after
            if left is not None:
                kwargs["MaxKeys"] = min(left, 1000)
            resp = self._retrying("LIST", prefix, partial(self.client.list_objects_v2, **kwargs))
            for item in resp.get("Contents", []):
                yield item["Key"]
                if left is not None:
                    left -= 1
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    def list_prefixes(self, prefix: str) -> list[str]:
        """The "folders" right under *prefix* (``Delimiter="/"``), without *prefix*."""
        out: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            if token is not None:
                kwargs["ContinuationToken"] = token
            resp = self._retrying("LIST", prefix, partial(self.client.list_objects_v2, **kwargs))
            out.extend(p["Prefix"][len(prefix):].rstrip("/")
                       for p in resp.get("CommonPrefixes", []))
            if not resp.get("IsTruncated"):
                return out
            token = resp.get("NextContinuationToken")

    def close(self) -> None:
        """Close the client's connections."""
        self.faults.close()
        self.client.close()
        if self.bulk_client is not self.client:
            self.bulk_client.close()
