"""Reliability benchmark: faults injected one at a time into a running fleet while retrain jobs run.
Does QSAE Fleet lose or duplicate a record, or leave a job unfinished? (Target: 0 lost, 0
duplicated, every job completed, in every scenario.)

    python -m benchmarks.reliability [--quick] --json PATH

Everything is a real process on 127.0.0.1: its own throwaway Redis and PostgreSQL on free ports
(never the machine's shared ones), the control plane (`qsae-fleet serve`, uvicorn), the dispatcher
(`qsae-fleet worker`'s loop with a local Ray; a tiny CNN as base model so a retrain takes seconds),
and a fleet of real edge agents in a process of their own, talking to the control plane through a
small TCP proxy the benchmark controls. Each device classifies its own Fashion-MNIST stream and
sends telemetry (one record per second, each with a UUID) and activation sketches (every two
seconds, identified by their seq); every record is journaled as it enters the device's outbox.

Per scenario: the window opens, retrain jobs are submitted (operator API, re-prune) and the fault
is injected once one runs; the fault lasts `outage_s`; the fleet runs on for `after_s`; the window
closes. Then the benchmark waits (bounded) until every record produced in the window is in the
database and every job has finished. Faults:

  control_plane_kill  kill -9 of the control plane, restarted after the outage
  agent_kill          kill -9 of the agent fleet while an upload is in flight, restarted after the outage
  network_cut         the proxy resets every connection and refuses new ones for the outage
  redis_restart       kill -9 of Redis, restarted after the outage (empty: no persistence)
  postgres_restart    PostgreSQL stopped in immediate mode (a crash), started after the outage
  ray_worker_kill     kill -9 of the Ray worker process running a retrain task

Row keys: scenario, produced, stored, lost (produced in the window and not stored once settled;
records dropped from an outbox count here), duplicated (stored rows beyond one per telemetry UUID
or per sketch seq, and sketches stored twice by content), jobs_submitted, jobs_completed
(succeeded), recovery_s (from the end of the fault until every record produced before that
moment is stored and every job of the scenario has finished).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.faults import processes
from benchmarks.faults.fleet import STATUS_FILE, agent_settings
from benchmarks.faults.proxy import CutProxy
from benchmarks.faults.services import PostgresServer, RedisServer, free_port
from benchmarks.faults.worker import BASE_MODEL

logger = logging.getLogger("benchmarks.reliability")

SCENARIOS = ("control_plane_kill", "agent_kill", "network_cut", "redis_restart", "postgres_restart",
             "ray_worker_kill")
TERMINAL = ("succeeded", "failed", "cancelled")
ADMIN_KEY = f"qk_reliability_{uuid.uuid4().hex}"
CACHE_DIR = processes.ROOT / ".fleet" / "bench" / "reliability-cache"


@dataclass
class BenchConfig:
    devices: int = 6  # simulated agents (one process, one thread each)
    steady_s: float = 5.0  # normal operation at the start of a scenario's window (jobs submitted first)
    outage_s: float = 8.0  # how long a killed service stays down / the network stays cut
    after_s: float = 5.0  # normal operation after the fault, still inside the window
    jobs_per_scenario: int = 3  # retrain jobs submitted per scenario (devices in turn)
    settle_timeout_s: float = 180.0  # longest wait for every record and job after the window
    warmup_sketches: int = 3  # sketches every device has stored before the first scenario
    scenarios: tuple[str, ...] = SCENARIOS

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(devices=4, steady_s=3.0, outage_s=4.0, after_s=3.0, jobs_per_scenario=2)


@dataclass
class Row:
    scenario: str
    produced: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    jobs_submitted: int = 0
    jobs_completed: int = 0
    recovery_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # what was killed, in-flight uploads, per kind

    @property
    def at_target(self) -> bool:
        return (self.lost == 0 and self.duplicated == 0 and self.jobs_submitted >= 1
                and self.jobs_completed == self.jobs_submitted and self.detail.get("fault_injected", True))


class Ledger:
    """What the devices produced (their journals) against what the database holds."""

    def __init__(self, journal_dir: Path, names: dict[str, str], pg_url: str) -> None:
        self.journal_dir = journal_dir
        self.names = names  # journal name -> device id
        self.pg_url = pg_url

    def produced(self) -> dict[tuple[str, str, str], float]:
        """(kind, device id, record id) -> time it was first journaled (telemetry and sketches)."""
        out: dict[tuple[str, str, str], float] = {}
        for name, device_id in self.names.items():
            path = self.journal_dir / f"{name}.log"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) != 3 or parts[1] not in ("telemetry", "sketch"):
                    continue  # a torn last line of a killed writer, or an event
                key = (parts[1], device_id, parts[2])
                out.setdefault(key, float(parts[0]))
        return out

    def stored(self) -> tuple[Counter[tuple[str, str, str]], int]:
        """(rows per (kind, device id, record id), sketches stored more than once by content)."""
        import psycopg

        ids = list(self.names.values())
        rows: Counter[tuple[str, str, str]] = Counter()
        with psycopg.connect(self.pg_url, connect_timeout=3) as conn:
            for device_id, record in conn.execute("SELECT device_id, uuid FROM telemetry WHERE device_id = ANY(%s)",
                                                  (ids,)):
                rows[("telemetry", device_id, record)] += 1
            for device_id, seq in conn.execute("SELECT device_id, seq FROM sketches WHERE device_id = ANY(%s)",
                                               (ids,)):
                rows[("sketch", device_id, str(seq))] += 1
            same_content = conn.execute(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM sketches WHERE device_id = ANY(%s) "
                "GROUP BY device_id, sha256) AS t", (ids,)).fetchone()
        return rows, int(same_content[0] if same_content else 0)


class Harness:
    def __init__(self, cfg: BenchConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.work = workdir
        self.redis = RedisServer(workdir)
        self.pg = PostgresServer(workdir)
        self.cp_port = free_port()
        self.cp_url = f"http://127.0.0.1:{self.cp_port}"
        self.agents_root = workdir / "agents"
        self.names = [f"dev-{i:02d}" for i in range(cfg.devices)]
        self.device_ids: dict[str, str] = {}
        self.proxy: CutProxy | None = None
        self.cp: processes.Service | None = None
        self.dispatcher: processes.Service | None = None
        self.fleet: processes.Service | None = None
        self.http = httpx.Client(base_url=self.cp_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        self._next_device = 0
        self.ledger: Ledger | None = None

    # ----- set-up ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "QSAE_AGENT_"))}
        env.update({
            "FLEET_STATE_DIR": str(self.work / "state"), "FLEET_DATABASE_URL": self.pg.url,
            "FLEET_REDIS_URL": self.redis.url, "FLEET_REDIS_PREFIX": "qsae-rel:",
            "FLEET_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY, "FLEET_CALIBRATION_SIZE": "256", "FLEET_POLL_INTERVAL_S": "2",
            "FLEET_LOG_LEVEL": "INFO", "FLEET_DB_POOL_SIZE": "5", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
        return env

    def setup(self) -> None:
        t0 = time.monotonic()
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        self.pg.init()
        env = self.env()
        migrate = processes.Service("migrate", [sys.executable, "-m", "control_plane.cli", "db", "upgrade"], env,
                                    logs / "migrate.log")
        migrate.start()
        assert migrate.proc is not None
        if migrate.proc.wait(120) != 0:
            raise RuntimeError(f"db upgrade failed: see {logs / 'migrate.log'}")
        self.cp = processes.control_plane(env, self.cp_port, logs / "control-plane.log")
        self.cp.start()
        if not processes.wait_http(f"{self.cp_url}/readyz", 60):
            raise RuntimeError(f"control plane not ready: see {logs / 'control-plane.log'}")
        self.proxy = CutProxy(self.cp_port)
        for name in self.names:
            r = self.http.post("/api/v1/devices", json={"name": f"rel-{name}-{uuid.uuid4().hex[:6]}",
                                                        "labels": {"cohort": "reliability"}, "base_model": BASE_MODEL})
            r.raise_for_status()
            from edge_agent.enroll import enroll

            creds = enroll(agent_settings(self.agents_root / name, self.proxy.url), r.json()["enrollment_token"])
            self.device_ids[name] = creds.device_id
        self.ledger = Ledger(self.agents_root / "journal", self.device_ids, self.pg.url)
        self.dispatcher = processes.dispatcher(env, CACHE_DIR, logs / "dispatcher.log")
        self.dispatcher.start()
        self._enqueue_base()
        self.fleet = processes.fleet(env, self.agents_root, self.proxy.url, self.names, logs / "fleet.log")
        self.fleet.start()
        self._warm_up()
        logger.info("set up in %.0f s: %d devices on %s", time.monotonic() - t0, len(self.names), BASE_MODEL)

    def _enqueue_base(self) -> None:
        from control_plane.services import FleetStore
        from control_plane.settings import Settings

        with FleetStore(Settings(state_dir=self.work / "state", database_url=self.pg.url,
                                 redis_url=self.redis.url, redis_prefix="qsae-rel:")) as store:
            job, _ = store.enqueue_job(None, "train_base", f"base:{BASE_MODEL}", "reliability benchmark")
        job_doc = self._wait_jobs([job.id], timeout_s=600)[job.id]
        if job_doc["status"] != "succeeded":
            raise RuntimeError(f"the base job did not succeed: {job_doc.get('error')}")

    def _warm_up(self, timeout_s: float = 180.0) -> None:
        """Every device serves the base version and has stored a few sketches."""
        assert self.ledger is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            rows, _ = self.ledger.stored()
            per_device = Counter(d for (kind, d, _) in rows if kind == "sketch")
            if all(per_device[d] >= self.cfg.warmup_sketches for d in self.device_ids.values()):
                return
            time.sleep(1.0)
        raise RuntimeError(f"devices did not warm up within {timeout_s:.0f} s: {self._fleet_status()}")

    def _fleet_status(self) -> dict[str, Any]:
        try:
            return json.loads((self.agents_root / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _check_alive(self) -> None:
        if self.dispatcher is not None and self.dispatcher.alive():
            self.dispatcher.remember_tree()  # Ray's processes, to clean up after a crash
        for svc in (self.cp, self.dispatcher, self.fleet):
            if svc is not None and svc.proc is not None and not svc.alive():
                raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}: see {svc.log}")

    # ----- jobs -----------------------------------------------------------------------------
    def _submit_jobs(self, scenario: str) -> list[int]:
        ids = []
        for i in range(self.cfg.jobs_per_scenario):
            name = self.names[self._next_device % len(self.names)]
            self._next_device += 1
            r = self.http.post(f"/api/v1/devices/{self.device_ids[name]}/reprune",
                               headers={"Idempotency-Key": f"{scenario}-{i}"},
                               json={"reason": f"reliability benchmark: {scenario}"})
            r.raise_for_status()
            ids.append(int(r.json()["job"]["id"]))
        return ids

    def _jobs(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Job rows straight from the database (the API may be the thing that is down)."""
        import psycopg

        with psycopg.connect(self.pg.url, connect_timeout=3) as conn:
            cur = conn.execute("SELECT id, status, attempts, error FROM jobs WHERE id = ANY(%s)", (job_ids,))
            return {r[0]: {"status": r[1], "attempts": r[2], "error": r[3]} for r in cur}

    def _wait_jobs(self, job_ids: list[int], timeout_s: float) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        jobs: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            jobs = self._jobs(job_ids)
            if len(jobs) == len(job_ids) and all(j["status"] in TERMINAL for j in jobs.values()):
                break
            time.sleep(0.5)
        return jobs

    def _wait_running(self, job_ids: list[int], timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(j["status"] == "running" for j in self._jobs(job_ids).values()):
                return True
            time.sleep(0.05)
        return False

    # ----- faults ---------------------------------------------------------------------------
    def inject(self, scenario: str, job_ids: list[int]) -> tuple[float, dict[str, Any]]:
        """Inject one fault and heal it; returns (time it ended, details)."""
        assert self.cp and self.proxy and self.fleet and self.dispatcher
        out = self.cfg.outage_s
        detail: dict[str, Any] = {"job_running_at_fault": self._wait_running(job_ids)}
        if scenario == "control_plane_kill":
            detail["killed_pid"] = self.cp.pid
            self.cp.kill()
            time.sleep(out)
            self.cp.start()
            threading.Thread(target=self._time_readiness, args=(detail, time.time()), daemon=True).start()
        elif scenario == "agent_kill":
            # the worst moment: the server has stored an upload, its answer has not reached the agent
            self.proxy.hold_answers()
            detail["answer_withheld_at_kill"] = self.proxy.wait_withheld(15.0)
            detail["killed_pid"] = self.fleet.pid
            self.fleet.kill()
            self.proxy.release_answers()
            detail["outbox_records_at_kill"] = sum(
                1 for p in self.agents_root.glob("*/outbox/*") if p.suffix in (".telemetry", ".sketch", ".event"))
            time.sleep(out)
            self.fleet.start()
        elif scenario == "network_cut":
            detail["connections_reset"] = self.proxy.cut()
            time.sleep(out)
            detail["connections_refused"] = self.proxy.refused
            self.proxy.restore()
        elif scenario == "redis_restart":
            detail["killed_pid"] = self.redis.proc.pid if self.redis.proc else None
            self.redis.kill()
            time.sleep(out)
            self.redis.start()
        elif scenario == "postgres_restart":
            detail["killed_pid"] = self.pg.pid
            self.pg.crash()
            time.sleep(out)
            self.pg.start()
        elif scenario == "ray_worker_kill":
            pid = self._retrain_task_pid(timeout_s=60.0)
            detail["killed_pid"] = pid
            detail["killed_cmdline"] = processes.cmdline(pid) if pid else None
            if pid is None:
                detail["fault_injected"] = False  # no retrain was caught running: the row is not valid
            else:
                processes.kill_pids([pid])
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
        return time.time(), detail

    def _time_readiness(self, detail: dict[str, Any], restarted: float) -> None:
        ready = processes.wait_http(f"{self.cp_url}/readyz", 60)
        detail["ready_after_restart_s"] = round(time.time() - restarted, 2) if ready else None

    def _retrain_task_pid(self, timeout_s: float) -> int | None:
        """The Ray worker process executing a retrain task (a descendant of the dispatcher)."""
        assert self.dispatcher is not None and self.dispatcher.pid is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pid in self.dispatcher.remember_tree():
                if processes.cmdline(pid).startswith("ray::_retrain_task"):
                    return pid
            time.sleep(0.02)
        return None

    # ----- one scenario -----------------------------------------------------------------------
    def run_scenario(self, scenario: str) -> Row:
        assert self.ledger is not None
        logger.info("scenario %s", scenario)
        self._check_alive()
        opened = time.time()
        log_start = self._server_log_size()
        job_ids = self._submit_jobs(scenario)
        if scenario != "ray_worker_kill":  # a retrain takes seconds: look for its worker at once
            time.sleep(self.cfg.steady_s)
        healed, detail = self.inject(scenario, job_ids)
        closes_at = healed + self.cfg.after_s  # the fleet runs on normally until then
        closed: float | None = None
        row = Row(scenario, jobs_submitted=len(job_ids), detail=detail)
        deadline = closes_at + self.cfg.settle_timeout_s
        window: dict[tuple[str, str, str], float] = {}
        rows: Counter[tuple[str, str, str]] = Counter()
        jobs: dict[int, dict[str, Any]] = {}
        same_content = 0
        while True:
            self._check_alive()
            now = time.time()
            if closed is None and now >= closes_at:
                closed = closes_at
            try:
                produced = self.ledger.produced()
                rows, same_content = self.ledger.stored()
                jobs = self._jobs(job_ids)
            except Exception as exc:  # the database may still be coming back
                if now > deadline:
                    raise RuntimeError(f"{scenario}: the database stayed unreachable: {exc}") from exc
                time.sleep(0.25)
                continue
            jobs_done = len(jobs) == len(job_ids) and all(j["status"] in TERMINAL for j in jobs.values())
            if row.recovery_s is None and jobs_done and all(
                    rows[k] for k, t in produced.items() if opened <= t < healed):
                row.recovery_s = round(now - healed, 2)
            if closed is not None:
                window = {k: t for k, t in produced.items() if opened <= t < closed}
                if (jobs_done and all(rows[k] for k in window)) or now > deadline:
                    break
            time.sleep(0.25)
        assert closed is not None
        row.produced = len(window)
        row.stored = sum(1 for k in window if rows[k])
        row.lost = row.produced - row.stored
        row.duplicated = sum(rows[k] - 1 for k in window if rows[k] > 1) + same_content
        row.jobs_completed = sum(1 for j in jobs.values() if j["status"] == "succeeded")
        by_kind = Counter(k[0] for k in window)
        row.detail.update({"telemetry": by_kind["telemetry"], "sketches": by_kind["sketch"],
                           "window_s": round(closed - opened, 1),
                           "jobs": {str(i): {"status": j["status"], "attempts": j["attempts"],
                                             **({"error": (j["error"] or "")[:200]} if j["status"] != "succeeded"
                                                else {})} for i, j in jobs.items()},
                           "outbox_dropped": sum(d["dropped"] for d in self._fleet_status().get("devices", {}).values()),
                           "server_errors_logged": self._server_errors_since(log_start)})
        logger.info("%s: %s", scenario, {k: v for k, v in asdict(row).items() if k != "detail"})
        return row

    def _server_log_size(self) -> int:
        assert self.cp is not None
        return self.cp.log.stat().st_size if self.cp.log.exists() else 0

    def _server_errors_since(self, offset: int) -> int:
        """500s the control plane logged (5xx other than 503 are bugs, even when agents retry them)."""
        assert self.cp is not None
        with open(self.cp.log, "rb") as fh:
            fh.seek(offset)
            return fh.read().count(b"unhandled error on")

    # ----- tear-down --------------------------------------------------------------------------
    def close(self) -> None:
        for svc in (self.fleet, self.dispatcher, self.cp):
            if svc is not None:
                svc.stop()
        if self.proxy is not None:
            self.proxy.close()
        self.http.close()
        self.redis.stop()
        self.pg.stop()


def print_table(rows: list[Row]) -> str:
    keys = ["scenario", "produced", "stored", "lost", "duplicated", "jobs_submitted", "jobs_completed", "recovery_s"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        d = asdict(r)
        lines.append("| " + " | ".join("-" if d[k] is None else str(d[k]) for k in keys) + " |")
    return "\n".join(lines)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description="Reliability benchmark: faults injected into a running fleet.")
    parser.add_argument("--quick", action="store_true", help="fewer devices, shorter outages")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases) afterwards")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    if args.scenarios:
        unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenarios {sorted(unknown)}")
        cfg.scenarios = tuple(args.scenarios.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="qsae-reliability-", dir="/tmp"))
    os.chmod(workdir, 0o755)  # the postgres user must reach its data folder
    started = time.time()
    harness = Harness(cfg, workdir)
    rows: list[Row] = []
    error = None
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM tears everything down too (the finally below)
    try:
        harness.setup()
        for scenario in cfg.scenarios:
            rows.append(harness.run_scenario(scenario))
    except Exception as exc:  # report what was measured, and why the run stopped
        logger.exception("the benchmark stopped")
        error = f"{type(exc).__name__}: {exc}"
    finally:
        harness.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {"benchmark": "reliability", "quick": args.quick, "config": asdict(cfg),
              "rows": [asdict(r) for r in rows], "error": error,
              "all_at_target": error is None and len(rows) == len(cfg.scenarios) and all(r.at_target for r in rows),
              "seconds": round(time.time() - started, 1),
              "environment": {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "machine": platform.machine()},
              "workdir": str(workdir) if args.keep else None}
    print(print_table(rows))
    print(f"all rows at target: {result['all_at_target']} ({result['seconds']:.0f} s)"
          + (f"; stopped early: {error}" if error else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
