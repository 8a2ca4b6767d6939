"""Object storage for spilled values: one interface, chosen by URL (``s3://`` or ``file://``).

Objects are written from a stream of chunks (so an encoded array is never joined into one
big bytes object) and read back into one writable buffer: preallocated memory, or for a
large ``file://`` object a private mapping of the file (so the decoded array is a writable
zero-copy view and the payload is held exactly once). Every object's digest is computed
while it is written and checked while it is read, piece by piece where the bytes are moved
anyway, never in a second pass (see ``DEFAULT_DIGEST``). Keys are confined under the
store's root: a reference that points elsewhere is refused, whoever wrote it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import mmap
import os
import posixpath
import queue
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow_provider_knative import config
from airflow_provider_knative.errors import (
    ObjectCorruptError,
    ObjectMissingError,
    StoreError,
    TruncatedReadError,
)

__all__ = [
    "SUFFIX",
    "FileStore",
    "ListedObject",
    "ObjectCorruptError",
    "ObjectMissingError",
    "ObjectStore",
    "S3Store",
    "StoreError",
    "StoredObject",
    "forget_stores",
    "open_store",
    "record_folder",
    "record_key",
    "record_of",
    "task_key",
    "task_prefix",
]

Chunks = Iterable[bytes | memoryview]

#: every object the provider writes ends with this suffix: ``xcom-cleanup`` looks for it
SUFFIX = ".knc"


#: The checksum new objects get (``[knative] checksum`` chooses; this is its default).
#: BLAKE3 is cryptographic, like SHA-256: someone who can write to the bucket but not to
#: Airflow's database cannot swap a value for another that still verifies. It runs at
#: ~4.5 GB/s against SHA-256's ~1.1 GB/s here, so hashed in a helper thread while the bytes
#: move it keeps up with the copy, where SHA-256 cost more than the copy itself. xxh3-128
#: (~40 GB/s, inline) detects corruption as surely but is not cryptographic: choose it only
#: where the bucket is as trusted as the database.
DEFAULT_DIGEST = "blake3"

#: the algorithms a reference may name (and ``[knative] checksum`` may choose)
DIGESTS = ("blake3", "xxh3-128", "sha256")

#: fast enough to hash inline, right after the piece was copied and is still in cache;
#: the others run in a helper thread so they overlap with I/O
_INLINE_DIGESTS = frozenset({"xxh3-128"})

#: bytes per read/write/hash step: small enough to still be in L2 cache when hashed right
#: after the copy (a cold piece hashes ~4x slower), large enough that syscalls do not count
_PIECE = 256 * 1024


def _new_hash(algorithm: str) -> Any:
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh3-128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3()
    raise StoreError(
        f"unknown checksum algorithm {algorithm!r} (this version knows {', '.join(DIGESTS)}); the "
        "reference was written by a newer airflow-provider-knative: upgrade it"
    )


def split_digest(digest: str) -> tuple[str, str]:
    """``"xxh3-128:<hex>"`` -> ``("xxh3-128", "<hex>")``.

    A bare hex digest is SHA-256: every reference written before digests named their
    algorithm, and SHA-256 ones are still written bare so older readers can verify them.
    """
    algorithm, sep, hexdigest = digest.rpartition(":")
    return (algorithm, hexdigest) if sep else ("sha256", digest)


def format_digest(algorithm: str, hexdigest: str) -> str:
    return hexdigest if algorithm == "sha256" else f"{algorithm}:{hexdigest}"


class _Hasher:
    """The digest of a byte stream, computed where the bytes move rather than in a second pass.

    xxh3-128 is hashed inline: each piece is hashed while it is in cache from the copy next
    to it, which costs almost nothing. SHA-256 and BLAKE3 are slower than the copy, so once
    the stream gets large they run in a helper thread and overlap with writing, reading and
    encoding instead of adding their whole time (small streams stay inline: a thread would
    cost more).
    """

    def __init__(self, algorithm: str = DEFAULT_DIGEST) -> None:
        self.algorithm = algorithm
        self._hash = _new_hash(algorithm)
        self._inline = algorithm in _INLINE_DIGESTS
        self._queue: queue.Queue[memoryview | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.size = 0

    def update(self, view: memoryview) -> None:
        self.size += view.nbytes
        if self._queue is None:
            if self._inline or self.size <= 2 * 1024 * 1024:
                self._hash.update(view)
                return
            self._queue = queue.Queue(maxsize=64)  # bounds what is held alive to 64 pieces
            self._thread = threading.Thread(target=self._run, name="knative-digest", daemon=True)
            self._thread.start()
        for start in range(0, view.nbytes, _PIECE):
            self._queue.put(view[start : start + _PIECE])

    def _run(self) -> None:
        assert self._queue is not None
        while (piece := self._queue.get()) is not None:
            try:
                self._hash.update(piece)
            except BaseException as exc:  # pragma: no cover - hashing bytes does not fail
                self._error = exc

    def digest(self) -> str:
        """The digest as references hold it (see :func:`format_digest`)."""
        self.close()
        if self._error is not None:
            raise self._error
        return format_digest(self.algorithm, self._hash.hexdigest())

    def close(self) -> None:
        """Stop the helper thread (also on error paths, so it never outlives the call)."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def feed(self, chunks: Chunks) -> Iterator[bytes | memoryview]:
        """Pass ``chunks`` through, hashing each on the way (for streaming uploads).

        A large view (an array's buffer) is handed on piece by piece, each hashed just
        before the uploader copies it into a part, so it is read from memory once rather
        than hashed whole first and read again for the copy. ``bytes`` chunks go on whole,
        so one that fills a part is uploaded without any copy (see ``_ChunkReader``).
        """
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if not view.nbytes:
                continue
            if isinstance(chunk, bytes) or view.nbytes <= _PIECE:
                self.update(view)
                yield chunk
                continue
            for start in range(0, view.nbytes, _PIECE):
                piece = view[start : start + _PIECE]
                self.update(piece)
                yield piece


