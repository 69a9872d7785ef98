"""The issues' targets read off benchmark output: P1, P2 and P8 off `compression`'s rows, P3 and P7
off `dynamic`'s, P4 off `latency`'s, P6 off `retrain`'s JSON.

Compression figures are means over the seeds in the rows. `python -m benchmarks.targets PATH.json`
prints the verdicts of a finished run; each of those benchmarks prints them at its end and stores
them in its JSON under `targets`.

- P1: the default policy on `full`: >= 20x at <= 1.0 pp, no label used.
- P2: at target 16x on `full`, the best `qsae*` variant against the better of `magnitude` and `wanda`
  given the same recovery: ahead by >= 1 pp.
- P3: the loop within 1 pp of dense at >= 8x average compression; each static method >= 3 pp
  below the loop.
- P4: the default artifact against dense fp32 in ONNX Runtime, 1 thread: >= 2.0x at batch 1 and
  >= 2.5x at batch 64.
- P6: one retrain under the default policy on one core <= 10 s; 2 Ray workers >= 1.8x the
  throughput of 1.
- P7: every sketch upload <= 256 KB, an update <= 1/10 of the fp32 model, unchanged polls all 304.
- P8, per `classes-...` scenario, read two ways:
  - `default`: both calibrations under the default policy; device >= 1.5x global, both within 1 pp.
  - `matched`: for each calibration, the most compressed label-free policy of the run (the default
    and each KL budget) whose drop is within 1 pp; device >= 1.5x global. This compares the two at
    the same accuracy, where the global mask at the default policy loses more than 1 pp.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any

WITHIN_PP = 1.0


def _means(rows: list[dict]) -> tuple[float, float, int]:
    """(mean compression, mean drop in pp, seeds) of rows that differ only by seed."""
    return (fmean(r["compression_ratio"] for r in rows), fmean(r["drop_pp"] for r in rows),
            len({r["seed"] for r in rows}))


def _test_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("split", "test") == "test" and r.get("label_free", True)]


def p1(rows: list[dict]) -> dict | None:
    mine = [r for r in _test_rows(rows) if r["scenario"] == "full" and r["calibration"] == "global"
            and r["default_policy"]]
    if not mine:
        return None
    ratio, drop, seeds = _means(mine)
    return {"target": "P1", "compression_ratio": ratio, "drop_pp": drop, "seeds": seeds,
            "met": ratio >= 20 and drop <= WITHIN_PP}


def _recovery(method: str) -> str:
    return method.split("+", 1)[1] if "+" in method else "none"


def p2(rows: list[dict]) -> dict | None:
    at16 = defaultdict(list)
    for r in _test_rows(rows):
        if r["scenario"] == "full" and r["policy"] == "target_compression=16":
            at16[r["method"]].append(r)
    drops = {m: _means(rs)[1] for m, rs in at16.items()}
    best = None
    for method, drop in drops.items():
        if not method.startswith("qsae"):
            continue
        rec = _recovery(method)
        names = [b if rec == "none" else f"{b}+{rec}" for b in ("magnitude", "wanda")]
        baselines = {b: drops[b] for b in names if b in drops}
        if not baselines:
            continue
        rival = min(baselines, key=lambda b: baselines[b])
        lead = baselines[rival] - drop
        if best is None or lead > best["lead_pp"]:
            best = {"target": "P2", "qsae_method": method, "qsae_drop_pp": drop, "rival": rival,
                    "rival_drop_pp": baselines[rival], "lead_pp": lead,
                    "seeds": _means(at16[method])[2], "met": lead >= WITHIN_PP}
    return best


def _p8_side(rows: list[dict], calibration: str, policy: str | None) -> dict | None:
    """{policy, compression_ratio, drop_pp} (means over seeds): the named policy, or (policy None)
    the most compressed label-free policy of the run within 1 pp."""
    by_policy = defaultdict(list)
    for r in rows:
        if r["calibration"] == calibration and (r["default_policy"] or r["policy"].startswith("kl_budget=")):
            by_policy["default" if r["default_policy"] else r["policy"]].append(r)
    sides: list[dict[str, Any]] = [{"policy": name, "compression_ratio": ratio, "drop_pp": drop}
                                   for name, rs in by_policy.items() for ratio, drop, _ in [_means(rs)]]
    if policy is not None:
        return next((s for s in sides if s["policy"] == policy), None)
    within = [s for s in sides if s["drop_pp"] <= WITHIN_PP]
    return max(within, key=lambda s: s["compression_ratio"]) if within else None


def p8(rows: list[dict]) -> list[dict]:
    out = []
    scenarios = sorted({r["scenario"] for r in _test_rows(rows) if r["scenario"].startswith("classes-")})
    for scenario in scenarios:
        mine = [r for r in _test_rows(rows) if r["scenario"] == scenario]
        for reading, policy in (("default", "default"), ("matched", None)):
            dev, glob = _p8_side(mine, "device", policy), _p8_side(mine, "global", policy)
            row = {"target": "P8", "scenario": scenario, "reading": reading, "device": dev, "global": glob}
            if dev is None or glob is None:
                row["met"] = False if dev is None else None  # None: global is never within 1 pp
            else:
                row["gain"] = dev["compression_ratio"] / glob["compression_ratio"]
                row["met"] = row["gain"] >= 1.5 and max(dev["drop_pp"], glob["drop_pp"]) <= WITHIN_PP
            out.append(row)
    return out


def verdicts(rows: list[dict]) -> dict:
    """The compression benchmark's targets."""
    return {"P1": p1(rows), "P2": p2(rows), "P8": p8(rows)}


