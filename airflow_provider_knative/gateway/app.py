"""The workflow gateway: start a DAG run with one HTTP call and get its output back.

Mounted by :mod:`airflow_provider_knative.gateway.plugin` at ``/knative`` in the Airflow
api-server. Plugin apps get no authentication from Airflow, so every route here declares
Airflow's own auth dependencies: a missing/expired token is 401, a user whom the auth
manager does not allow to trigger (POST) runs of that DAG and read its XComs is 403.

``POST /knative/runWorkflow/{dag_id}`` ``{"input": X, "timeout": s, "unpause": bool}``
triggers a run with ``conf={"data": X}`` (the root task reads ``params["data"]``), waits for
it without holding a thread (async DB polling), and answers:

* 200 ``{"output": ..., "dag_run_id": ..., "state": "success", ...}`` on success;
* 500 ``{"detail": ..., "state": "failed", "failed_tasks": [{task_id, error, ...}]}`` when the
  run failed — never an output of a failed run;
* 202 ``{"dag_run_id": ..., "state": "running", "poll_url": ...}`` when the run is still going
  at the timeout; ``GET poll_url`` answers the same shapes;
* 404 unknown DAG, 409 paused DAG (unless ``"unpause": true``), 409 ambiguous result task,
  422 malformed body (with pydantic's reason).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from airflow_provider_knative import airflow_compat, config
from airflow_provider_knative.gateway import results

MAX_TIMEOUT_SECONDS = 3600.0


class RunWorkflowBody(BaseModel):
    """Body of ``POST /knative/runWorkflow/{dag_id}``; unknown fields are refused (typos)."""

    model_config = ConfigDict(extra="forbid")

    input: JsonValue = Field(description="Handed to the run as conf['data'], i.e. params['data'].")
    timeout: float | None = Field(
        default=None,
        ge=0,
        le=MAX_TIMEOUT_SECONDS,
        description="Seconds to wait before answering 202; default [knative] gateway_timeout_seconds.",
    )
    unpause: bool = Field(default=False, description="Unpause this DAG if it is paused (needs edit rights).")


app = FastAPI(
    title="Knative workflow gateway",
    description="Trigger an Airflow DAG with one call and receive its result.",
)


def _authorize(user: BaseUser, dag_id: str, method: str, entity: DagAccessEntity | None, what: str) -> None:
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    if not get_auth_manager().is_authorized_dag(
        method=method,  # type: ignore[arg-type]
        access_entity=entity,
        details=details,
        user=user,
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"user {user.get_name()!r} may not {what} {dag_id!r}")


def _trigger(dag_id: str, body: RunWorkflowBody, user: BaseUser) -> str:
    """Create a queued manual run with conf={"data": input}; returns its run id."""
    from airflow.api_fastapi.core_api.datamodels.dag_run import TriggerDAGRunPostBody
    from airflow.exceptions import ParamValidationError
    from airflow.models.dag import DagModel
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    _authorize(user, dag_id, "GET", DagAccessEntity.XCOM, "read the results (XComs) of DAG")
    with create_session() as session:
        dm = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id))
        if dm is None or dm.is_stale:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"DAG {dag_id!r} not found")
        if dm.has_import_errors:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"DAG {dag_id!r} has import errors; fix the DAG file first"
            )
        if dm.is_paused:
            if not body.unpause:
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    f"DAG {dag_id!r} is paused: unpause it (UI, or PATCH /api/v2/dags/{dag_id} "
                    '{"is_paused": false}) or send "unpause": true in this request',
                )
            _authorize(user, dag_id, "PUT", None, "unpause DAG")
            # an UPDATE, as the REST API does: the auth manager may have used (and closed) this
            # thread's session meanwhile (Airflow 3.1's does), detaching ``dm``
            session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
        dag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
        if dag is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"DAG {dag_id!r} is not serialized yet")
        try:
            params = TriggerDAGRunPostBody(logical_date=None, conf={"data": body.input}).validate_context(dag)
            run = dag.create_dagrun(
                run_id=params["run_id"],
                logical_date=None,
                data_interval=params["data_interval"],
                run_after=params["run_after"],
                conf=params["conf"],
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.REST_API,
                triggering_user_name=user.get_name(),
                state=DagRunState.QUEUED,
                **airflow_compat.create_dagrun_partition_kwargs(params),
                session=session,
            )
        except (ParamValidationError, ValueError) as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"cannot trigger {dag_id!r}: {exc}") from exc
        return run.run_id


async def _run_state(dag_id: str, run_id: str) -> str | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session_async

    async with create_session_async() as session:
        state = await session.scalar(
            select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
    return None if state is None else str(getattr(state, "value", state))


async def wait_for_run(dag_id: str, run_id: str, timeout: float) -> str | None:
    """Poll the run's state until it is finished or ``timeout`` passes; the last state seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    interval = max(0.02, float(config.get("gateway_poll_interval_seconds")))
    while True:
        state = await _run_state(dag_id, run_id)
        remaining = deadline - loop.time()
        if state is None or state in ("success", "failed") or remaining <= 0:
            return state
        await asyncio.sleep(min(interval, remaining))


