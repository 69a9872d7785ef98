"""Feeds stem outputs into sketch builders on a background thread, so `predict` returns as soon as
the model has answered. The queue is bounded in images (a full queue makes `predict` wait rather
than drop anything), and `barrier()` waits until everything submitted so far is in its builder.

Batches waiting for the same builder are applied in one `update` (in order, so the reservoir,
histograms and moments are those of one update per batch): many small `predict` calls then cost
about what one large one does."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import numpy as np

from qsae_shared.sketch import SketchBuilder

logger = logging.getLogger(__name__)


class SketchFeeder:
    def __init__(self, max_pending_images: int = 128, name: str = "sketch-feeder") -> None:
        self.max_pending_images = max_pending_images  # submit() waits beyond this many queued images
        self._cv = threading.Condition()
        self._items: deque[Any] = deque()
        self._pending = 0
        self._closed = False
        self.errors = 0  # updates that raised (logged); the builder keeps what it had
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, builder: SketchBuilder, stem: np.ndarray, probs: np.ndarray, now: float) -> None:
        n = len(stem)
        with self._cv:
            while self._pending and self._pending + n > self.max_pending_images and not self._closed:
                self._cv.wait()
            self._items.append((builder, stem, probs, now))
            self._pending += n
            self._cv.notify_all()

    def barrier(self, timeout_s: float | None = None) -> bool:
        """Wait until every update submitted before this call is applied."""
        done = threading.Event()
        with self._cv:
            if self._closed:
                return True
            self._items.append(done)
            self._cv.notify_all()
        return done.wait(timeout_s)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._items and not self._closed:
                    self._cv.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                group = [item]
                n = len(item[1])
                while (self._items and not isinstance(self._items[0], threading.Event)
                       and self._items[0][0] is item[0] and n + len(self._items[0][1]) <= self.max_pending_images):
                    group.append(self._items.popleft())
                    n += len(group[-1][1])
            builder = item[0]
            stem = group[0][1] if len(group) == 1 else np.concatenate([g[1] for g in group])  # (n, C, H, W)
            probs = group[0][2] if len(group) == 1 else np.concatenate([g[2] for g in group])  # (n, K)
            try:
                builder.update(stem, probs, group[-1][3])
            except Exception:
                self.errors += 1
                logger.exception("device_id=%s sketch update failed", builder.device_id)
            with self._cv:
                self._pending -= n
                self._cv.notify_all()
