"""A ranged S3 download whose connection is cut mid-body is resumed, and the object verifies.

A real proxy (``tests/tcp_proxy.py``) sits between boto3 and the moto server and breaks the
connection of one ranged GET after part of its body, as a flaky network or a restarted load
balancer does.
"""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
from blake3 import blake3
from tcp_proxy import CuttingProxy

from airflow_provider_knative.store import S3Store

MIB = 1024 * 1024


@pytest.fixture
def bucket(moto_server: str) -> str:
    import boto3

    name = f"retry-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=name)
    return name


def _object(moto_server: str, bucket: str, size: int) -> tuple[str, bytes, str]:
    """A random object written straight to moto; its URL, bytes and SHA-256."""
    data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()
    writer = S3Store(f"s3://{bucket}/x", endpoint_url=moto_server, concurrency=1, aws_conn_id="")
    stored = writer.put(f"obj/{uuid.uuid4().hex}.knc", [data])
    assert stored.sha256 == "blake3:" + blake3(data).hexdigest()
    return stored.url, data, stored.sha256


@pytest.mark.parametrize(
    ("size", "cut_start", "what"),
    [
        (3 * 5 * MIB + 123, 5 * MIB, "the second of four parallel parts"),
        (3 * MIB, 0, "a single-stream download, hashed as it arrives"),
    ],
)
def test_a_part_cut_mid_body_is_resumed_and_verified(
    moto_server: str, bucket: str, size: int, cut_start: int, what: str
) -> None:
    url, data, digest = _object(moto_server, bucket, size)
    with CuttingProxy(moto_server, cut_range_start=cut_start, cut_after=MIB // 2) as proxy:
        reader = S3Store(
            f"s3://{bucket}/x", endpoint_url=proxy.url, concurrency=4, chunk_bytes=5 * MIB, aws_conn_id=""
        )
        got = reader.get_verified(url, size, digest)
        assert bytes(got) == data, what
        assert proxy.cuts == 1, f"the proxy never cut {what}"
        ranges = [
            int(m.group(1))
            for head in proxy.heads
            if (m := re.search(rb"range: bytes=(\d+)-", head, re.IGNORECASE))
        ]
    # the cut part was asked for again from where it broke, not from its start
    resumed = [start for start in ranges if cut_start < start < cut_start + 5 * MIB]
    assert len(resumed) == 1 and resumed[0] >= cut_start + MIB // 2 - 65536, ranges


def test_a_part_that_keeps_failing_gives_up_with_the_url(moto_server: str, bucket: str) -> None:
    from airflow_provider_knative import store
    from airflow_provider_knative.errors import StoreError

    url, _data, digest = _object(moto_server, bucket, 2 * MIB)

    with CuttingProxy(moto_server, cut_every_range=True, cut_after=1000) as proxy:
        reader = S3Store(f"s3://{bucket}/x", endpoint_url=proxy.url, concurrency=1, aws_conn_id="")
        with pytest.raises(StoreError) as err:
            reader.get_verified(url, 2 * MIB, digest)
    assert url in str(err.value)
    assert proxy.cuts == store.PART_ATTEMPTS  # each attempt was cut, then it gave up
