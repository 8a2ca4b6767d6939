"""Object stores: file:// (atomic rename) and s3:// through boto3 against a real moto server."""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from airflow_provider_knative import config, store
from airflow_provider_knative.errors import ConfigError
from airflow_provider_knative.store import (
    FileStore,
    ObjectCorruptError,
    ObjectMissingError,
    S3Store,
    StoreError,
    _ChunkReader,
    open_store,
)

MB = 1024 * 1024


def payload(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


def chunks_of(data: bytes, *sizes: int) -> Iterator[bytes | memoryview]:
    """``data`` cut into pieces of the given sizes (cycled), as a mix of bytes and views."""
    view = memoryview(data)
    pos = i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        piece = view[pos : pos + n]
        yield piece if i % 2 else bytes(piece)
        pos += n
        i += 1


class Boom(RuntimeError):
    pass


def failing_after(data: bytes, n: int) -> Iterator[bytes]:
    yield data[:n]
    raise Boom("the value could not be encoded halfway through")


@pytest.fixture(params=["file_store", "s3_store"])
def any_store(request: pytest.FixtureRequest) -> store.ObjectStore:
    return open_store(request.getfixturevalue(request.param))


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * MB + 17, 13 * MB])
def test_put_get_round_trip(any_store: store.ObjectStore, size: int) -> None:
    data = payload(size)
    stored = any_store.put(any_store.new_key("d", "r", "t"), chunks_of(data, 7, MB, 3 * MB, 1))
    assert stored.size == size and stored.sha256 == _expected_digest(store.DEFAULT_DIGEST, data)
    assert stored.url.startswith(any_store.root_url + "/d/r/t/") and stored.url.endswith(".knc")
    got = any_store.get(stored.url)
    assert type(got) is bytearray and got == data
    verified = any_store.get_verified(stored.url, stored.size, stored.sha256)
    assert bytes(verified) == data and memoryview(verified).readonly is False


def test_verification_catches_size_and_checksum(any_store: store.ObjectStore) -> None:
    data = payload(2 * MB)
    stored = any_store.put(any_store.new_key("v"), [data])
    with pytest.raises(ObjectCorruptError, match=r"is corrupt: 2097152 bytes, the reference says 5") as err:
        any_store.get_verified(stored.url, 5, stored.sha256)
    assert stored.url in str(err.value)
    with pytest.raises(ObjectCorruptError, match="is corrupt: sha256") as err:
        any_store.get_verified(stored.url, stored.size, "0" * 64)
    assert stored.url in str(err.value)


def test_list_and_delete(any_store: store.ObjectStore) -> None:
    a = any_store.put("a/one.knc", [b"1"])
    b = any_store.put("b/two.knc", [b"22"])
    listed = {o.url: o for o in any_store.list()}
    assert set(listed) == {a.url, b.url}
    assert listed[b.url].size == 2 and listed[b.url].modified > 0
    assert [o.url for o in any_store.list("a")] == [a.url]
    any_store.delete(a.url)
    any_store.delete(a.url)  # gone already: fine
    assert [o.url for o in any_store.list()] == [b.url]
    with pytest.raises(ObjectMissingError, match="does not exist") as err:
        any_store.get(a.url)
    assert a.url in str(err.value)


def test_failed_write_leaves_nothing(any_store: store.ObjectStore) -> None:
    data = payload(12 * MB)
    key = any_store.new_key("half")
    with pytest.raises(Boom):
        any_store.put(key, failing_after(data, 11 * MB))
    assert list(any_store.list()) == []
    with pytest.raises(ObjectMissingError):
        any_store.get(any_store.url_of(key))
    if isinstance(any_store, FileStore):
        assert [p for p in any_store.root.rglob("*") if p.is_file()] == []  # no temp file left
    else:
        uploads = any_store.client.list_multipart_uploads(Bucket=any_store.bucket)
        assert uploads.get("Uploads", []) == []  # the multipart upload was aborted


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "nul\x00"])
def test_keys_cannot_escape_the_root(file_store: str, key: str) -> None:
    with pytest.raises(StoreError, match="invalid object key"):
        open_store().put(key, [b"x"])


def test_urls_outside_the_root_are_refused(file_store: str, tmp_path: Path) -> None:
    target = open_store()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for url in (victim.as_uri(), file_store + "-sibling/x.knc", file_store + "/../victim.txt", "s3://b/k"):
        with pytest.raises(StoreError, match=r"outside the configured store|invalid object key"):
            target.delete(url)
    assert victim.read_text() == "keep"


