"""The dispatcher process of the reliability benchmark: `qsae-fleet worker`'s loop, with a tiny
base model instead of the pinned CNN so retrains take seconds (the same code path otherwise).

    python -m benchmarks.faults.worker --cache-dir DIR      # FLEET_* environment as for the worker

SIGTERM stops it cleanly (its local Ray is shut down with it)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.training import Checkpoint

BASE_MODEL = "tiny-cnn"  # workers.nets.TINY_CNN, as the tests use (imported lazily: no torch here)


def tiny_checkpoint(cache_dir: Path) -> Checkpoint:
    """The tiny base model, trained on first use and cached under `cache_dir`."""
    from workers.nets import TINY_CNN
    from workers.training import TrainConfig, load_or_train

    cfg = TrainConfig(epochs=1, train_images=6000, validation_images=2000, threads=1)
    return load_or_train(TINY_CNN, cfg, cache_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, required=True, help="where the tiny base model is cached")
    parser.add_argument("--max-parallel", type=int, default=2, help="Ray tasks in flight at once")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args()

    from control_plane.services import FleetStore
    from control_plane.settings import get_settings
    from workers.dispatcher import Dispatcher, DispatcherConfig, init_ray
    from workers.tracking import Tracker

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    checkpoint = tiny_checkpoint(args.cache_dir)
    init_ray(None, num_cpus=args.num_cpus)
    store = FleetStore.from_settings(settings)
    tracker = Tracker(settings.mlflow_tracking_uri, Path(settings.state_dir) / "mlartifacts")
    try:
        Dispatcher(store, tracker, DispatcherConfig(max_parallel=args.max_parallel, poll_s=1.0, heartbeat_s=2.0),
                   checkpoint=checkpoint).run(stop)
    finally:
        import ray

        ray.shutdown()
        store.close()


if __name__ == "__main__":
    main()
