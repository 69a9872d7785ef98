"""The pruning core's targets (P1, P2, P8), read off the compression benchmark's rows.

Every figure is a mean over the seeds in the rows. `python -m benchmarks.targets PATH.json` prints
the verdicts of a finished run; `benchmarks.compression` prints them at its end and stores them in
its JSON under `targets`.

- P1: the default policy on `full`: >= 20x at <= 1.0 pp, no label used.
- P2: at target 16x on `full`, the best `qsae*` variant against the better of `magnitude` and `wanda`
  given the same recovery: ahead by >= 1 pp.
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
    sides = [{"policy": name, "compression_ratio": ratio, "drop_pp": drop}
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
    return {"P1": p1(rows), "P2": p2(rows), "P8": p8(rows)}


def _side(s: dict | None) -> str:
    return "none within 1 pp" if s is None else \
        f"{s['compression_ratio']:.1f}x at {s['drop_pp']:+.2f} pp ({s['policy']})"


def _met(m: bool | None) -> str:
    return {True: "met", False: "not met", None: "undecided"}[m]


def lines(v: dict) -> list[str]:
    out = []
    if (p := v["P1"]) is not None:
        out.append(f"P1: default policy on full, {p['seeds']} seed(s): {p['compression_ratio']:.1f}x at "
                   f"{p['drop_pp']:+.2f} pp: {_met(p['met'])}")
    if (p := v["P2"]) is not None:
        out.append(f"P2: at 16x, {p['qsae_method']} {p['qsae_drop_pp']:+.2f} pp against {p['rival']} "
                   f"{p['rival_drop_pp']:+.2f} pp: ahead by {p['lead_pp']:.2f} pp: {_met(p['met'])}")
    for p in v["P8"]:
        gain = f", {p['gain']:.2f}x" if "gain" in p else ""
        out.append(f"P8 {p['scenario']} ({p['reading']}): device {_side(p['device'])}, "
                   f"global {_side(p['global'])}{gain}: {_met(p['met'])}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="The P1, P2 and P8 verdicts of a compression benchmark's JSON.")
    p.add_argument("path", type=Path)
    rows = json.loads(p.parse_args().path.read_text())["rows"]
    print("\n".join(lines(verdicts(rows))))


if __name__ == "__main__":
    main()
