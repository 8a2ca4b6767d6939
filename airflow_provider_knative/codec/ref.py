"""``ObjectRef``: a pointer to a value spilled to the object store, carried inside frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_knative.errors import CodecError


@dataclass(frozen=True)
class ObjectRef:
    """A value that lives in the object store: where, how big, its checksum, and what it is.

    It is self-describing on purpose: Airflow's ``deserialize_value`` gets no context, and
    the runtime must fetch it with nothing but this.
    """

    url: str
    size: int
    sha256: str
    summary: str = ""
    #: a short human preview of the value (the first rows or items), made where it was spilled
    preview: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = {"url": self.url, "size": self.size, "sha256": self.sha256, "summary": self.summary}
        if self.preview:  # absent when empty: older readers never see a key they do not know
            data["preview"] = self.preview
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ObjectRef:
        if not isinstance(data, dict):
            raise CodecError("object reference must be a map")
        try:
            url, size, digest = data["url"], data["size"], data["sha256"]
        except KeyError as exc:
            raise CodecError(f"object reference lacks {exc.args[0]!r}") from None
        summary = data.get("summary", "")
        preview = data.get("preview", "")
        if not (
            isinstance(url, str)
            and isinstance(size, int)
            and not isinstance(size, bool)
            and size >= 0
            and isinstance(digest, str)
            and isinstance(summary, str)
            and isinstance(preview, str)
        ):
            raise CodecError("object reference has fields of the wrong type")
        return cls(url=url, size=size, sha256=digest, summary=summary, preview=preview)
