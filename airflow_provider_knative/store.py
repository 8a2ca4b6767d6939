"""Object storage for spilled values: one interface, chosen by URL (``s3://`` or ``file://``).

Objects are written from a stream of chunks (so an encoded array is never joined into one
big bytes object) and read back into one preallocated ``bytearray`` (so the decoded array
is a writable zero-copy view and the payload is held exactly once). Keys are confined under
the store's root: a reference that points elsewhere is refused, whoever wrote it.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow_provider_knative import config
from airflow_provider_knative.codec import HashingCounter

Chunks = Iterable[bytes | memoryview]


class StoreError(RuntimeError):
    """An object could not be written, read or deleted; the message names the URL."""


class ObjectMissingError(StoreError):
    """The object a reference points to is gone."""


@dataclass(frozen=True)
class StoredObject:
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ListedObject:
    url: str
    size: int
    modified: float  # POSIX timestamp


def safe_key(key: str) -> str:
    """Normalise a relative key; refuse anything that could leave the store's root."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StoreError(f"invalid object key {key!r}: keys are relative paths with '/' separators")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid object key {key!r}: empty, '.' and '..' segments are not allowed")
    return key


def safe_segment(text: str) -> str:
    """Make one key segment out of an Airflow id (run ids hold ':' and '+')."""
    cleaned = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in str(text))
    return cleaned.strip(".") or "_"


class ObjectStore:
    """Base class: the operations the XCom backend, the runtime and cleanup need."""

    root_url: str

    def put(self, key: str, chunks: Chunks) -> StoredObject:
        """Write an object from chunks; it appears whole or not at all."""
        raise NotImplementedError

    def get(self, url: str) -> bytearray:
        """Read a whole object into one bytearray."""
        raise NotImplementedError

    def delete(self, url: str) -> None:
        """Delete an object; deleting one that is already gone is not an error."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[ListedObject]:
        """Every object under the root (optionally under ``prefix`` below it)."""
        raise NotImplementedError

    def key_of(self, url: str) -> str:
        """The key of ``url`` below this store's root; refuses URLs outside it."""
        root = self.root_url.rstrip("/") + "/"
        if not url.startswith(root):
            raise StoreError(
                f"{url} is outside the configured store {self.root_url}; refusing to touch it "
                f"(set [knative] xcom_store_url to the store that holds it)"
            )
        return safe_key(url[len(root) :])

    def url_of(self, key: str) -> str:
        return self.root_url.rstrip("/") + "/" + safe_key(key)

    def new_key(self, *segments: str, suffix: str = ".knc") -> str:
        """A fresh, unique key under ``segments`` (each made safe)."""
        parts = [safe_segment(s) for s in segments]
        return "/".join([*parts, uuid.uuid4().hex + suffix])


# --------------------------------------------------------------------------------------
# file://
# --------------------------------------------------------------------------------------


class FileStore(ObjectStore):
    """A folder. Writes go to a temp file in the same folder, then an atomic rename."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"file store URL {url} names a host; use file:///absolute/path")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise StoreError(f"file store URL {url} must hold an absolute path (file:///...)")
        self.root = path
        self.root_url = path.as_uri()

    def _path(self, url: str) -> Path:
        return self.root.joinpath(*self.key_of(url).split("/"))

    def put(self, key: str, chunks: Chunks) -> StoredObject:
        url = self.url_of(key)
        target = self._path(url)
        counter = HashingCounter()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
        except OSError as exc:
            raise StoreError(f"cannot write {url}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:
                for chunk in counter.feed(chunks):
                    view = memoryview(chunk)
                    while view.nbytes:
                        written = fh.write(view)
                        view = view[written:]
            os.replace(tmp, target)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write {url}: {exc.strerror or exc}") from exc
            raise
        return StoredObject(url=url, size=counter.size, sha256=counter.sha256)

    def get(self, url: str) -> bytearray:
        path = self._path(url)
        try:
            with open(path, "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                data = bytearray(size)
                view = memoryview(data)
                filled = 0
                while filled < size:
                    n = fh.readinto(view[filled:])
                    if not n:
                        raise StoreError(f"{url} shrank while being read ({filled} of {size} bytes)")
                    filled += n
                return data
        except FileNotFoundError:
            raise ObjectMissingError(f"{url} does not exist (deleted behind Airflow's back?)") from None
        except OSError as exc:
            raise StoreError(f"cannot read {url}: {exc.strerror or exc}") from exc

    def delete(self, url: str) -> None:
        try:
            self._path(url).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {url}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> Iterator[ListedObject]:
        base = self.root.joinpath(*safe_key(prefix).split("/")) if prefix else self.root
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                path = Path(dirpath, name)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                yield ListedObject(url=path.as_uri(), size=st.st_size, modified=st.st_mtime)


# --------------------------------------------------------------------------------------
# s3://
# --------------------------------------------------------------------------------------


class _ChunkReader:
    """A read-only file over an iterator of chunks, for boto3's multipart upload."""

    def __init__(self, chunks: Iterable[bytes | memoryview]) -> None:
        self._chunks = iter(chunks)
        self._current = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if not self._current.nbytes:
                try:
                    self._current = memoryview(next(self._chunks)).cast("B")
                except StopIteration:
                    break
                continue
            take = self._current.nbytes if size < 0 else min(size - len(out), self._current.nbytes)
            out += self._current[:take]
            self._current = self._current[take:]
        return bytes(out)

    def readable(self) -> bool:
        return True