Buffer = Any  # a writable bytes-like object: bytearray, numpy uint8 array or (anonymous or private) mmap


def _allocate(size: int, *, fresh_pages: bool) -> Buffer:
    """Memory for an object being read.

    ``bytearray(n)`` zero-fills all n bytes before the read overwrites them: a whole extra
    pass over memory (~0.1 s per 256 MB). ``numpy.empty`` does not, and numpy asks the
    kernel for transparent huge pages on large blocks, so the read faults in 2 MiB pages
    instead of 4 KiB ones (~2x faster again). Without numpy, an anonymous mmap still
    skips the zero-fill pass. All three are writable, so decoded arrays are too.
    """
    if not fresh_pages or size < 1024 * 1024:
        return bytearray(size)
    try:
        import numpy as np
    except ImportError:
        return mmap.mmap(-1, size)
    return np.empty(size, dtype=np.uint8)


def _check(url: str, size: int, digest: str, got_size: int, got_digest: str | None) -> None:
    if got_size != size:
        raise ObjectCorruptError(f"{url} is corrupt: {got_size} bytes, the reference says {size}")
    if got_digest is not None and got_digest != digest:
        algorithm = split_digest(digest)[0]
        raise ObjectCorruptError(
            f"{url} is corrupt: {algorithm} {split_digest(got_digest)[1]}, the reference says "
            f"{split_digest(digest)[1]}"
        )


#: verified file:// reads at least this large map the file instead of copying it
_MAP_MIN = 1024 * 1024


def _map_private(fh: Any, size: int) -> mmap.mmap | None:
    """A private, writable mapping of an object file, or None where mapping is not possible.

    Why: reading a file copies every byte from the page cache into fresh memory, which the
    kernel must first fault in and zero: for a large object that is most of the cost of a
    read. A private mapping shares the page cache pages instead (no copy, no zeroing; the
    hash touches each page once), and stays writable: a page is copied only if the value is
    modified, and never written back. Deleting or replacing the object (a rename: objects
    are never rewritten in place) leaves the mapping intact. The one hazard is a file
    truncated in place by someone else while mapped (SIGBUS); the provider never does that.
    """
    flags = getattr(mmap, "MAP_PRIVATE", None)
    if flags is None or size <= 0:
        return None
    try:
        return mmap.mmap(fh.fileno(), size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):  # a filesystem that cannot map (some FUSE/network ones)
        return None


