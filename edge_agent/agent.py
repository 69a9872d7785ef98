"""The device daemon: one loop that heartbeats, fetches the desired state, reconciles it and
drains the outbox, waiting on a stop event in between (so shutdown never sits out a backoff).

The application on the device calls `Agent.predict` / `Agent.feedback` from its own threads;
everything that talks to the server runs in the loop's thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from edge_agent.backoff import Backoff
from edge_agent.client import Assignment, FleetClient
from edge_agent.config import AgentSettings
from edge_agent.errors import RejectedError, RetryableError
from edge_agent.fsutil import atomic_write_json
from edge_agent.outbox import Outbox, OutboxRecord
from edge_agent.runtime import Predictions, Runtime
from edge_agent.state import ASSIGNMENT, Counters, Credentials, RejectionLog, load_credentials
from edge_agent.store import ModelStore
from edge_agent.telemetry import WindowSummary
from edge_agent.updater import Updater
from qsae_shared.sketch import SketchBuilder

logger = logging.getLogger(__name__)

EVENTS_PER_POST = 100
MAX_REQUESTS_PER_DRAIN = 50  # then the loop turns again (assignment, flushes) before sending more
MAX_REASON = 1000  # characters of an event reason the server accepts


class Agent:
    def __init__(self, settings: AgentSettings, credentials: Credentials | None = None, *,
                 clock: Callable[[], float] = time.time, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.creds = credentials or load_credentials(self.state_dir)
        self.device_id = self.creds.device_id
        self.clock = clock
        # the URL enrolled with, unless the settings name one explicitly (file, environment, keyword)
        self.server_url = settings.server_url if "server_url" in settings.model_fields_set else self.creds.server_url
        self.client = FleetClient(self.server_url, self.creds.device_token, settings.request_timeout_s, transport)
        self.outbox = Outbox(self.state_dir / "outbox", settings.outbox_max_records, settings.outbox_max_bytes)
        self.counters = Counters(self.state_dir)
        self.rejections = RejectionLog(self.state_dir)
        self.store = ModelStore(self.state_dir)
        self.runtime = Runtime(self.device_id, self.creds.base_model, sketch_max_bytes=settings.sketch_max_bytes,
                               recent_inputs=settings.recent_inputs, pending_labels=settings.pending_labels,
                               sketch_in_background=settings.sketch_in_background, clock=clock)
        self.updater = Updater(self.device_id, self.creds.base_model, self.creds.signing_keys, self.store,
                               self.runtime, self.client, self.emit_event, self._store_flushed,
                               settings.max_install_attempts, settings.intra_op_threads)
        self.backoff = Backoff(settings.backoff_base_s, settings.backoff_max_s)
        self.poll_interval_s = settings.poll_interval_s or self.creds.poll_interval_s
        self.assignment: Assignment | None = None
        self.last_error: str | None = None  # the last failure talking to the server
        self.last_sync: float | None = None  # the last time a whole loop turn succeeded
        self._net_ready_at = 0.0  # no request before this time (backoff)
        self._next_poll = 0.0
        self.polls_unchanged = 0  # assignment polls whose state had not changed since the last answer
        self.polls_not_modified = 0  # ... of which the server answered 304 (P7: all of them)
        self._window_started = clock()
        self.updater.load_current()

    # ----- the application's API -----

    def predict(self, images: np.ndarray, preprocessed: bool = False) -> Predictions:
        return self.runtime.predict(images, preprocessed)

    def feedback(self, ids: np.ndarray, labels: np.ndarray) -> int:
        return self.runtime.feedback(ids, labels)

    # ----- records into the outbox -----

    def emit_event(self, kind: str, version_id: str | None, reason: str) -> None:
        event = {"uuid": str(uuid.uuid4()), "kind": kind, "version_id": version_id, "reason": reason[:MAX_REASON],
                 "at": self.clock()}
        self.outbox.append("event", json.dumps(event).encode())
        logger.info("device_id=%s model_version=%s event %s: %s", self.device_id, version_id, kind, reason)

    def _store_window(self, window: WindowSummary) -> None:
        seq = self.counters.reserve("telemetry")
        record = window.to_record(str(uuid.uuid4()), seq, self.outbox.dropped)
        self.outbox.append("telemetry", json.dumps(record).encode())

    def _store_sketch(self, builder: SketchBuilder) -> None:
        builder.seq = self.counters.reserve("sketch")
        self.outbox.append("sketch", builder.emit())

    def _store_flushed(self, flushed: tuple[WindowSummary | None, SketchBuilder | None]) -> None:
        window, builder = flushed
        if window is not None:
            self._store_window(window)
        if builder is not None:
            self._store_sketch(builder)
        self._window_started = self.clock()

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Close the telemetry window and the sketch when they are due (or now, with `force`)."""
        now = self.clock() if now is None else now
        s = self.settings
        if force or now - self._window_started >= s.telemetry_interval_s:
            window = self.runtime.close_window()
            if window is None:  # an idle window still makes a record: it is the device's heartbeat
                window = WindowSummary(self._window_started, now, 0, 0, 0, None, None, None, None,
                                       self.runtime.version)
            self._window_started = now
            self._store_window(window)
        n = self.runtime.sketch_inferences
        if n and (force or (n >= s.sketch_min_inferences and now - self.runtime.sketch_started >= s.sketch_interval_s)):
            builder = self.runtime.take_sketch()
            if builder is not None:
                self._store_sketch(builder)

    # ----- the loop -----

    def tick(self, now: float | None = None) -> None:
        """One turn: flush due windows, judge a version on probation, then (unless backing off)
        drain the outbox, fetch the assignment (the heartbeat) and reconcile."""
        now = self.clock() if now is None else now
        self.flush(now)
        self.updater.check_probation()
        if now < self._net_ready_at:
            return
        try:
            self.drain()
            if now >= self._next_poll:
                self._poll(now)
            self.updater.reconcile(self.assignment, now)
            self.drain()
        except (RetryableError, RejectedError) as exc:
            retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
            if isinstance(exc, RejectedError):  # 401 and the like: keep everything, wait long
                retry_after = self.settings.backoff_max_s
            delay = self.backoff.next_delay(retry_after)
            self._net_ready_at = now + delay
            self.last_error = str(exc)
            logger.warning("device_id=%s server unavailable (%s); next try in %.1f s", self.device_id, exc, delay)
            return
        self.backoff.reset()
        self.last_error = None
        self.last_sync = now

    def _poll(self, now: float) -> None:
        wait = self.settings.long_poll_s
        if wait:  # do not hold a telemetry flush back for the long-poll
            wait = max(0.0, min(wait, self._window_started + self.settings.telemetry_interval_s - now))
        etag = self.assignment.etag if self.assignment else None
        assignment = self.client.get_assignment(self.device_id, etag, wait)
        self._next_poll = now + (0.0 if self.settings.long_poll_s else self.poll_interval_s)
        if etag is not None and (assignment is None or assignment.etag == etag):
            self.polls_unchanged += 1  # asked with the current ETag and nothing had changed
            self.polls_not_modified += assignment is None
        if assignment is not None:
            self.assignment = assignment
            atomic_write_json(self.state_dir / ASSIGNMENT,
                              {"desired_version": assignment.desired_version, "reason": assignment.reason,
                               "etag": assignment.etag, "received_at": now}, durable=False)

    def drain(self, max_requests: int = MAX_REQUESTS_PER_DRAIN) -> int:
        """Send outbox records oldest first, deleting each once acknowledged; returns how many were
        sent. A record the server refuses for good (4xx) is dropped and its reason logged."""
        sent = 0
        for _ in range(max_requests):
            batch = self._head_batch()
            if not batch:
                break
            try:
                sent += self._send(batch)
            except RejectedError as exc:
                if exc.status_code == 401:
                    raise
                for record in batch:  # find the culprit(s): send one at a time
                    try:
                        sent += self._send([record])
                    except RejectedError as one:
                        if one.status_code == 401:
                            raise
                        self.rejections.add(record.kind, one.status_code, one.reason, record.path.name)
                        self.outbox.delete([record])
                        logger.error("device_id=%s dropped %s record %s refused by the server: HTTP %d %s",
                                     self.device_id, record.kind, record.path.name, one.status_code, one.reason)
        return sent

    def _head_batch(self) -> list[OutboxRecord]:
        head = self.outbox.pending(max(self.settings.telemetry_batch, EVENTS_PER_POST))
        if not head:
            return []
        kind = head[0].kind
        limit = {"telemetry": self.settings.telemetry_batch, "event": EVENTS_PER_POST, "sketch": 1}[kind]
        batch: list[OutboxRecord] = []
        for r in head:
            if r.kind != kind or len(batch) >= limit:
                break
            batch.append(r)
        return batch

    def _send(self, batch: list[OutboxRecord]) -> int:
        payloads: list[tuple[OutboxRecord, bytes]] = []
        for r in batch:
            try:
                payloads.append((r, r.read()))
            except FileNotFoundError:  # dropped to keep the outbox bounded while we were sending
                continue
        if not payloads:
            return 0
        kind = batch[0].kind
        if kind == "sketch":
            record, data = payloads[0]
            self.client.post_sketch(self.device_id, data)
            self.outbox.delete([record])
            return 1
        docs = [json.loads(p) for _, p in payloads]
        if kind == "telemetry":
            acked: set[Any] = self.client.post_telemetry(self.device_id, docs)
            done = [r for (r, _), d in zip(payloads, docs, strict=True) if d["seq"] in acked]
        else:
            acked = self.client.post_events(self.device_id, docs)
            done = [r for (r, _), d in zip(payloads, docs, strict=True) if d["uuid"] in acked]
        self.outbox.delete(done)
        if len(done) < len(payloads):
            raise RetryableError(f"server acknowledged {len(done)} of {len(payloads)} {kind} records")
        return len(done)

    def run(self, stop: threading.Event, tick_s: float = 1.0) -> None:
        """Turn the loop until `stop` is set; then store what is open and try one last drain."""
        logger.info("device_id=%s agent running against %s", self.device_id, self.server_url)
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must survive anything; the error is logged with its stack
                logger.exception("device_id=%s unexpected error in the agent loop", self.device_id)
            now = self.clock()
            wake = min(now + tick_s, max(self._net_ready_at, now + 0.01))
            stop.wait(max(0.0, wake - now))
        self.flush(force=True)
        if self.clock() >= self._net_ready_at:
            try:
                self.drain(max_requests=5)
            except (RetryableError, RejectedError) as exc:
                logger.info("device_id=%s %d records stay in the outbox (%s)", self.device_id, len(self.outbox), exc)

    def close(self) -> None:
        self.client.close()
        self.runtime.close()

    # ----- status -----

    def status(self) -> dict[str, Any]:
        return read_status(self.settings) | {"last_error": self.last_error or self.updater.last_error,
                                              "last_sync": self.last_sync}