def dynamic_verdicts(rows: list[dict]) -> dict:
    """The dynamic benchmark's targets (P3, P7)."""
    by = {r["method"]: r for r in rows}
    loop, dense = by["dynamic_qsae"], by["dynamic_qsae"]["dense_time_avg_accuracy"]
    loop_gap = 100 * (dense - loop["time_avg_accuracy"])
    statics = {m: 100 * (loop["time_avg_accuracy"] - r["time_avg_accuracy"]) for m, r in by.items()
               if m.startswith("static_")}
    p3 = {"target": "P3", "loop_below_dense_pp": loop_gap, "avg_compression_ratio": loop["avg_compression_ratio"],
          "statics_below_loop_pp": statics,
          "met_loop": loop_gap <= WITHIN_PP and loop["avg_compression_ratio"] >= 8,
          "met_gap": bool(statics) and min(statics.values()) >= 3.0}
    p3["met"] = p3["met_loop"] and p3["met_gap"]
    p7 = {"target": "P7", "sketch_bytes_max": loop["sketch_bytes_max"], "update_bytes_max": loop["update_bytes_max"],
          "update_limit": loop["fp32_model_bytes"] // 10, "not_modified_ratio": loop["not_modified_ratio"],
          "met": loop["sketch_bytes_max"] <= 256 * 1024 and loop["update_bytes_max"] <= loop["fp32_model_bytes"] // 10
          and loop["not_modified_ratio"] == 1.0}
    return {"P3": p3, "P7": p7}


def latency_verdicts(rows: list[dict]) -> dict:
    """The latency benchmark's target (P4)."""
    speedup = {r["batch"]: r["speedup"] for r in rows if r["variant"] == "default_artifact" and r["threads"] == 1}
    return {"P4": {"target": "P4", "speedup_batch1": speedup.get(1), "speedup_batch64": speedup.get(64),
                   "met": speedup.get(1, 0) >= 2.0 and speedup.get(64, 0) >= 2.5}}


def retrain_verdicts(doc: dict) -> dict:
    """The retrain benchmark's target (P6), from its JSON's top-level keys."""
    by_workers = {f["workers"]: f["seconds"] for f in doc["fleet"]}
    speedup = by_workers[1] / by_workers[2]
    return {"P6": {"target": "P6", "per_device_seconds": doc["per_device_seconds"], "speedup_2_vs_1": speedup,
                   "met_per_device": doc["per_device_seconds"] <= 10.0, "met_fleet": speedup >= 1.8,
                   "met": doc["per_device_seconds"] <= 10.0 and speedup >= 1.8}}


