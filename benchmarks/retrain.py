"""P6: how long one device's retrain takes under the default policy, and how a fleet's retrains
scale with Ray workers.

    python -m benchmarks.retrain [--quick] --json PATH

`per_device_seconds`: the median of one retrain (calibration from sketches, QSAE, KL-budgeted
search, recovery, int8 export) on one core, over a few devices, as a running fleet does it: the
compute choice for the version's widths already measured on this machine (`workers.runtime_choice`
keeps it on disk; widths come in multiples of 4, so a fleet meets the same few again and again).
`per_device_seconds_cold`: the same retrains when each must first measure its widths (about a
second more). `fleet`: the same N devices' retrains as Ray tasks through the dispatcher's task
function, in four rounds on 1, 2, 2 and 1 Ray workers (CPUs), each round starting from an empty
compute-choice cache; per worker count, the two rounds' devices and seconds summed.
Targets: <= 10 s per device; 2 workers >= 1.8x the throughput of 1.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import plots, targets
from benchmarks.common import BaseRuntime, base_checkpoint, parser, progress, setup, write_json
from workers import runtime_choice
from workers.dispatcher import _retrain_task, init_ray
from workers.policy import DEFAULT_POLICY
from workers.retrain import retrain

SCENARIOS = ("classes-footwear", "classes-tops", "classes-trouser-dress-bag", "corrupt-contrast-noise", "full")


def main() -> None:
    args = parser("retrain", __doc__ or "").parse_args()
    setup(threads=1)
    n_single = 2 if args.quick else 4
    n_fleet = 4 if args.quick else 32  # enough tasks that the last one finishing alone weighs little
    ck = base_checkpoint()
    runtime = BaseRuntime(ck)
    devices = [(SCENARIOS[i % len(SCENARIOS)], i) for i in range(max(n_single, n_fleet))]
    progress(f"building sketches for {len(devices)} devices")
    sketches = {d: runtime.sketches(d[0], seed=d[1]) for d in devices}

    scratch = Path(tempfile.mkdtemp(prefix="retrain-bench-"))
    runtime_choice.use_cache_file(scratch / "warm-up.json")
    progress("one untimed retrain first (imports, the base model's validation profile)")
    retrain(ck, sketches[devices[-1]], DEFAULT_POLICY, device_id="warm-up")
    rows: list[dict[str, Any]] = []
    for scenario, seed in devices[:n_single]:
        row: dict[str, Any] = {"device": f"{scenario}-{seed}"}
        for state in ("cold", "warm"):  # cold: this process and the disk know no compute choice
            if state == "cold":
                runtime_choice.use_cache_file(scratch / f"{scenario}-{seed}.json")
            t0 = time.perf_counter()
            r = retrain(ck, sketches[(scenario, seed)], DEFAULT_POLICY, device_id=f"{scenario}-{seed}")
            row[state] = time.perf_counter() - t0
            progress(f"{scenario} seed {seed}, {state}: {row[state]:.1f} s, {r.metrics['compression_ratio']:.1f}x, "
                     f"kl {r.metrics['kl']:.4f} ({', '.join(f'{k} {v:.1f}' for k, v in r.timings.items())})")
        rows.append({"device": row["device"], "per_device": row["warm"], "per_device_cold": row["cold"],
                     "compression_ratio": r.metrics["compression_ratio"], "timings": r.timings})
    per_device = statistics.median(row["per_device"] for row in rows)
    cold = statistics.median(row["per_device_cold"] for row in rows)
    print(f"per-device retrain, 1 core: median {per_device:.2f} s over {n_single} devices "
          f"({cold:.2f} s when each measures its widths' compute choice first)", flush=True)

    import ray

    policy = {"kl_budget": DEFAULT_POLICY.kl_budget, "min_compression": DEFAULT_POLICY.min_compression}
    # Rounds in the order 1, 2, 2, 1 workers: the machine's speed drifts by tens of percent over
    # minutes here, and this order cancels a steady drift out of the ratio of the two sums.
    rounds: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for i, workers in enumerate((1, 2, 2, 1)):
        if ray.is_initialized():
            ray.shutdown()
        runtime_choice.use_cache_file(scratch / f"fleet-{i}.json")  # the same (empty) start for every round
        init_ray(None, num_cpus=workers)
        task = ray.remote(num_cpus=1)(_retrain_task)
        ck_ref = ray.put(ck)
        # Warm the workers (process start, imports) before timing, as a long-running dispatcher is.
        ray.get([task.remote(ck_ref, [s.to_bytes() for s in sketches[devices[0]]], policy, "warm", {}, 512)
                 for _ in range(workers)])
        t0 = time.perf_counter()
        refs = [task.remote(ck_ref, [s.to_bytes() for s in sketches[d]], policy, f"{d[0]}-{d[1]}", {}, 512)
                for d in devices[:n_fleet]]
        busy = sum(r["seconds"] for r in ray.get(refs))
        seconds = time.perf_counter() - t0
        rounds[workers].append((seconds, busy))
        print(f"fleet round {i + 1}/4: {n_fleet} retrains on {workers} Ray worker(s): {seconds:.1f} s "
              f"(the tasks' own time {busy:.1f} s, workers busy {busy / (workers * seconds):.0%})", flush=True)
    fleet = [{"workers": w, "devices": n_fleet * len(r), "seconds": sum(s for s, _ in r),
              "task_seconds": sum(b for _, b in r), "round_seconds": [s for s, _ in r]} for w, r in rounds.items()]
    ray.shutdown()
    verdicts = targets.retrain_verdicts({"per_device_seconds": per_device, "fleet": fleet})
    print("\n".join(targets.lines(verdicts)), flush=True)
    write_json(args.json, "retrain", rows=rows, per_device_seconds=per_device,
               per_device_seconds_cold=cold, fleet=fleet, speedup_2_vs_1=verdicts["P6"]["speedup_2_vs_1"],
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), targets=verdicts)
    plots.save(args.json)


if __name__ == "__main__":
    main()
