"""A fleet of real edge agents (`edge_agent.Agent`) in one process, on real time, for the
reliability benchmark: each device classifies a batch of its own Fashion-MNIST stream every
`--period` seconds, sends labels back for some of them, and turns its agent loop (telemetry
windows, sketches, outbox drain, assignment, installs). The benchmark kills this process with
kill -9 and starts it again on the same state folders.

    python -m benchmarks.faults.fleet --root DIR --server URL --devices d1,d2,...

Every record an agent puts in its outbox is also written to a journal (`<root>/journal/<device>.log`,
`<unix time> <kind> <id>` per line, telemetry by UUID, sketches by their seq), after the outbox's
own durable write. On start the outbox is scanned and what it holds is journaled too, so a kill
between the two writes loses no journal line: the journal is everything the devices produced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import IO

import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import AgentSettings, load_settings
from edge_agent.fsutil import atomic_write_json
from edge_agent.outbox import Outbox, OutboxRecord
from qsae_shared.distributions import DeviceProfile, Phase
from qsae_shared.sketch import SketchLimits, parse_sketch

logger = logging.getLogger(__name__)

STATUS_FILE = "fleet-status.json"


def record_id(kind: str, payload: bytes) -> str:
    """The identity of an outbox record: a telemetry record's or event's UUID, a sketch's seq."""
    if kind == "sketch":
        return str(parse_sketch(payload, SketchLimits(max_bytes=len(payload) + 1)).seq)
    return str(json.loads(payload)["uuid"])


class JournaledOutbox(Outbox):
    """The agent's outbox, plus one journal line per appended record."""

    def __init__(self, root: Path, journal: IO[str], max_records: int, max_bytes: int) -> None:
        super().__init__(root, max_records, max_bytes)
        self.journal = journal
        self._journal_lock = threading.Lock()
        for r in self.pending():  # what an earlier process put here (perhaps unjournaled)
            self._note(r.kind, r.read())

    def _note(self, kind: str, payload: bytes) -> None:
        with self._journal_lock:
            self.journal.write(f"{time.time():.3f} {kind} {record_id(kind, payload)}\n")
            self.journal.flush()  # in the page cache: survives kill -9 of this process

    def append(self, kind: str, payload: bytes) -> OutboxRecord:
        record = super().append(kind, payload)
        self._note(kind, payload)
        return record


def agent_settings(state_dir: Path, server_url: str) -> AgentSettings:
    return load_settings(None, state_dir=state_dir, server_url=server_url, telemetry_interval_s=1.0,
                         sketch_interval_s=2.0, sketch_min_inferences=64, sketch_max_bytes=32 * 1024,
                         sketch_in_background=False, backoff_base_s=0.5, backoff_max_s=4.0, request_timeout_s=10.0,
                         poll_interval_s=2.0, telemetry_batch=100, recent_inputs=64, max_install_attempts=3)


def profile(index: int, device: str) -> DeviceProfile:
    rng = np.random.default_rng(index)
    weights = tuple(float(w) for w in rng.dirichlet(np.full(10, 0.7)))
    return DeviceProfile(device, (Phase(10**9, weights),), seed=index)


def run_device(agent: Agent, prof: DeviceProfile, period_s: float, batch: int, stop: threading.Event) -> None:
    stream = prof.stream("test", role="stream")
    rng = np.random.default_rng(prof.seed + 1000)
    while not stop.is_set():
        try:
            if agent.runtime.model is not None:
                b = stream.next_batch(batch)
                p = agent.predict(b.images)
                chosen = rng.random(len(p.ids)) < 0.5
                agent.feedback(p.ids[chosen], b.labels[chosen])
            agent.tick()
        except Exception:  # the loop must survive anything, like the daemon's
            logger.exception("device %s: error in the loop", agent.device_id)
        stop.wait(period_s)


def write_status(root: Path, agents: dict[str, Agent]) -> None:
    doc = {name: {"device_id": a.device_id, "outbox": len(a.outbox), "dropped": a.outbox.dropped,
                  "version": a.runtime.version, "last_error": a.last_error}
           for name, a in agents.items()}
    atomic_write_json(root / STATUS_FILE, {"at": time.time(), "pid": os.getpid(), "devices": doc}, durable=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="folder of the agents' state folders")
    parser.add_argument("--server", required=True, help="control plane URL the agents talk to")
    parser.add_argument("--devices", required=True, help="comma-separated state folder names")
    parser.add_argument("--period", type=float, default=0.25, help="seconds between two batches of a device")
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    journal_dir = args.root / "journal"
    journal_dir.mkdir(parents=True, exist_ok=True)
    agents: dict[str, Agent] = {}
    journals = []
    for name in args.devices.split(","):
        settings = agent_settings(args.root / name, args.server)
        agent = Agent(settings)
        journal = open(journal_dir / f"{name}.log", "a")  # noqa: SIM115 - open for the process's life
        journals.append(journal)
        agent.outbox = JournaledOutbox(settings.state_dir / "outbox", journal, settings.outbox_max_records,
                                       settings.outbox_max_bytes)
        agents[name] = agent
    threads = [threading.Thread(target=run_device, name=f"device-{name}", daemon=True,
                                args=(a, profile(i, name), args.period, args.batch, stop))
               for i, (name, a) in enumerate(agents.items())]
    for t in threads:
        t.start()
    while not stop.wait(0.5):
        write_status(args.root, agents)
    for t in threads:
        t.join(30)
    for a in agents.values():
        a.close()
    write_status(args.root, agents)
    for j in journals:
        j.close()


if __name__ == "__main__":
    main()
