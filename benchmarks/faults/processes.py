"""The benchmark's own processes: the control plane (`qsae-fleet serve`), the dispatcher, the
agent fleet. Each is started with Popen and killed by its PID (kill -9 for a crash); Ray's
processes are found as descendants of the dispatcher, never by name."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


def children_map() -> dict[int, list[int]]:
    """parent PID -> child PIDs, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    tree = children_map()
    out, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Service:
    """One child process with its log file; `kill()` is kill -9, `stop()` is SIGTERM then -9."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.tree: set[int] = set()  # every descendant PID seen (Ray's processes), for the clean-up

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remember_tree(self) -> list[int]:
        if self.proc is None:
            return []
        found = descendants(self.proc.pid)
        self.tree.update(found)
        return found

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.remember_tree()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.alive():
            assert self.proc is not None
            self.remember_tree()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # what the process left behind (e.g. Ray workers of a killed driver): ours, by PID
        leftovers = [p for p in self.tree if os.path.exists(f"/proc/{p}")]
        kill_pids(leftovers)


def wait_http(url: str, timeout_s: float, expect: int = 200) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == expect:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def control_plane(env: dict[str, str], port: int, log: Path) -> Service:
    return Service("control-plane", [sys.executable, "-m", "control_plane.cli", "serve", "--no-migrate",
                                     "--host", "127.0.0.1", "--port", str(port)], env, log)


def dispatcher(env: dict[str, str], cache_dir: Path, log: Path) -> Service:
    return Service("dispatcher", [sys.executable, "-m", "benchmarks.faults.worker", "--cache-dir", str(cache_dir)],
                   env, log)


def fleet(env: dict[str, str], root: Path, server_url: str, devices: list[str], log: Path) -> Service:
    return Service("fleet", [sys.executable, "-m", "benchmarks.faults.fleet", "--root", str(root), "--server",
                             server_url, "--devices", ",".join(devices)], env, log)