@dataclass(frozen=True)
class StoredObject:
    url: str
    size: int
    #: the digest as references hold it (``codec.ObjectRef.sha256``): ``"<algorithm>:<hex>"``,
    #: or bare hex for SHA-256; the field keeps its old name because the reference's does
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


class ObjectStore(ABC):
    """The operations the XCom backend, the runtime and cleanup need, whatever the URL scheme."""

    root_url: str
    #: the checksum algorithm of the objects this store writes (any of :data:`DIGESTS` is read)
    digest: str = DEFAULT_DIGEST

    @abstractmethod
    def put(self, key: str, chunks: Chunks) -> StoredObject:
        """Write an object from chunks; it appears whole or not at all."""

    def get(self, url: str) -> bytearray:
        """Read a whole object into one bytearray."""
        return self._read(url, None, None)

    def get_verified(self, url: str, size: int, digest: str) -> Buffer:
        """Read an object and check it against its reference; ObjectCorruptError if it differs.

        ``digest`` is what the reference holds (see :func:`split_digest`). Returns a writable
        buffer for ``codec.loads`` (a bytearray, numpy memory for large objects, see
        ``_allocate``, or a private mapping of a large file, see ``_map_private``), hashing
        while reading rather than afterwards.
        """
        _new_hash(split_digest(digest)[0])  # an unknown algorithm fails before any download
        return self._read(url, size, digest)

    @abstractmethod
    def _read(self, url: str, expected_size: int | None, digest: str | None) -> Any:
        """Read an object; with ``expected_size`` and ``digest``, check it while reading."""

    def _hasher(self, digest: str | None = None) -> _Hasher:
        """A hasher for writing (this store's algorithm) or for checking ``digest``."""
        return _Hasher(split_digest(digest)[0] if digest is not None else self.digest)

    @abstractmethod
    def delete(self, url: str) -> None:
        """Delete an object; deleting one that is already gone is not an error."""

    # -- small objects: the record of a call (``records.py``) --------------------------------

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write a small object only if nothing is at ``key`` yet, atomically: True if this call
        created it, False if an object was already there (whoever wrote it, whatever it holds).

        The one primitive the guarantees across replicas rest on: of two writers racing for one
        key, exactly one gets True (S3 ``If-None-Match: *``; on ``file://`` a hard link, which
        the kernel makes or refuses in one step). A failure to reach the store raises StoreError:
        then nobody can say whether the object exists, and the caller must not assume either.
        """

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """A small object's bytes, or None when there is no object at ``key``."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write or replace a small object (appears whole or not at all)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ListedObject]:
        """Every object under the root (optionally under ``prefix`` below it)."""

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

    def new_key(self, *segments: str) -> str:
        """A fresh, unique key under ``segments`` (each made safe), ending in :data:`SUFFIX`."""
        return _new_key(segments)


def _new_key(segments: Iterable[str]) -> str:
    parts = [safe_segment(s) for s in segments]
    return "/".join([*parts, uuid.uuid4().hex + SUFFIX])


def task_key(
    dag_id: str | None,
    run_id: str | None,
    task_id: str | None,
    map_index: int | None,
    name: str,
    prefix: str = "",
) -> str:
    """The one key layout for every object the provider writes.

    ``[<prefix>/]<dag_id>/<run_id>/<task_id>[/<map_index>]/<name>/<uuid>.knc``: XCom values
    (``name`` is the XCom key; ``key.N`` for item N of a container stored item by item),
    results the runtime spills (``return_value``) and the request/response bodies of deferred
    calls (``_request``, ``_response``). One layout means one ``xcom-cleanup`` sees everything,
    and an object's key tells whose it is.
    """
    return task_prefix(dag_id, run_id, task_id, map_index, prefix) + _new_key([name or "_"])


