"""A loopback TCP proxy the benchmark controls: it forwards agent traffic to the control plane,
and on `cut()` resets every open connection and refuses new ones until `restore()` (a network
cut: the agent sees connection resets and refused connects, whatever it was sending).

It can also withhold the server's answers (`hold_answers()`), so a kill of the agent lands in the
middle of an upload the server has already stored but the agent has not seen acknowledged."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time

logger = logging.getLogger(__name__)


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.withheld = 0  # answer bytes dropped while the proxy held answers

    def reset(self) -> None:
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):  # RST instead of FIN: the peer sees a reset
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.close()


class CutProxy:
    def __init__(self, target_port: int, listen_port: int = 0) -> None:
        self.target = ("127.0.0.1", target_port)
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", listen_port))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._cut = threading.Event()
        self._hold = threading.Event()  # set: answers are dropped (the server did the work, the client never hears)
        self._closed = False
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self.connections = 0  # accepted in total
        self.refused = 0  # connections reset while cut
        self.bytes_up = 0
        self.bytes_down = 0
        self._thread = threading.Thread(target=self._accept, name="cut-proxy", daemon=True)
        self._thread.start()

    # ----- control -----
    def cut(self) -> int:
        """Drop every connection and refuse new ones; returns how many were open."""
        self._cut.set()
        with self._lock:
            links, self._links = list(self._links), set()
        for link in links:
            link.reset()
        logger.info("network cut: %d connections reset", len(links))
        return len(links)

    def restore(self) -> None:
        self._cut.clear()
        logger.info("network restored")

    def hold_answers(self) -> None:
        """From now on the server's answers are dropped: a request the server has completed stays
        unacknowledged for the client (what a crash between the server's commit and the ack looks like)."""
        self._hold.set()

    def release_answers(self) -> None:
        self._hold.clear()

    def withheld(self) -> int:
        """Connections whose answer was dropped."""
        with self._lock:
            return sum(1 for link in self._links if link.withheld)

    def wait_withheld(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.withheld():
                return True
            time.sleep(0.005)
        return False

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            links, self._links = list(self._links), set()
        for link in links:
            link.reset()

    # ----- plumbing -----
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            if self._cut.is_set():
                self.refused += 1
                _Link(client, socket.socket()).reset()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:  # the server is down: the client sees a reset, as it would directly
                _Link(client, socket.socket()).reset()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=self._pump, args=(link, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(link, False), daemon=True).start()

    def _pump(self, link: _Link, upward: bool) -> None:
        src, dst = (link.client, link.upstream) if upward else (link.upstream, link.client)
        try:
            while data := src.recv(65536):
                if self._cut.is_set():
                    break
                if upward:
                    self.bytes_up += len(data)
                elif self._hold.is_set():
                    link.withheld += len(data)
                    continue
                else:
                    self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            if not upward:
                with self._lock:
                    self._links.discard(link)
                with contextlib.suppress(OSError):
                    link.client.close()
                with contextlib.suppress(OSError):
                    link.upstream.close()
