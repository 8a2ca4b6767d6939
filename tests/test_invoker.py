"""The retry decisions of one invocation (``invoker.call_flow``), driven without any I/O.

The flow is a generator: it yields what to do (send a request, wait) and is told what
happened. Here the "network" is a script of outcomes and the clock is fake, so every rule of
the at-most-once policy is checked exactly, including the timing of backoff and deadlines.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from airflow_provider_knative import protocol
from airflow_provider_knative.errors import (
    InvocationTimeout,
    OutcomeUnknownError,
    ServiceUnavailableError,
)
from airflow_provider_knative.invoker import (
    BACKOFF_CAP_SECONDS,
    FailureKind,
    Request,
    Response,
    RetrySchedule,
    Send,
    Timeouts,
    TransportFailure,
    Wait,
    call_flow,
    not_started,
)

URL = "http://svc.ns.svc.cluster.local/invoke"
ID = "dag/manual__1/task/-1/1"
TIMEOUTS = Timeouts(1.0, 60.0, 10.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _protocol_error(status: int, type_: str) -> Response:
    body = protocol.Result("error", error=protocol.RemoteError(type_, "msg")).encode()
    return Response(status, protocol.CONTENT_TYPE, body)


def _ok(value: object = 42) -> Response:
    return Response(200, protocol.CONTENT_TYPE, protocol.Result("ok", value=value).encode())


def _text(status: int, text: str) -> Response:
    return Response(status, "text/plain", text.encode())


NOT_SENT = TransportFailure(FailureKind.NOT_SENT, "ConnectError: [Errno 111] Connection refused")
BROKEN = TransportFailure(FailureKind.BROKEN, "RemoteProtocolError: Server disconnected")
TIMEOUT = TransportFailure(FailureKind.TIMEOUT, "ReadTimeout")


def _not_started(status: int, next_attempt: int) -> Response:
    body = protocol.Result(
        "not_started", error=protocol.RemoteError("NotStarted", "void"), next_attempt=next_attempt
    ).encode()
    return Response(status, protocol.CONTENT_TYPE, body)


def drive(
    outcomes: Iterable[Response | TransportFailure],
    *,
    request: Request | None = None,
    idempotent: bool = False,
    probe_first: bool = False,
    timeouts: Timeouts = TIMEOUTS,
    clock: FakeClock | None = None,
) -> tuple[list[Send | Wait], Response]:
    """Run the flow over scripted outcomes; returns the steps it took and its answer."""
    clock = clock or FakeClock()
    flow = call_flow(
        request or Request(URL, b"body", invocation_id=ID),
        timeouts,
        idempotent=idempotent,
        probe_first=probe_first,
        clock=clock,
        rng=lambda: 1.0,
    )
    script = iter(outcomes)
    steps: list[Send | Wait] = []
    outcome = None
    while True:
        try:
            step = flow.send(outcome)
        except StopIteration as done:
            return steps, done.value
        steps.append(step)
        if isinstance(step, Wait):
            clock.now += step.seconds
            outcome = None
        else:
            outcome = next(script)


def _sends(steps: list[Send | Wait]) -> list[tuple[str, str]]:
    return [(s.request.method, s.request.url) for s in steps if isinstance(s, Send)]


def test_schedule_backs_off_exponentially_with_jitter_until_the_deadline() -> None:
    clock = FakeClock()
    draws = iter([0.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    schedule = RetrySchedule(URL, 12.0, clock=clock, rng=lambda: next(draws))
    delays = []
    for _ in range(7):
        schedule.attempt()
        delays.append(schedule.failed("HTTP 503"))
        clock.now += delays[-1]
    # base 0.1 s doubling, times 0.5..1.0 jitter, capped at 5 s and at the time left
    assert delays[:4] == pytest.approx([0.05, 0.2, 0.3, 0.8])
    assert delays[4:6] == pytest.approx([1.6, 3.2])
    assert delays[6] == pytest.approx(min(BACKOFF_CAP_SECONDS, 12.0 - sum(delays[:6])))
    clock.now = 1000.0 + 12.0
    schedule.attempt()
    with pytest.raises(ServiceUnavailableError) as err:
        schedule.failed("HTTP 503")
    assert "8 attempt(s) over 12.0 s" in str(err.value) and "startup deadline 12 s" in str(err.value)


def test_connection_refused_is_sent_again_then_the_answer_is_returned() -> None:
    steps, answer = drive([NOT_SENT, NOT_SENT, _ok()])
    assert _sends(steps) == [("POST", URL)] * 3
    assert [round(s.seconds, 3) for s in steps if isinstance(s, Wait)] == [0.1, 0.2]
    assert answer.status == 200


def test_runtime_not_ready_and_gateway_overload_are_sent_again() -> None:
    steps, answer = drive(
        [
            _protocol_error(503, "NotReady"),
            _protocol_error(503, "ShuttingDown"),
            _text(503, "no healthy upstream"),
            _ok(),
        ]
    )
    assert _sends(steps) == [("POST", URL)] * 4 and answer.status == 200


@pytest.mark.parametrize(
    "outcome",
    [
        BROKEN,
        _text(502, "Bad Gateway"),
        _text(504, "upstream request timeout"),
        _text(
            503,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        ),
    ],
    ids=["connection-broke", "502", "504", "503-reset"],
)
def test_a_call_that_may_have_started_is_asked_about_not_sent_again(outcome) -> None:
    status = f"http://svc.ns.svc.cluster.local/invocations/{ID.replace('/', '%2F')}?wait=30"
    steps, answer = drive([outcome, Response(202, protocol.CONTENT_TYPE, b""), _ok(7)])
    assert _sends(steps) == [("POST", URL), ("GET", status), ("GET", status)]
    assert answer.status == 200


def test_unknown_invocation_fails_the_try_and_says_why() -> None:
    with pytest.raises(OutcomeUnknownError) as err:
        drive([BROKEN, _protocol_error(404, protocol.UNKNOWN_INVOCATION)])
    text = str(err.value)
    assert ID in text and "never runs twice" in text and "idempotent=True" in text
    assert "Server disconnected" in text


def test_a_plain_service_call_that_broke_is_never_sent_again() -> None:
    request = Request("http://svc/api", b"{}", content_type="application/json")
    with pytest.raises(OutcomeUnknownError, match="keeps no record"):
        drive([BROKEN, _ok()], request=request)


def test_idempotent_calls_are_sent_again_after_a_break() -> None:
    steps, answer = drive([BROKEN, _text(504, "timeout"), _ok()], idempotent=True)
    assert _sends(steps) == [("POST", URL)] * 3 and answer.status == 200


def test_a_read_timeout_is_final() -> None:
    with pytest.raises(InvocationTimeout, match="did not answer within 60 s"):
        drive([TIMEOUT, _ok()])


def test_asking_keeps_trying_while_the_pod_is_away_then_reports_unknown() -> None:
    """The pod died mid-call: asking finds nobody until the deadline, then the try fails."""
    clock = FakeClock()
    with pytest.raises(OutcomeUnknownError, match="did not become available"):
        drive([BROKEN, *[NOT_SENT] * 200], clock=clock)
    assert clock.now - 1000.0 == pytest.approx(10.0, abs=0.01)  # one startup deadline of asking


def test_final_answers_are_returned_as_they_are() -> None:
    for response in (_protocol_error(500, "ValueError"), _protocol_error(409, "SourceHashMismatch"), _ok()):
        steps, answer = drive([response])
        assert answer is response and len(steps) == 1


def test_not_started_reads_protocol_errors_and_gateway_texts() -> None:
    assert not_started(_protocol_error(503, "NotReady"))
    assert not not_started(_protocol_error(503, "ValueError"))
    assert not_started(_text(503, "Service Unavailable: overload"))
    assert not not_started(_text(503, "upstream reset: reset reason: connection termination"))
    assert not not_started(_text(502, "Bad Gateway"))
    assert not not_started(_ok())


def test_every_attempt_is_signed_afresh() -> None:
    request = Request(URL, b"body", secret=b"s")
    first, second = request.headers(), request.headers()
    assert first[protocol.SIGNATURE_HEADER] != second[protocol.SIGNATURE_HEADER]
    status = request.status_request(30).headers()
    assert status[protocol.SIGNATURE_HEADER] and "Content-Type" not in status


STATUS = f"http://svc.ns.svc.cluster.local/invocations/{ID.replace('/', '%2F')}"


def test_an_attempt_the_record_declared_void_is_sent_again_as_the_next_attempt() -> None:
    """The connection broke, the status query found no claim and voided attempt 1: the call is
    sent again, as attempt 2 (signed for that path), and that answer is the outcome."""
    steps, answer = drive([BROKEN, _not_started(404, 2), _ok(5)])
    assert _sends(steps) == [("POST", URL), ("GET", f"{STATUS}?wait=30"), ("POST", f"{URL}?attempt=2")]
    assert answer.status == 200
    second = [s.request for s in steps if isinstance(s, Send)][2]
    assert second.attempt == 2 and second.body == b"body"


def test_a_late_copy_refused_as_void_is_resent_and_asked_about_as_its_attempt() -> None:
    steps, answer = drive([_not_started(409, 3), BROKEN, Response(202, protocol.CONTENT_TYPE, b""), _ok()])
    assert _sends(steps) == [
        ("POST", URL),
        ("POST", f"{URL}?attempt=3"),
        ("GET", f"{STATUS}?wait=30&attempt=3"),
        ("GET", f"{STATUS}?wait=30&attempt=3"),
    ]
    assert answer.status == 200


def test_a_restored_call_asks_before_it_sends_and_follows_a_running_one() -> None:
    steps, answer = drive([Response(202, protocol.CONTENT_TYPE, b""), _ok(9)], probe_first=True)
    assert _sends(steps) == [("GET", f"{STATUS}?wait=0&probe=1"), ("GET", f"{STATUS}?wait=30")]
    assert answer.status == 200


def test_a_restored_call_that_never_started_is_sent() -> None:
    steps, answer = drive([_not_started(404, 1), _ok()], probe_first=True)
    assert _sends(steps) == [("GET", f"{STATUS}?wait=0&probe=1"), ("POST", URL)]
    finished, answer = drive([_protocol_error(500, "ValueError")], probe_first=True)
    assert answer.status == 500 and len(_sends(finished)) == 1  # it ran: its outcome, not a resend


def test_an_idempotent_call_whose_pod_went_away_runs_again_as_a_new_attempt() -> None:
    steps, answer = drive([BROKEN, _protocol_error(500, protocol.ABANDONED), _ok()], idempotent=True)
    assert _sends(steps)[-1] == ("POST", f"{URL}?attempt=2") and answer.status == 200
    steps, answer = drive([_protocol_error(500, protocol.ABANDONED)])
    assert answer.status == 500  # not idempotent: the definite failure is the answer


def test_a_record_that_cannot_be_read_is_the_only_unknown_left() -> None:
    with pytest.raises(OutcomeUnknownError, match="could not be read"):
        drive([BROKEN, *[_protocol_error(503, "RecordUnavailable")] * 200])


def test_a_store_outage_at_the_claim_is_retried_as_not_started() -> None:
    steps, answer = drive([_protocol_error(503, "StoreUnavailable")] * 3 + [_ok()])
    assert _sends(steps) == [("POST", URL)] * 4 and answer.status == 200
