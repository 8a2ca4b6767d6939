"""Writing a frame: ``encode_chunks`` (zero-copy, for streaming uploads) and ``dumps``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from airflow_provider_knative.codec.arrow import ArrowTooLarge
from airflow_provider_knative.codec.culprit import describe_failure, path_to
from airflow_provider_knative.codec.layout import HEAD, MAGIC, MAX_DEPTH, TAIL, TRAILER_MAGIC, U64, ZEROS, pad
from airflow_provider_knative.codec.pack import Encoder
from airflow_provider_knative.codec.summary import summarize


def encode_chunks(value: Any) -> Iterator[bytes | memoryview]:
    """Encode ``value`` as a sequence of chunks whose concatenation is the frame.

    Large buffers are yielded as views of the caller's memory (no copy); write the chunks
    out before mutating the value. Raises TypeError naming the path of an unencodable part:
    before the first chunk, except for DataFrames with Python-object columns, which are
    converted while they stream (a failure there ends the stream with the TypeError).
    """
    encoder = Encoder()
    try:
        try:
            body = encoder.encode_body(value)
        except UnicodeEncodeError:  # a str with lone surrogates somewhere: carry them as they are
            encoder = Encoder(unicode_errors="surrogatepass")
            body = encoder.encode_body(value)
    except RecursionError:
        raise TypeError(
            f"value: cannot encode: nested too deeply for this thread's Python recursion limit "
            f"(the codec allows {MAX_DEPTH} levels)"
        ) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(describe_failure(value, exc)) from None
    yield HEAD.pack(MAGIC, len(body))
    yield body
    yield ZEROS[: pad(HEAD.size + len(body))]
    lengths = []
    for index, buf in enumerate(encoder.buffers):
        if isinstance(buf, memoryview):
            yield buf
            n = buf.nbytes
        else:
            n = 0
            try:
                for chunk in buf:
                    n += len(chunk)
                    yield chunk
            except ArrowTooLarge as exc:
                raise TypeError(f"{path_to(value, exc.owner)}: {exc}") from None
            except Exception as exc:  # pyarrow's conversion errors are of many kinds
                owner = encoder.owners.get(index)
                raise TypeError(
                    f"{path_to(value, owner)}: cannot encode {summarize(owner)}: {type(exc).__name__}: {exc}"
                ) from None
        yield ZEROS[: pad(n)]
        lengths.append(n)
    yield b"".join(U64.pack(n) for n in lengths) + TAIL.pack(len(lengths), TRAILER_MAGIC)


def dumps(value: Any) -> bytes:
    """Encode ``value`` into one bytes object (for bodies and small values)."""
    return b"".join(encode_chunks(value))