def read_status(settings: AgentSettings) -> dict[str, Any]:
    """What `qsae-agent status` prints, from the state folder alone (the daemon need not run)."""
    from edge_agent.fsutil import read_json

    state = settings.state_dir
    creds = load_credentials(state)
    store = ModelStore(state, readonly=True)
    outbox = Outbox(state / "outbox", settings.outbox_max_records, settings.outbox_max_bytes, readonly=True)
    kinds: dict[str, int] = {}
    for r in outbox.pending():
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    pointer = store.pointer()
    rejections = RejectionLog(state)
    return {
        "device_id": creds.device_id, "server_url": creds.server_url, "base_model": creds.base_model,
        "current": pointer.current, "last_known_good": pointer.last_known_good,
        "probation": pointer.probation, "installed": store.installed(),
        "assignment": read_json(state / ASSIGNMENT),
        "blocked": {k: {"reason": v.reason, "final": v.final, "attempts": v.attempts}
                    for k, v in store.blocked().items()},
        "outbox": {"records": len(outbox), "bytes": outbox.size_bytes, "by_kind": kinds,
                   "dropped": outbox.dropped},
        "rejected_records": {"total": rejections.total, "recent": rejections.recent[-5:]},
    }


class BackgroundAgent:
    """Embed the agent in an application: the loop runs in a thread, the application calls
    `predict` / `feedback` on the returned agent.

        with BackgroundAgent(Agent(load_settings())) as agent:
            out = agent.predict(images)
    """

    def __init__(self, agent: Agent, tick_s: float = 1.0) -> None:
        self.agent = agent
        self.stop = threading.Event()
        self._thread = threading.Thread(target=agent.run, args=(self.stop, tick_s), daemon=True,
                                        name=f"qsae-agent-{agent.device_id}")

    def __enter__(self) -> Agent:
        self._thread.start()
        return self.agent

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join()
        self.agent.close()