def task_prefix(
    dag_id: str | None, run_id: str | None, task_id: str | None, map_index: int | None, prefix: str = ""
) -> str:
    """The key prefix (ending in ``/``) of everything one task try's objects are stored under."""
    segments = [s for s in prefix.split("/") if s]
    segments += [dag_id or "_", run_id or "_", task_id or "_"]
    if map_index is not None and map_index >= 0:
        segments.append(str(map_index))
    return "".join(safe_segment(s) + "/" for s in segments)


#: the folder under the store's root that holds the record of every call (``records.py``)
RECORDS_FOLDER = "_records"


def record_key(kind: str, name: str, part: str) -> str:
    """Where one part of the record of a call lives: ``_records/<kind>/<h[:2]>/<h>/<part>.knc``
    with ``h`` the SHA-256 of the call's id (ids hold any characters; the hash makes a safe,
    evenly spread key). ``kind`` is ``invocations`` or ``deliveries``; every part of one call's
    record shares one folder, so one listing shows all of it and cleanup removes it whole."""
    return record_folder(kind, name) + safe_segment(part) + SUFFIX


def record_folder(kind: str, name: str) -> str:
    """The folder (ending in ``/``) of the record of call ``name`` (see :func:`record_key`)."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{RECORDS_FOLDER}/{safe_segment(kind)}/{digest[:2]}/{digest}/"


def record_of(key: str) -> str | None:
    """The record folder a key belongs to (see :func:`record_key`), or None for other objects."""
    parts = key.split("/")
    if len(parts) >= 5 and parts[0] == RECORDS_FOLDER:
        return "/".join(parts[:4]) + "/"
    return None


# --------------------------------------------------------------------------------------
# file://
# --------------------------------------------------------------------------------------


class FileStore(ObjectStore):
    """A folder. Writes go to a temp file in the same folder, then an atomic rename."""

    def __init__(self, url: str, *, digest: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"file store URL {url} names a host; use file:///absolute/path")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise StoreError(f"file store URL {url} must hold an absolute path (file:///...)")
        self.root = path
        self.root_url = path.as_uri()
        if digest is not None:
            _new_hash(digest)
            self.digest = digest

    def _path(self, url: str) -> Path:
        return self.root.joinpath(*self.key_of(url).split("/"))

    def _temp_beside(self, url: str) -> tuple[Path, int, str]:
        """A new temporary file in the target's folder (same filesystem: it can be renamed or
        linked into place in one step): the target, the open descriptor and the temp path."""
        target = self._path(url)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
        except OSError as exc:
            raise StoreError(f"cannot write {url}: {exc.strerror or exc}") from exc
        return target, fd, tmp

    def put(self, key: str, chunks: Chunks) -> StoredObject:
        url = self.url_of(key)
        hasher = self._hasher()
        target, fd, tmp = self._temp_beside(url)
        try:
            try:
                written = 0
                for chunk in chunks:
                    whole = memoryview(chunk).cast("B")
                    start = 0
                    while start < whole.nbytes:
                        # pieces end on _PIECE boundaries of the file: after a frame's odd-sized
                        # head, page-aligned writes are ~15% faster than misaligned ones
                        end = min(whole.nbytes, start + _PIECE - written % _PIECE)
                        piece = view = whole[start:end]
                        while view.nbytes:
                            view = view[os.write(fd, view) :]
                        # hashed right after the copy, while the piece is still in cache
                        hasher.update(piece)
                        written += end - start
                        start = end
            finally:
                os.close(fd)
            digest = hasher.digest()
            os.replace(tmp, target)
        except BaseException as exc:
            hasher.close()
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write {url}: {exc.strerror or exc}") from exc
            raise
        return StoredObject(url=url, size=hasher.size, sha256=digest)

    def _read(self, url: str, expected_size: int | None, digest: str | None) -> Any:
        path = self._path(url)
        hasher = self._hasher(digest) if digest is not None else None
        try:
            with open(path, "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                if expected_size is not None and digest is not None:
                    _check(url, expected_size, digest, size, None)  # before allocating anything
                mapped = _map_private(fh, size) if hasher is not None and size >= _MAP_MIN else None
                data = mapped if mapped is not None else _allocate(size, fresh_pages=digest is not None)
                view = memoryview(data)
                try:
                    filled = 0
                    while filled < size:
                        # one piece at a time, hashed right after the copy (or the page faults
                        # of a mapping) while it is in cache
                        n = (
                            min(_PIECE, size - filled)
                            if mapped is not None
                            else fh.readinto(view[filled : filled + _PIECE])
                        )
                        if not n:
                            raise StoreError(f"{url} shrank while being read ({filled} of {size} bytes)")
                        if hasher is not None:
                            hasher.update(view[filled : filled + n])
                        filled += n
                finally:
                    view.release()
            if hasher is not None and expected_size is not None and digest is not None:
                try:
                    _check(url, expected_size, digest, size, hasher.digest())
                except ObjectCorruptError:
                    if mapped is not None:
                        with contextlib.suppress(BufferError):  # unmap now, not at garbage collection
                            mapped.close()
                    raise
            return data
        except FileNotFoundError:
            raise ObjectMissingError(f"{url} does not exist (deleted behind Airflow's back?)") from None
        except OSError as exc:
            raise StoreError(f"cannot read {url}: {exc.strerror or exc}") from exc
        finally:
            if hasher is not None:
                hasher.close()

    def delete(self, url: str) -> None:
        try:
            self._path(url).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {url}: {exc.strerror or exc}") from exc

    def _staged(self, url: str, data: bytes) -> tuple[Path, str]:
        """``data`` in a temporary file beside the target, ready to be linked or renamed."""
        target, fd, tmp = self._temp_beside(url)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"cannot write {url}: {exc.strerror or exc}") from exc
        return target, tmp

    def create(self, key: str, data: bytes) -> bool:
        url = self.url_of(key)
        target, tmp = self._staged(url, data)
        try:
            os.link(tmp, target)  # atomic: exactly one of racing linkers succeeds
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot create {url}: {exc.strerror or exc}") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)

    def read(self, key: str) -> bytes | None:
        url = self.url_of(key)
        try:
            return self._path(url).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {url}: {exc.strerror or exc}") from exc

    def write(self, key: str, data: bytes) -> None:
        url = self.url_of(key)
        target, tmp = self._staged(url, data)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"cannot write {url}: {exc.strerror or exc}") from exc

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


#: Returns the boto3 Session S3 clients are made from, and the endpoint URL and region its
#: source names (or None), for an Airflow connection id. Installed by the Airflow side
#: (``airflow_provider_knative.aws``): this module stays free of Airflow.
CredentialsProvider = Callable[[str], tuple[Any, str | None, str | None]]
_credentials_provider: CredentialsProvider | None = None


def use_credentials_provider(provider: CredentialsProvider) -> None:
    """Let ``[knative] aws_conn_id`` name an Airflow connection (see ``airflow_provider_knative.aws``)."""
    global _credentials_provider
    _credentials_provider = provider


def _session_for(aws_conn_id: str) -> tuple[Any, str | None, str | None]:
    """The boto3 Session (and the connection's endpoint and region) for S3 clients."""
    import boto3

    if not aws_conn_id:
        return boto3.session.Session(), None, None  # boto3's default chain
    if _credentials_provider is None:
        raise StoreError(
            f"[knative] aws_conn_id is {aws_conn_id!r}, but this process cannot read Airflow "
            "connections; unset it here to use boto3's default chain (environment, profile, IRSA)"
        )
    return _credentials_provider(aws_conn_id)


#: attempts for one part of a ranged download whose connection breaks mid-body
PART_ATTEMPTS = 4
PART_RETRY_BASE_SECONDS = 0.2
#: tries of a create-only write that S3 answers 409 ConditionalRequestConflict (a racing write)
CONDITIONAL_ATTEMPTS = 5


def _part_retryable(exc: BaseException) -> bool:
    """A part that failed on the wire (cut, reset, timed out), not a refusal (4xx) or our bug."""
    from botocore.exceptions import HTTPClientError, IncompleteReadError
    from urllib3.exceptions import HTTPError

    return isinstance(exc, (TruncatedReadError, HTTPClientError, IncompleteReadError, HTTPError, OSError))


class _ChunkReader:
    """A read-only file over an iterator of chunks, for boto3's multipart upload.

    ``read(n)`` joins views of the pending chunks straight into one new ``bytes``: one copy
    per part (boto3 needs bytes it can keep), however the chunks are cut.
    """

    def __init__(self, chunks: Iterable[bytes | memoryview]) -> None:
        self._chunks = iter(chunks)
        self._current = memoryview(b"")
        #: what the producer of the chunks raised (boto3 would wrap or hide it)
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        pieces: list[memoryview] = []
        wanted = size
        while wanted != 0:
            if not self._current.nbytes:
                try:
                    self._current = memoryview(next(self._chunks)).cast("B")
                except StopIteration:
                    break
                except BaseException as exc:
                    self.error = exc
                    raise
                continue
            take = self._current.nbytes if wanted < 0 else min(wanted, self._current.nbytes)
            pieces.append(self._current[:take])
            self._current = self._current[take:]
            if wanted > 0:
                wanted -= take
        if len(pieces) == 1 and isinstance(pieces[0].obj, bytes) and pieces[0].nbytes == len(pieces[0].obj):
            return pieces[0].obj  # a whole bytes chunk: no copy at all
        return b"".join(pieces)

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
        aws_conn_id: str | None = None,
        digest: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise StoreError(f"S3 store URL {url} names no bucket; use s3://bucket/prefix")
        self.aws_conn_id = aws_conn_id if aws_conn_id is not None else config.get("aws_conn_id")
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
        if digest is not None:
            _new_hash(digest)
            self.digest = digest

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from botocore.config import Config

                # [knative] s3_endpoint_url / s3_region_name, when set, win over the connection's
                session, endpoint, region = _session_for(self.aws_conn_id)
                self.endpoint_url = self.endpoint_url or endpoint
                self.region_name = self.region_name or region
                self._client = session.client(
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
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f" (endpoint {self.endpoint_url})" if self.endpoint_url else ""
        if isinstance(exc, NoCredentialsError):
            return StoreError(
                f"cannot {action} {url}: no AWS credentials{where}: set [knative] aws_conn_id to an Airflow "
                "aws connection, or give boto3's default chain some (environment, profile, IRSA)"
            )
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NotFound") and self._bucket_missing():
                code = "NoSuchBucket"  # a HEAD answers a bare 404 for a missing bucket too
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

    def _bucket_missing(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            return exc.response.get("Error", {}).get("Code", "") in ("404", "NoSuchBucket", "NotFound")
        except Exception:
            return False
        return False

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
        hasher = self._hasher()
        reader = _ChunkReader(hasher.feed(chunks))
        try:
            self.client.upload_fileobj(reader, self.bucket, self._key(url), Config=self._transfer_config())
            digest = hasher.digest()
        except Exception as exc:
            hasher.close()
            if reader.error is not None:  # the value failed to encode: that is not a store error
                raise reader.error from None
            if isinstance(exc, StoreError):
                raise
            raise self._error("write", url, exc) from exc
        return StoredObject(url=url, size=hasher.size, sha256=digest)

    def _read(self, url: str, expected_size: int | None, digest: str | None) -> Any:
        key = self._key(url)
        hasher = self._hasher(digest) if digest is not None else None
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            size = int(head["ContentLength"])
            if expected_size is not None and digest is not None:
                _check(url, expected_size, digest, size, None)  # before allocating anything
            data = _allocate(size, fresh_pages=digest is not None)
            view = memoryview(data)
            ranges = [
                (start, min(start + self.chunk_bytes, size)) for start in range(0, size, self.chunk_bytes)
            ]

            single = len(ranges) <= 1

            def fetch(span: tuple[int, int]) -> tuple[int, int]:
                start, end = span
                pos = start
                # a part whose connection breaks mid-body is asked for again from the first
                # missing byte (bytes already in place, and already hashed, are kept)
                for attempt in range(1, PART_ATTEMPTS + 1):
                    try:
                        resp = self.client.get_object(
                            Bucket=self.bucket, Key=key, Range=f"bytes={pos}-{end - 1}"
                        )
                        body = resp["Body"]
                        try:
                            while pos < end:
                                piece = body.read(min(1024 * 1024, end - pos))
                                if not piece:
                                    raise TruncatedReadError(f"{url} ended early at byte {pos} of {size}")
                                view[pos : pos + len(piece)] = piece
                                if single and hasher is not None:  # one stream: hash as it arrives
                                    hasher.update(view[pos : pos + len(piece)])
                                pos += len(piece)
                        finally:
                            body.close()
                        return span
                    except Exception as exc:
                        if attempt == PART_ATTEMPTS or not _part_retryable(exc):
                            raise
                        time.sleep(PART_RETRY_BASE_SECONDS * 2 ** (attempt - 1))
                raise AssertionError("unreachable")  # pragma: no cover

            if single:
                done: Iterable[tuple[int, int]] = map(fetch, ranges)
                pool = None
            else:
                pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(ranges)))
                done = pool.map(fetch, ranges)  # in order: each range is hashed as soon as it is in
            try:
                for start, end in done:
                    if hasher is not None and not single:
                        hasher.update(view[start:end])
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
            if hasher is not None and expected_size is not None and digest is not None:
                _check(url, expected_size, digest, size, hasher.digest())
            return data
        except StoreError:
            raise
        except Exception as exc:
            raise self._error("read", url, exc) from exc
        finally:
            if hasher is not None:
                hasher.close()

    def delete(self, url: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(url))
        except Exception as exc:
            err = self._error("delete", url, exc)
            if not isinstance(err, ObjectMissingError):
                raise err from exc

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        url = self.url_of(key)
        for attempt in range(1, CONDITIONAL_ATTEMPTS + 1):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(url), Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "PreconditionFailed":
                    return False
                # another conditional write to this key is in flight: S3 answers 409 and the
                # loser of that race learns which write won by trying again
                if code == "ConditionalRequestConflict" and attempt < CONDITIONAL_ATTEMPTS:
                    time.sleep(PART_RETRY_BASE_SECONDS * attempt)
                    continue
                raise self._error("create", url, exc) from exc
            except Exception as exc:
                raise self._error("create", url, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self, key: str) -> bytes | None:
        url = self.url_of(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(url))["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as exc:
            err = self._error("read", url, exc)
            if isinstance(err, ObjectMissingError):
                return None
            raise err from exc

    def write(self, key: str, data: bytes) -> None:
        url = self.url_of(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(url), Body=data)
        except Exception as exc:
            raise self._error("write", url, exc) from exc

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


def open_store(url: str | None = None) -> ObjectStore:
    """The store at ``url`` (default: ``[knative] xcom_store_url``), one instance per process."""
    return _open(
        url or config.get("xcom_store_url"), config.get("s3_endpoint_url") or None, config.get("aws_conn_id")
    )


def forget_stores() -> None:
    """Drop the cached store instances, so the next ``open_store`` reads the settings afresh."""
    _open.cache_clear()


@functools.cache
def _open(url: str, endpoint: str | None, aws_conn_id: str = "") -> ObjectStore:
    scheme = urlsplit(url).scheme
    digest = config.get("checksum")
    if scheme == "file":
        return FileStore(url, digest=digest)
    if scheme == "s3":
        return S3Store(url, endpoint_url=endpoint, aws_conn_id=aws_conn_id, digest=digest)
    raise config.ConfigError(
        f"[knative] xcom_store_url (env AIRFLOW__KNATIVE__XCOM_STORE_URL) must start with s3:// or "
        f"file://, got {url!r}"
    )