def test_new_keys_are_safe_and_unique(file_store: str) -> None:
    target = open_store()
    key = target.new_key("my dag", "manual__2024-01-01T00:00:00+00:00", "../../etc", "-1")
    parts = key.split("/")
    assert parts[:4] == ["my_dag", "manual__2024-01-01T00_00_00_00_00", "_.._etc", "-1"]
    assert target.new_key("a") != target.new_key("a")


def test_bad_store_urls_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError, match="names a host"):
        FileStore("file://server/share")
    with pytest.raises(StoreError, match="names no bucket"):
        S3Store("s3:///prefix")
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", "gs://bucket/x")
    with pytest.raises(config.ConfigError, match=r"AIRFLOW__KNATIVE__XCOM_STORE_URL.*gs://bucket/x"):
        open_store()


def test_open_store_is_cached_per_url(file_store: str, tmp_path: Path) -> None:
    assert open_store() is open_store(file_store)
    assert open_store((tmp_path / "other").as_uri()) is not open_store()


def test_default_store_lives_under_airflow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert config.get("xcom_store_url") == (tmp_path / "knative_xcom").as_uri()


def test_s3_multipart_and_ranged_reads(s3_store: str, moto_server: str) -> None:
    target = S3Store(s3_store, endpoint_url=moto_server, chunk_bytes=5 * MB, concurrency=4)
    data = payload(23 * MB + 5)
    stored = target.put(target.new_key("big"), chunks_of(data, 3 * MB, 11, 4 * MB))
    client = boto3.client("s3", endpoint_url=moto_server)
    bucket, key = stored.url[len("s3://") :].split("/", 1)
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-5")  # five parts of 5 MB: a real multipart upload
    assert bytes(target.get_verified(stored.url, stored.size, stored.sha256)) == data


def test_s3_errors_name_the_url(moto_server: str) -> None:
    missing_bucket = S3Store("s3://no-such-bucket/p", endpoint_url=moto_server)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist") as err:
        missing_bucket.get("s3://no-such-bucket/p/k.knc")
    assert "s3://no-such-bucket/p/k.knc" in str(err.value)


def test_chunk_reader_serves_exact_sizes() -> None:
    data = payload(10_000)
    reader = _ChunkReader(chunks_of(data, 1, 333, 4096))
    out = [reader.read(1000) for _ in range(10)]
    assert all(len(p) == 1000 for p in out) and b"".join(out) == data
    assert reader.read(1000) == b""
    whole = b"x" * 100
    assert _ChunkReader([whole]).read(100) is whole  # a whole bytes chunk is passed through
    assert _ChunkReader(chunks_of(data, 777)).read() == data


def _with_algorithm(any_store: store.ObjectStore, algorithm: str) -> store.ObjectStore:
    if isinstance(any_store, FileStore):
        return FileStore(any_store.root_url, digest=algorithm)
    assert isinstance(any_store, S3Store)
    return S3Store(any_store.root_url, endpoint_url=any_store.endpoint_url, digest=algorithm)


def _expected_digest(algorithm: str, data: bytes) -> str:
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()  # bare, as references have always held it
    if algorithm == "blake3":
        from blake3 import blake3

        return "blake3:" + blake3(data).hexdigest()
    import xxhash

    return "xxh3-128:" + xxhash.xxh3_128(data).hexdigest()


def _corrupt_one_byte(any_store: store.ObjectStore, url: str, data: bytes, at: int) -> None:
    bad = bytearray(data)
    bad[at] ^= 0x01
    if isinstance(any_store, FileStore):
        any_store._path(url).write_bytes(bad)
    else:
        assert isinstance(any_store, S3Store)
        any_store.client.put_object(Bucket=any_store.bucket, Key=any_store._key(url), Body=bytes(bad))