def _side(s: dict | None) -> str:
    return "none within 1 pp" if s is None else \
        f"{s['compression_ratio']:.1f}x at {s['drop_pp']:+.2f} pp ({s['policy']})"


def _met(m: bool | None) -> str:
    return {True: "met", False: "not met", None: "undecided"}[m]


def tags(v: dict) -> dict[str, str]:
    """Each target's verdict as one word (P8's, one per scenario and reading: met only if all are,
    not met if any is not)."""
    out = {}
    for name, verdict in v.items():
        if verdict:
            met = [x["met"] for x in (verdict if isinstance(verdict, list) else [verdict])]
            out[name] = _met(True if all(m is True for m in met) else False if False in met else None)
    return out


def lines(v: dict) -> list[str]:
    out = []
    if (p := v.get("P3")) is not None:
        statics = ", ".join(f"{m} {gap:.2f} pp below" for m, gap in p["statics_below_loop_pp"].items())
        out.append(f"P3: loop {p['loop_below_dense_pp']:.2f} pp below dense at {p['avg_compression_ratio']:.1f}x: "
                   f"{_met(p['met_loop'])}; {statics} (3 pp): {_met(p['met_gap'])}")
    if (p := v.get("P4")) is not None:
        out.append(f"P4: default artifact against dense fp32, 1 thread: {p['speedup_batch1']:.2f}x at batch 1 "
                   f"(2.0x), {p['speedup_batch64']:.2f}x at batch 64 (2.5x): {_met(p['met'])}")
    if (p := v.get("P6")) is not None:
        out.append(f"P6: one retrain on one core {p['per_device_seconds']:.2f} s (10 s): {_met(p['met_per_device'])}; "
                   f"2 workers {p['speedup_2_vs_1']:.2f}x the throughput of 1 (1.8x): {_met(p['met_fleet'])}")
    if (p := v.get("P7")) is not None:
        out.append(f"P7: sketch max {p['sketch_bytes_max']} B (<= 262144), update max {p['update_bytes_max']} B "
                   f"(<= {p['update_limit']}), unchanged polls answered 304: {p['not_modified_ratio']}: "
                   f"{_met(p['met'])}")
    if (p := v.get("P1")) is not None:
        out.append(f"P1: default policy on full, {p['seeds']} seed(s): {p['compression_ratio']:.1f}x at "
                   f"{p['drop_pp']:+.2f} pp: {_met(p['met'])}")
    if (p := v.get("P2")) is not None:
        out.append(f"P2: at 16x, {p['qsae_method']} {p['qsae_drop_pp']:+.2f} pp against {p['rival']} "
                   f"{p['rival_drop_pp']:+.2f} pp: ahead by {p['lead_pp']:.2f} pp: {_met(p['met'])}")
    for p in v.get("P8", []):
        gain = f", {p['gain']:.2f}x" if "gain" in p else ""
        out.append(f"P8 {p['scenario']} ({p['reading']}): device {_side(p['device'])}, "
                   f"global {_side(p['global'])}{gain}: {_met(p['met'])}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="The targets' verdicts of a benchmark's JSON "
                                            "(compression, dynamic, latency or retrain).")
    p.add_argument("path", type=Path)
    doc = json.loads(p.parse_args().path.read_text())
    read = {"compression": lambda: verdicts(doc["rows"]), "dynamic": lambda: dynamic_verdicts(doc["rows"]),
            "latency": lambda: latency_verdicts(doc["rows"]), "retrain": lambda: retrain_verdicts(doc)}
    if doc.get("benchmark") not in read:
        raise SystemExit(f"{p.parse_args().path}: not a compression, dynamic, latency or retrain benchmark's JSON")
    print("\n".join(lines(read[doc["benchmark"]]())))


if __name__ == "__main__":
    main()
