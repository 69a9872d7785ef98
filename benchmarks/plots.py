"""Figures of the benchmarks' JSON, for what people would rather look at than read.

    python -m benchmarks.plots .fleet/bench/compression.json [.fleet/bench/dynamic.json ...]

Every benchmark draws its figure beside its JSON when it finishes (`compression.json` ->
`compression.png`); this command draws them again from the JSON alone, e.g. after a run on
another machine. Figures: `compression` (accuracy drop against compression per criterion, with
and without recovery, and per-device against global calibration), `dynamic` (accuracy over the
stream per device and method, with the phases and the loop's compression), `latency` (speed-up
over dense fp32 per variant), `retrain` (seconds per retrain, and fleet throughput by workers).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workers import figures

Doc = dict[str, Any]
CRITERION_COLOUR = {"qsae": "#d62728", "qsae-noquant": "#ff9896", "energy": "#9467bd", "wanda": "#2ca02c",
                    "magnitude": "#1f77b4"}  # in the order the legend lists them


def _mean_by(rows: list[dict], key: Callable[[dict], Any]) -> dict[Any, tuple[float, float]]:
    """Mean (compression_ratio, drop_pp) of the rows grouped by `key` (seeds averaged)."""
    groups: dict[Any, list[dict]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return {k: (float(np.mean([r["compression_ratio"] for r in g])), float(np.mean([r["drop_pp"] for r in g])))
            for k, g in groups.items()}


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", transform=ax.transAxes, color="#777")


def compression(doc: Doc) -> Figure:
    rows = [r for r in doc["rows"] if r.get("compression_ratio") is not None and r.get("drop_pp") is not None]
    full = [r for r in rows if r["scenario"] == "full" and r["calibration"] == "global"]
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].sharey(axes[1])  # one scale, so recovery's gain reads off the figure
    for ax, recovered, title in ((axes[0], False, "without recovery"), (axes[1], True, "with the least-squares re-fit")):
        curves = [r for r in full if str(r["policy"]).startswith("target_compression=")
                  and ("+" in r["method"]) == recovered]
        for criterion, colour in CRITERION_COLOUR.items():
            pts = _mean_by([r for r in curves if r["method"].split("+")[0] == criterion], lambda r: r["target"])
            if pts:
                xs, ys = zip(*(pts[t] for t in sorted(pts)), strict=True)
                ax.plot(xs, ys, marker="o", label=criterion, color=colour, lw=2.2 if criterion == "qsae" else 1.2)
        ax.axvline(16, color="#999", lw=0.8, ls=":")  # P2 compares the criteria at 16x
        if recovered:
            default = _mean_by([r for r in full if r.get("default_policy")], lambda r: "default")
            oracle = _mean_by([r for r in full if not r.get("label_free", True)], lambda r: "oracle")
            for pts, marker, filled, label in ((default, "*", "black", "default policy (label-free)"),
                                               (oracle, "D", "none", "oracle (labelled validation)")):
                if pts:
                    ax.scatter(*pts[next(iter(pts))], marker=marker, s=150, facecolors=filled, edgecolors="black",
                               zorder=5, label=label)
            ax.fill_between([20, 80], -1, 1.0, color="#2ca02c", alpha=0.08, label="P1: >= 20x at <= 1 pp")
        if not curves and not (recovered and any(r.get("default_policy") for r in full)):
            _empty(ax, "target-compression rows")
        ax.set(title=f"full: {title}", xlabel="compression (x, fp32 bytes / artifact bytes)",
               ylabel=f"accuracy drop (pp, {doc.get('split', 'test')} split)")
        _limits(ax, [r for r in full if r["method"] != "int8" and r["compression_ratio"] > 1])
        ax.axhline(0, color="#bbb", lw=0.8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _per_device(axes[2], rows)
    fig.suptitle(f"Compression against accuracy ({doc.get('seeds', 1)} seed(s), ONNX Runtime, int8)")
    return fig


def _limits(ax: Axes, rows: list[dict]) -> None:
    if rows:
        ax.set_xlim(0, max(r["compression_ratio"] for r in rows) * 1.08)
        ax.set_ylim(min(-0.3, min(r["drop_pp"] for r in rows) - 0.2), max(r["drop_pp"] for r in rows) + 0.3)


def _per_device(ax: Axes, rows: list[dict]) -> None:
    """Each device scenario under the default policy: global calibration -> the device's own."""
    dev = [r for r in rows if r["scenario"] != "full" and r.get("default_policy")]
    scenarios = sorted({r["scenario"] for r in dev})
    if not scenarios:
        _empty(ax, "device scenarios")
    colours = dict(zip(scenarios, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"), strict=False))
    for s in scenarios:
        for seed in sorted({r["seed"] for r in dev if r["scenario"] == s}):
            by = {r["calibration"]: r for r in dev if r["scenario"] == s and r["seed"] == seed}
            if "global" in by and "device" in by:
                g, d = by["global"], by["device"]
                ax.annotate("", (d["compression_ratio"], d["drop_pp"]), (g["compression_ratio"], g["drop_pp"]),
                            arrowprops={"arrowstyle": "->", "color": colours[s], "alpha": 0.6})
                ax.scatter(g["compression_ratio"], g["drop_pp"], marker="o", facecolors="none", edgecolors=colours[s])
                ax.scatter(d["compression_ratio"], d["drop_pp"], marker="o", color=colours[s],
                           label=s if seed == 0 else None)
    ax.axhline(1.0, color="#d62728", lw=0.8, ls="--", label="1 pp")
    ax.axhline(0, color="#bbb", lw=0.8)
    ax.set(title="per device, default policy: calibrated\nglobally (open) -> on the device's own data (filled)",
           xlabel="compression (x)", ylabel="accuracy drop on the device's own test data (pp)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def dynamic(doc: Doc) -> Figure:
    summary = {r["method"]: r for r in doc["rows"]}
    labels = {m: f"{m} ({100 * r['time_avg_accuracy']:.1f} %, {r['avg_compression_ratio']:.0f}x)"
              for m, r in summary.items() if r.get("time_avg_accuracy") is not None}
    reprunes = summary.get(figures.LOOP, {}).get("reprunes")
    return figures.stream_figure(doc.get("series") or [], "The dynamic loop against static pruning, in stream order"
                                 + (f" (the loop re-pruned {reprunes} times)" if reprunes is not None else ""), labels)


def latency(doc: Doc) -> Figure:
    rows = [r for r in doc["rows"] if r["threads"] == 1]
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "dense_fp32"))
    batches = sorted({r["batch"] for r in rows})
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(batches), 1)
    for i, b in enumerate(batches):
        speed = [next((r["speedup"] for r in rows if r["variant"] == v and r["batch"] == b), np.nan) for v in variants]
        bars = ax.bar(np.arange(len(variants)) + i * width, speed, width, label=f"batch {b}")
        ax.bar_label(bars, fmt="%.2fx", fontsize=8)
    for target, b in ((2.0, 1), (2.5, 64)):
        ax.axhline(target, ls="--", lw=0.8, color="#555")
        ax.text(len(variants) - 0.4, target, f"target at batch {b}: {target}x", fontsize=8, va="bottom", ha="right")
    ax.axhline(1.0, color="#bbb", lw=0.8)
    ax.set_xticks(np.arange(len(variants)) + width * (len(batches) - 1) / 2, variants)
    ax.set(ylabel="speed-up over dense fp32 (median time ratio)",
           title="ONNX Runtime, 1 thread: speed-up over dense fp32")
    ax.legend()
    return fig


