"""Every error this provider raises, in one tree under :class:`KnativeError`.

Why one module: callers catch a family (``except StoreError``) or everything of ours
(``except KnativeError``) without importing the module that happens to raise it, and one
glance shows what can go wrong. Library exceptions (requests, httpx, boto3, the kubernetes
client, msgpack, pyarrow) are translated into this tree where they are caught, one boundary
per library, the way httpx's ``_exceptions.py`` and ``map_httpcore_exceptions`` do it; the
Airflow-facing layer translates this tree into Airflow's exceptions at one place
(``operators.airflow_errors``).

Families keep the built-in base they always had (``ValueError`` for bad input,
``RuntimeError`` for failed I/O, ``LookupError`` for a missing thing), so ``except ValueError``
written against earlier versions still works.

Nothing here imports Airflow or any third-party package: the runtime image and the codec
use it too.
"""

from __future__ import annotations


class KnativeError(Exception):
    """Root of every error raised by airflow-provider-knative."""


# ---------------------------------------------------------------------------- configuration


class ConfigError(KnativeError, ValueError):
    """A ``[knative]`` option, connection field or service setting that cannot be used."""


class AirflowVersionError(ConfigError):
    """This feature needs a newer Airflow than the one installed (``airflow_compat.require``)."""


class SettingsError(ConfigError):
    """A per-service deployment setting (``service_settings=`` or a ``--defaults`` file) is invalid."""


class InvalidServiceName(ConfigError):
    """A service name that cannot be made into a Knative Service name."""


class NoServiceURLError(ConfigError):
    """None of the URL sources (``url=``, template, discovery) yields a URL for a service."""


# ---------------------------------------------------------------------------- data: codec and wire


class CodecError(KnativeError, ValueError):
    """Bytes that are not a valid encoded value. The only error decoding raises."""


class ProtocolError(KnativeError, ValueError):
    """A request or response that does not follow the wire protocol."""


class VersionMismatch(ProtocolError):
    """The other side speaks another protocol version."""


class SignatureError(ProtocolError):
    """Missing, malformed, wrong, expired or replayed signature (answered with 401)."""


# ---------------------------------------------------------------------------- data: object store


class StoreError(KnativeError, RuntimeError):
    """An object could not be written, read or deleted; the message names the URL."""


class ObjectMissingError(StoreError):
    """The object a reference points to is gone."""


class ObjectCorruptError(StoreError):
    """The object's size or checksum differs from what its reference recorded."""


class TruncatedReadError(StoreError):
    """An object's download ended before its last byte (the part is asked for again)."""


class SpilledValueError(StoreError):
    """A stored XCom value cannot be turned back into the value: missing, unreadable or corrupt."""


# ---------------------------------------------------------------------------- calling a function


class FunctionCallError(KnativeError):
    """A task function could not be called with what it was sent (no HTTP here: the runtime
    and local mode decide what such a failure means to their caller)."""


class ArgumentMismatch(FunctionCallError, TypeError):
    """The arguments do not fit the function's signature."""


class ReferenceFetchError(FunctionCallError):
    """An argument passed by reference could not be fetched from the object store."""


class ResultEncodingError(FunctionCallError, TypeError):
    """The function's return value cannot be encoded (the path and type are named)."""


class ContextValueUnavailable(FunctionCallError, KeyError):
    """A function read an Airflow context value from ``**kwargs`` that never crosses into the
    service (``kwargs["ti"]``): the message names the values that do. A ``KeyError``, as the
    bare lookup was, but one that says why and what to do instead."""

    def __str__(self) -> str:  # KeyError's own shows the repr of its argument
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------- invocations (HTTP)


class InvocationError(KnativeError):
    """The service could not be called or answered something that is not a result."""


class ServiceUnavailableError(InvocationError):
    """The service kept refusing connections or answering 502/503/504 until the deadline."""


class InvocationTimeout(InvocationError):
    """The function did not answer within the read timeout; the call is abandoned, not retried."""


class OutcomeUnknownError(InvocationError):
    """The connection broke after the request may have reached the function, and nobody can
    say whether it ran: the try fails rather than risk running it twice."""


class TLSError(InvocationError):
    """The TLS handshake with the service failed (an untrusted certificate, a client certificate
    refused): not retried, since the next attempt would fail the same way."""


class ResponseCheckFailed(InvocationError):
    """The task's ``response_check`` returned False for the service's answer."""


class InvocationCancelled(InvocationError):
    """``on_kill`` (or the executor) abandoned the call."""


class HTTPStatusError(InvocationError):
    """A final HTTP status that is neither a result nor worth retrying (4xx, bare 500, ...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RemoteFunctionError(InvocationError):
    """The function raised inside the service: carries the remote error and captured logs.

    ``result`` is the runtime's ``protocol.Result`` (kept untyped here so this module imports
    nothing of ours).
    """

    def __init__(self, result: object, message: str) -> None:
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------- Kubernetes and tools


class ClusterError(KnativeError):
    """The cluster cannot be used for what was asked; the message says why and what to do."""


class ServiceNotFound(ClusterError, LookupError):
    """The Knative Service does not exist (HTTP 404 with a Status object)."""


class NotManaged(ClusterError):
    """A Knative Service of that name exists but airflow-knative did not create it: it is
    never replaced or deleted (its name clashes with a service in the DAGs)."""


class CollectError(KnativeError):
    """The DAG folder cannot be turned into Knative Services (import errors, conflicts)."""


class ResultLookupError(KnativeError, LookupError):
    """The gateway cannot tell which task holds a DAG run's result."""


class StackError(KnativeError, RuntimeError):
    """The local stack could not start or answer."""
