"""200 MB in and out of the runtime by reference, through the real moto S3 server.

The HTTP bodies carry only the references; the runtime fetches the argument from S3 itself
and spills the result there itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_process import RuntimeProcess, start_runtime

from airflow_provider_knative import codec, protocol, store

BASIC = Path(__file__).resolve().parent / "runtime_dags" / "basic"
N = 25_000_000  # float64: 200 MB


@pytest.fixture(scope="module")
def s3_rt(moto_server: str) -> RuntimeProcess:
    with start_runtime(BASIC, env={"AIRFLOW__KNATIVE__S3_ENDPOINT_URL": moto_server}) as runtime:
        yield runtime


@pytest.mark.slow
def test_200mb_argument_by_reference(s3_rt: RuntimeProcess, s3_store: str) -> None:
    import numpy as np

    arr = np.arange(N, dtype="float64")
    target = store.open_store(s3_store)
    stored = target.put(target.new_key("args"), codec.encode_chunks(arr))
    assert stored.size > 200_000_000
    ref = codec.ObjectRef(stored.url, stored.size, stored.sha256, codec.summarize(arr))
    settings = protocol.StoreSettings(url=s3_store, inline_max_bytes=64 * 1024)

    resp, result = s3_rt.invoke("runtime_basic/array_stats", ref, store=settings, timeout=300)
    assert resp.status_code == 200, result.error
    assert result.value == {"sum": float(arr.sum()), "shape": [N], "dtype": "float64"}
    assert len(resp.request.content) < 4096
    assert len(resp.content) < 4096


@pytest.mark.slow
def test_200mb_result_by_reference(s3_rt: RuntimeProcess, s3_store: str) -> None:
    settings = protocol.StoreSettings(url=s3_store, inline_max_bytes=64 * 1024, key_prefix="results")
    ctx = {"dag_id": "runtime_basic", "run_id": "manual__2024", "task_id": "make_array"}
    resp, result = s3_rt.invoke("runtime_basic/make_array", N, 0.5, store=settings, context=ctx, timeout=300)
    assert resp.status_code == 200, result.error
    ref = result.value
    assert isinstance(ref, codec.ObjectRef)
    assert ref.url.startswith(f"{s3_store}/results/runtime_basic/manual__2024/make_array/")
    assert ref.size > 200_000_000 and ref.summary == f"ndarray float64 ({N},)"
    assert len(resp.request.content) < 4096
    assert len(resp.content) < 4096
    data = store.open_store(s3_store).get(ref.url)
    from blake3 import blake3

    assert "blake3:" + blake3(data).hexdigest() == ref.sha256
    back = codec.loads(data)
    assert back.shape == (N,) and float(back[0]) == 0.5 and float(back[-1]) == 0.5
