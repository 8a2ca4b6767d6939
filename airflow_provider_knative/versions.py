"""Which Airflow and task SDK are installed, and the skew between Airflow and a runtime.

Read from package metadata, never by importing Airflow: the runtime puts its versions in a
header of every response (:data:`RUNTIME_VERSION_HEADER`) before it has imported Airflow, and
the Test button and the KnativeExecutor compare them with their own (:func:`version_skew`).
What differs between Airflow versions lives in ``airflow_compat``.
"""

from __future__ import annotations

from importlib import metadata

Minor = tuple[int, int]


def minor_of(version: str) -> Minor:
    """``(3, 1)`` for ``"3.1.8"`` (also ``"3.1.0rc1"``, ``"3.1"``)."""
    major, minor = [*version.split("."), "0"][:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


#: the installed Airflow (``apache-airflow-core``; the runtime image has it through the task SDK)
AIRFLOW_VERSION: str = _dist_version("apache-airflow-core") or _dist_version("apache-airflow")
#: the installed task SDK (it runs the task process and, for the executor, the supervisor)
TASK_SDK_VERSION: str = _dist_version("apache-airflow-task-sdk")
AIRFLOW_MINOR: Minor = minor_of(AIRFLOW_VERSION) if AIRFLOW_VERSION else (0, 0)

#: the header every runtime response carries: ``airflow=3.3.2; task-sdk=1.3.2``
RUNTIME_VERSION_HEADER = "x-knative-runtime-airflow"


def version_header_value() -> str:
    """This process's Airflow and task SDK versions, for :data:`RUNTIME_VERSION_HEADER`."""
    return f"airflow={AIRFLOW_VERSION or 'none'}; task-sdk={TASK_SDK_VERSION or 'none'}"


def parse_version_header(value: str | None) -> dict[str, str]:
    """``{"airflow": "3.3.2", "task-sdk": "1.3.2"}`` from a :data:`RUNTIME_VERSION_HEADER` value."""
    items = (part.strip().partition("=") for part in (value or "").split(";"))
    return {k.strip(): v.strip() for k, _, v in items if k.strip() and v.strip()}


def version_skew(runtime_header: str | None, *, executor: bool = False) -> str | None:
    """A sentence naming the skew between this Airflow and a runtime, or None when the minors match
    (or the runtime does not say).

    For ``@task.knative`` a skew is only named: the wire protocol is the provider's own. For the
    executor it matters more: the runtime's task SDK runs the supervisor that talks to this
    api-server's Execution API, and an SDK newer than the api-server speaks an API version the
    server does not know.
    """
    versions = parse_version_header(runtime_header)
    theirs = versions.get("airflow", "")
    if not theirs or theirs == "none" or not AIRFLOW_VERSION or minor_of(theirs) == AIRFLOW_MINOR:
        return None
    message = (
        f"version skew: the runtime runs Airflow {theirs} (task SDK {versions.get('task-sdk', '?')}), "
        f"this Airflow is {AIRFLOW_VERSION}"
    )
    if executor and minor_of(theirs) > AIRFLOW_MINOR:
        return message + (
            "; its task supervisor talks to this api-server's Execution API, which may not know the "
            "newer API version it speaks: build the runtime image with the task SDK of Airflow "
            f"{AIRFLOW_MINOR[0]}.{AIRFLOW_MINOR[1]} (apache-airflow-task-sdk=={TASK_SDK_VERSION or '?'})"
        )
    return message + "; build the runtime image with the Airflow version of this deployment"