@pytest.mark.parametrize("algorithm", store.DIGESTS)
@pytest.mark.parametrize("size", [1000, 3 * MB + 5])  # inline hashing, and the helper thread
def test_every_checksum_catches_a_flipped_byte(
    any_store: store.ObjectStore, algorithm: str, size: int
) -> None:
    """Whatever the algorithm, the digest is computed while writing and checked while reading."""
    pytest.importorskip({"blake3": "blake3", "xxh3-128": "xxhash"}.get(algorithm, "hashlib"))
    target = _with_algorithm(any_store, algorithm)
    data = payload(size)
    stored = target.put(target.new_key("sum"), chunks_of(data, 7, MB, 1))
    assert stored.sha256 == _expected_digest(algorithm, data)
    # any store reads any algorithm: the reference names it
    assert bytes(any_store.get_verified(stored.url, stored.size, stored.sha256)) == data
    _corrupt_one_byte(target, stored.url, data, at=size // 2)
    with pytest.raises(ObjectCorruptError, match=f"is corrupt: {algorithm} ") as err:
        any_store.get_verified(stored.url, stored.size, stored.sha256)
    assert stored.url in str(err.value)


def test_default_checksum_is_blake3_and_the_option_chooses(file_store: str, monkeypatch) -> None:
    """Integrity checking stays on by default, with a cryptographic checksum that keeps up with
    the copy; ``[knative] checksum`` picks another, and any store reads any algorithm."""
    assert store.DEFAULT_DIGEST == "blake3" and open_store().digest == "blake3"
    stored = open_store().put("k/default.knc", [b"abc"])
    assert stored.sha256 == _expected_digest("blake3", b"abc")
    monkeypatch.setenv("AIRFLOW__KNATIVE__CHECKSUM", "sha256")
    store.forget_stores()
    assert open_store().digest == "sha256"
    assert bytes(open_store().get_verified(stored.url, stored.size, stored.sha256)) == b"abc"
    monkeypatch.setenv("AIRFLOW__KNATIVE__CHECKSUM", "md5")
    store.forget_stores()
    with pytest.raises(ConfigError, match=r"checksum .* must be one of blake3, sha256, xxh3-128"):
        open_store()


def test_unknown_checksum_is_refused_before_reading(file_store: str) -> None:
    target = open_store()
    stored = target.put("k/v.knc", [b"abc"])
    with pytest.raises(StoreError, match=r"unknown checksum algorithm 'md5'.*upgrade") as err:
        target.get_verified(stored.url, 3, "md5:900150983cd24fb0d6963f7d28e17f72")
    assert not isinstance(err.value, ObjectCorruptError)
    with pytest.raises(StoreError, match="unknown checksum algorithm"):
        FileStore(file_store, digest="crc7")


def test_split_and_format_digest() -> None:
    assert store.split_digest("ab" * 32) == ("sha256", "ab" * 32)
    assert store.split_digest("xxh3-128:" + "cd" * 16) == ("xxh3-128", "cd" * 16)
    for algorithm, hexdigest in (("sha256", "ab" * 32), ("blake3", "ef" * 32), ("xxh3-128", "01" * 16)):
        assert store.split_digest(store.format_digest(algorithm, hexdigest)) == (algorithm, hexdigest)


def test_large_file_reads_map_the_object_privately(file_store: str) -> None:
    """A verified read shares the page cache (no copy) yet behaves like a private copy."""
    target = open_store()
    data = payload(3 * MB + 7)
    stored = target.put(target.new_key("map"), [data])
    buf = target.get_verified(stored.url, stored.size, stored.sha256)
    assert isinstance(buf, mmap.mmap)  # mapped, not copied
    view = memoryview(buf)
    assert not view.readonly and view.nbytes == len(data) and bytes(view) == data
    view[0] ^= 0xFF  # the value may be modified ...
    assert target.get(stored.url) == data  # ... the object is not
    target.delete(stored.url)  # nor does deleting the object take the value away
    assert bytes(view[1:]) == data[1:]


def test_file_reads_copy_where_mapping_fails(file_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot_map(*args: object, **kwargs: object) -> mmap.mmap:
        raise OSError(19, "No such device")  # what a filesystem without mmap support answers

    mapping = mmap.mmap
    monkeypatch.setattr(store.mmap, "mmap", cannot_map)
    target = open_store()
    data = payload(3 * MB + 7)
    stored = target.put(target.new_key("copy"), [data])
    buf = target.get_verified(stored.url, stored.size, stored.sha256)
    assert not isinstance(buf, mapping) and bytes(buf) == data and not memoryview(buf).readonly
    _corrupt_one_byte(target, stored.url, data, at=len(data) - 1)
    with pytest.raises(ObjectCorruptError, match="is corrupt"):
        target.get_verified(stored.url, stored.size, stored.sha256)