def _finished_answer(dag_id: str, run_id: str, state: str) -> JSONResponse:
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        base = {"dag_id": dag_id, "dag_run_id": run_id, "state": state}
        if state == "failed":
            failed = results.failed_tasks(session, dag_id, run_id)
            names = ", ".join(t["task_id"] for t in failed if t["state"] == "failed") or "none recorded"
            return JSONResponse(
                {
                    **base,
                    "detail": f"run {run_id!r} of DAG {dag_id!r} failed (failed tasks: {names})",
                    "failed_tasks": failed,
                },
                status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            )
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        dag = DBDagBag().get_dag_for_run(run, session=session) if run is not None else None
        if dag is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"DAG {dag_id!r} of run {run_id!r} not found")
        try:
            task_id, output = results.result_output(session, dag, dag_id, run_id)
        except results.AmbiguousResultError as exc:
            raise HTTPException(
                status.HTTP_409_CONFLICT, {"message": str(exc), "dag_run_id": run_id, "leaves": exc.leaves}
            ) from exc
        except results.NoResultError:
            return JSONResponse({**base, "output": None, "result_task_id": None})
        return JSONResponse({**base, "output": output, "result_task_id": task_id})


async def _answer(request: Request, dag_id: str, run_id: str, state: str | None) -> JSONResponse:
    if state is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} of DAG {dag_id!r} not found")
    if state in ("success", "failed"):
        return await run_in_threadpool(_finished_answer, dag_id, run_id, state)
    poll_url = str(request.url_for("get_run", dag_id=dag_id, run_id=run_id))
    return JSONResponse(
        {"dag_id": dag_id, "dag_run_id": run_id, "state": state, "poll_url": poll_url},
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": poll_url},
    )


@app.post(
    "/runWorkflow/{dag_id}",
    dependencies=[Depends(requires_access_dag(method="POST", access_entity=DagAccessEntity.RUN))],
    responses={202: {"description": "still running at the timeout; poll poll_url"}},
)
async def run_workflow(
    dag_id: str, body: RunWorkflowBody, user: GetUserDep, request: Request
) -> JSONResponse:
    """Trigger ``dag_id`` with ``conf={"data": input}`` and answer its output (see module doc)."""
    timeout = body.timeout if body.timeout is not None else float(config.get("gateway_timeout_seconds"))
    run_id = await run_in_threadpool(_trigger, dag_id, body, user)
    state = await wait_for_run(dag_id, run_id, timeout)
    return await _answer(request, dag_id, run_id, state)


@app.get(
    "/runs/{dag_id}/{run_id}",
    name="get_run",
    dependencies=[Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))],
)
async def get_run(
    dag_id: str,
    run_id: str,
    user: GetUserDep,
    request: Request,
    wait: Annotated[
        float, Query(ge=0, le=MAX_TIMEOUT_SECONDS, description="Seconds to wait for the end")
    ] = 0,
) -> JSONResponse:
    """The result of a run started through the gateway (or any other way): 200, 202 or 500."""
    await run_in_threadpool(_authorize, user, dag_id, "GET", DagAccessEntity.XCOM, "read the results of DAG")
    state = await wait_for_run(dag_id, run_id, wait)
    return await _answer(request, dag_id, run_id, state)


def describe() -> dict[str, Any]:
    """What the plugin registers (used by the plugin and in logs)."""
    return {"app": app, "url_prefix": "/knative", "name": "Knative gateway"}
