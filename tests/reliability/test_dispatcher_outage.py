"""The dispatcher rides out a lost database: claims, results and completions wait for it to come
back instead of killing the process (which left its jobs `running` until their lease expired).
The reliability benchmark's `postgres_restart` scenario runs this for real."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from sqlalchemy.exc import OperationalError

from workers.dispatcher import Dispatcher, DispatcherConfig, _Inflight, db_unavailable


def lost_connection() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


class FlakyStore:
    """The jobs table while the database restarts: the first calls fail with a lost connection."""

    def __init__(self, failures: dict[str, int]) -> None:
        self.failures = dict(failures)
        self.queue = [SimpleNamespace(id=1, kind="retrain", device_id="d-1")]
        self.completed: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self.settings = SimpleNamespace(state_dir=".")

    def _maybe_fail(self, what: str) -> None:
        if self.failures.get(what, 0) > 0:
            self.failures[what] -= 1
            raise lost_connection()

    def claim_next_job(self, worker: str, kinds: Any = None) -> Any:
        self._maybe_fail("claim")
        return self.queue.pop(0) if self.queue else None

    def complete_job(self, job_id: int, **_: Any) -> None:
        self._maybe_fail("complete")
        self.completed.append(job_id)

    def fail_job(self, job_id: int, error: str, retry: bool = True) -> None:
        self._maybe_fail("fail")
        self.failed.append((job_id, error))

    def update_job_progress(self, job_id: int, progress: float, message: str = "") -> None:
        self._maybe_fail("progress")

    def wait_for_work(self, timeout_s: float) -> bool:
        time.sleep(timeout_s)
        return False


class FakeRay:
    def wait(self, refs: list[Any], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        return refs[:1], refs[1:]

    def get(self, ref: Any) -> dict[str, Any]:
        return {"metrics": {"kl": 0.01}}


class SmallDispatcher(Dispatcher):
    """The real loop; submitting and recording are reduced to their database calls."""

    def _submit(self, job: Any) -> None:
        self.inflight[f"ref-{job.id}"] = _Inflight(job, f"ref-{job.id}", time.monotonic(), {}, 0.0)

    def _finish_retrain(self, job: Any, result: dict[str, Any], ctx: dict[str, Any]) -> None:
        self.store.complete_job(job.id, result=result)


def run_until_complete(store: FlakyStore, tmp_path: Any) -> SmallDispatcher:
    d = SmallDispatcher(store, tracker=None, config=DispatcherConfig(poll_s=0.01, heartbeat_s=0.0),
                        models_dir=tmp_path)
    d.ray = FakeRay()
    stop, errors = threading.Event(), []

    def loop() -> None:
        try:
            d.run(stop)
        except Exception as exc:  # what used to end the process
            errors.append(exc)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not store.completed and not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(5)
    assert not errors, f"the dispatcher died: {errors}"
    return d


def test_a_lost_database_is_waited_out_and_the_result_is_recorded_once(tmp_path) -> None:
    store = FlakyStore({"claim": 2, "progress": 1, "complete": 3})
    d = run_until_complete(store, tmp_path)
    assert store.completed == [1]  # the result survived three failed attempts to record it
    assert store.failed == []  # and the job was not failed for the database's sake
    assert not d.inflight


def test_other_errors_still_fail_the_job_with_their_reason(tmp_path) -> None:
    store = FlakyStore({})

    class Broken(SmallDispatcher):
        def _finish_retrain(self, job: Any, result: dict[str, Any], ctx: dict[str, Any]) -> None:
            raise ValueError("manifest without files")

    d = Broken(store, tracker=None, config=DispatcherConfig(poll_s=0.01), models_dir=tmp_path)
    d.ray = FakeRay()
    d._claim_up_to_capacity()
    f = next(iter(d.inflight.values()))
    d._finish(f)
    assert store.failed and "manifest without files" in store.failed[0][1]
    assert db_unavailable(lost_connection()) and not db_unavailable(ValueError("x"))