class S3Store(ObjectStore):
    """A bucket and prefix, through boto3 (any S3-compatible server with an endpoint URL)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        concurrency: int | None = None,
        chunk_bytes: int | None = None,
        client: Any = None,
    ) -> None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise StoreError(f"S3 store URL {url} names no bucket; use s3://bucket/prefix")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.root_url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = (
            endpoint_url if endpoint_url is not None else config.get("s3_endpoint_url") or None
        )
        self.region_name = region_name if region_name is not None else config.get("s3_region_name") or None
        self.concurrency = max(1, concurrency or config.get("transfer_concurrency"))
        self.chunk_bytes = max(5 * 1024 * 1024, chunk_bytes or config.get("transfer_chunk_bytes"))
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region_name,
                    config=Config(
                        max_pool_connections=max(10, self.concurrency * 2),
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10,
                        read_timeout=120,
                    ),
                )
            return self._client

    def _key(self, url: str) -> str:
        key = self.key_of(url)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, action: str, url: str, exc: Exception) -> StoreError:
        from botocore.exceptions import ClientError, EndpointConnectionError

        where = f" (endpoint {self.endpoint_url})" if self.endpoint_url else ""
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectMissingError(f"{url} does not exist (deleted behind Airflow's back?)")
            if code == "NoSuchBucket":
                return StoreError(
                    f"cannot {action} {url}: bucket {self.bucket!r} does not exist{where}; create it "
                    "or fix [knative] xcom_store_url"
                )
            return StoreError(f"cannot {action} {url}: {code or 'error'}: {exc}{where}")
        if isinstance(exc, EndpointConnectionError):
            return StoreError(
                f"cannot {action} {url}: S3 endpoint unreachable{where}: {exc}; check "
                "[knative] s3_endpoint_url and the network"
            )
        return StoreError(f"cannot {action} {url}: {type(exc).__name__}: {exc}{where}")

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.chunk_bytes,
            multipart_chunksize=self.chunk_bytes,
            max_concurrency=self.concurrency,
            use_threads=self.concurrency > 1,
        )

    def put(self, key: str, chunks: Chunks) -> StoredObject:
        url = self.url_of(key)
        counter = HashingCounter()
        try:
            self.client.upload_fileobj(
                _ChunkReader(counter.feed(chunks)),
                self.bucket,
                self._key(url),
                Config=self._transfer_config(),
            )
        except StoreError:
            raise
        except Exception as exc:
            if isinstance(exc, (TypeError, KeyboardInterrupt)):
                raise
            raise self._error("write", url, exc) from exc
        return StoredObject(url=url, size=counter.size, sha256=counter.sha256)

    def get(self, url: str) -> bytearray:
        key = self._key(url)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            size = int(head["ContentLength"])
            data = bytearray(size)
            view = memoryview(data)
            ranges = [
                (start, min(start + self.chunk_bytes, size)) for start in range(0, size, self.chunk_bytes)
            ]

            def fetch(span: tuple[int, int]) -> None:
                start, end = span
                resp = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
                body = resp["Body"]
                pos = start
                try:
                    while pos < end:
                        piece = body.read(min(1024 * 1024, end - pos))
                        if not piece:
                            raise StoreError(f"{url} ended early at byte {pos} of {size}")
                        view[pos : pos + len(piece)] = piece
                        pos += len(piece)
                finally:
                    body.close()

            if len(ranges) <= 1:
                for span in ranges:
                    fetch(span)
            else:
                with ThreadPoolExecutor(max_workers=min(self.concurrency, len(ranges))) as pool:
                    list(pool.map(fetch, ranges))
            return data
        except StoreError:
            raise
        except Exception as exc:
            raise self._error("read", url, exc) from exc

    def delete(self, url: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(url))
        except Exception as exc:
            err = self._error("delete", url, exc)
            if not isinstance(err, ObjectMissingError):
                raise err from exc

    def list(self, prefix: str = "") -> Iterator[ListedObject]:
        base = self.prefix
        if prefix:
            base = posixpath.join(base, safe_key(prefix)) if base else safe_key(prefix)
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{base}/" if base else ""):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    rel = key[len(self.prefix) + 1 :] if self.prefix else key
                    yield ListedObject(
                        url=f"{self.root_url}/{rel}",
                        size=int(item["Size"]),
                        modified=item["LastModified"].timestamp(),
                    )
        except Exception as exc:
            raise self._error("list", f"{self.root_url}/{prefix}", exc) from exc


# --------------------------------------------------------------------------------------
# Choosing a store
# --------------------------------------------------------------------------------------

_cache: dict[tuple[str, str | None], ObjectStore] = {}
_cache_lock = threading.Lock()


def open_store(url: str | None = None) -> ObjectStore:
    """The store at ``url`` (default: ``[knative] xcom_store_url``), one instance per process."""
    url = url or config.get("xcom_store_url")
    endpoint = config.get("s3_endpoint_url") or None
    with _cache_lock:
        store = _cache.get((url, endpoint))
        if store is None:
            store = _build(url)
            _cache[(url, endpoint)] = store
        return store


def _build(url: str) -> ObjectStore:
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return FileStore(url)
    if scheme == "s3":
        return S3Store(url)
    raise config.ConfigError(
        f"[knative] xcom_store_url (env AIRFLOW__KNATIVE__XCOM_STORE_URL) must start with s3:// or "
        f"file://, got {url!r}"
    )