def retrain(doc: Doc) -> Figure:
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    names = [str(r.get("device", i)) for i, r in enumerate(doc["rows"])]
    cold = [r.get("per_device_cold") for r in doc["rows"]]
    if all(c is not None for c in cold):  # behind each bar: the same retrain measuring its compute choice
        left.barh(names, cold, color="#aec7e8", label="measuring its widths' compute choice first")
    left.barh(names, [r["per_device"] for r in doc["rows"]], color="#1f77b4", label="compute choice known")
    left.axvline(10, ls="--", color="#d62728", lw=0.8, label="target: 10 s")
    left.axvline(doc["per_device_seconds"], color="#444", lw=1, label=f"median {doc['per_device_seconds']:.2f} s")
    left.invert_yaxis()
    left.set(title="one retrain under the default policy,\non one core", xlabel="seconds", ylabel="device (scenario-seed)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    fleet = doc.get("fleet") or []
    throughput = [f["devices"] / f["seconds"] * 60 for f in fleet]
    bars = right.bar([f"{f['workers']} worker(s)" for f in fleet], throughput, color="#2ca02c")
    right.bar_label(bars, fmt="%.1f / min")
    right.set(title=f"fleet throughput: {doc.get('speedup_2_vs_1', float('nan')):.2f}x with 2 workers\n(target 1.8x)",
              ylabel="retrains per minute")
    return fig


DRAW: dict[str, Callable[[Doc], Figure]] = {
    "compression": compression, "dynamic": dynamic, "latency": latency, "retrain": retrain}


def save(json_path: Path) -> Path | None:
    """Draws the figure of a benchmark's JSON beside it (`.png`); None for a benchmark without one."""
    doc = json.loads(Path(json_path).read_text())
    draw = DRAW.get(doc.get("benchmark", ""))
    if draw is None:
        return None
    out = Path(json_path).with_suffix(".png")
    fig = draw(doc)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", type=Path, help="a benchmark's --json output")
    args = p.parse_args(argv)
    failed = 0
    for path in args.json:
        try:
            if save(path) is None:
                print(f"{path}: no figure for this benchmark", flush=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable, not JSON, not a benchmark's rows
            print(f"{path}: cannot draw it: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
