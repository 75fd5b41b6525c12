"""The queue's job state machine and fal's status shapes (pure, no Ray)."""

from __future__ import annotations

import pytest

from serve_app.queue.state import TERMINAL, TRANSITIONS, InvalidTransition, Job, JobState, error_message, log_entry


def make_job(**kw: object) -> Job:
    fields: dict[str, object] = dict(request_id="r1", service="svc", path="/svc/x", payload={"a": 1},
                                     base_url="http://h/", response_url="http://h/queue/svc/requests/r1",
                                     created_at=100.0)
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


def test_transition_table_is_closed_and_terminal_states_are_final() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
    assert TRANSITIONS[JobState.QUEUED] == {JobState.RUNNING, JobState.CANCELLED}


def test_happy_path_records_timestamps_attempts_and_fal_shapes() -> None:
    job = make_job()
    queued = job.status_view(with_logs=True, queue_position=3)
    assert queued["status"] == "IN_QUEUE" and queued["queue_position"] == 3 and "logs" not in queued
    assert queued["status_url"] == job.response_url + "/status" and queued["cancel_url"] == job.response_url + "/cancel"

    job.start("w1", "r1", now=101.0)
    assert (job.state, job.attempt, job.worker_id, job.started_at) == (JobState.RUNNING, 1, "w1", 101.0)
    job.add_logs([log_entry("step 1/2", 101.5)])
    assert job.status_view(with_logs=False)["logs"] is None
    running = job.status_view(with_logs=True)
    assert running["status"] == "IN_PROGRESS" and running["logs"][0]["message"] == "step 1/2"
    assert set(running["logs"][0]) == {"message", "level", "source", "timestamp"}
    assert running["logs"][0]["timestamp"].endswith("Z")

    job.succeed({"out": 1}, billable_units=2.0, inference_time=0.5, now=102.0)
    done = job.status_view(with_logs=False)
    assert done["status"] == "COMPLETED" and done["logs"] is None
    assert done["metrics"] == {"inference_time": 0.5}
    assert done["error"] is None and done["error_type"] is None
    assert (job.finished_at, job.status_code, job.result, job.worker_id) == (102.0, 200, {"out": 1}, None)


def test_failure_and_cancellation_complete_with_error_fields() -> None:
    failed = make_job()
    failed.start("w", "r1", 1.0)
    detail = [{"loc": ["body", "steps"], "msg": "bad", "type": "value_error"}]
    failed.fail(422, detail, "validation_error", 0.1, 2.0)
    view = failed.status_view(False)
    assert view["status"] == "COMPLETED" and view["error"] == "Invalid status code: 422"
    assert view["error_type"] == "validation_error" and failed.result == detail

    queued = make_job()
    queued.cancel(None, 3.0)
    view = queued.status_view(False)
    assert queued.status_code == 499 and view["error_type"] == "request_cancelled"
    assert view["error"] == "Request cancelled by the client." and view["metrics"] == {}


@pytest.mark.parametrize(("prepare", "target"), [
    ((), "succeed"),
    (("start", "succeed"), "start"),
    (("cancel",), "requeue"),
])
def test_disallowed_transitions_raise(prepare: tuple[str, ...], target: str) -> None:
    job = make_job()
    calls = {
        "start": lambda: job.start("w", "g", 1.0),
        "succeed": lambda: job.succeed({}, 1.0, 0.1, 2.0),
        "cancel": lambda: job.cancel(None, 2.0),
        "requeue": lambda: job.requeue("lost", 2.0),
    }
    for step in prepare:
        calls[step]()
    with pytest.raises(InvalidTransition):
        calls[target]()


def test_requeue_keeps_the_attempt_count_and_logs_why() -> None:
    job = make_job()
    job.start("w", "r1", 1.0)
    job.requeue("runner lost", 2.0)
    assert job.state == JobState.QUEUED and job.worker_id is None and job.attempt == 1
    assert "attempt 2" in job.logs[-1]["message"] and job.logs[-1]["level"] == "WARN"
    job.start("w2", "g2", 3.0)
    assert job.attempt == 2 and job.gateway_request_id == "g2"


def test_logs_are_capped_but_counted_and_records_round_trip() -> None:
    job = make_job()
    job.add_logs([log_entry(str(i), 1.0) for i in range(7)], max_logs=5)
    assert [e["message"] for e in job.logs] == ["2", "3", "4", "5", "6"] and job.log_total == 7
    again = Job.from_record(job.to_record())
    assert again == job and isinstance(again.state, JobState)


def test_error_message_prefers_text_detail() -> None:
    assert error_message(500, "Internal Server Error") == "Internal Server Error"
    assert error_message(422, [{"msg": "x"}]) == "Invalid status code: 422"
