"""A fleet's stream, drawn: per device, accuracy in stream order, where its phases begin, and the
compression of the versions the loop served. `make demo` draws it (`.fleet/demo.png`), and
`benchmarks.dynamic` beside its JSON with the static methods on the same images.

`stream_series` turns what the simulator recorded (`DeviceResult.hits` and `.switches`) and other
methods' per-image correctness into JSON-able windows; `stream_figure` draws them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from qsae_shared.distributions import DeviceProfile

SERIES_WINDOW = 1000  # inferences per point
LOOP = "dynamic_qsae"  # the method name of what the loop served
STYLE = {  # colour and line of each method
    "dense": ("#444444", "--"), "int8": ("#999999", ":"), LOOP: ("#d62728", "-"),
    "static_magnitude": ("#1f77b4", "-"), "static_qsae": ("#2ca02c", "-"),
}


def stream_series(devices: list[Any], profiles: list[DeviceProfile], phases: list[np.ndarray],
                  correct: dict[str, np.ndarray], ratios: dict[str, float],
                  window: int = SERIES_WINDOW) -> list[dict[str, Any]]:
    """Per device (the simulator's results, in the order of `profiles`), accuracy per `window`
    inferences of the loop and of every method in `correct` (method -> per-image correctness over
    all devices' streams, concatenated), the loop's compression per window (`ratios`: version ->
    compression), where each phase begins and where the loop switched versions."""
    out, start = [], 0
    for d, prof, ph in zip(devices, profiles, phases, strict=True):
        n = len(ph)
        hits = {LOOP: np.frombuffer(bytes(d.hits), dtype=np.uint8)[:n].astype(bool),
                **{k: v[start:start + n] for k, v in correct.items()}}
        ratio = np.full(n, np.nan)
        for i, (at, version) in enumerate(d.switches):
            end = d.switches[i + 1][0] if i + 1 < len(d.switches) else n
            ratio[at:end] = ratios.get(version, np.nan)
        edges = range(0, n, window)
        out.append({
            "device": prof.device_id, "window": window, "inferences": n,
            "phase_starts": [[int(np.argmax(ph == p)), prof.phases[int(p)].describe()] for p in np.unique(ph)],
            "switches": [[at, v] for at, v in d.switches],
            "accuracy": {k: [float(h[i:i + window].mean()) for i in edges] for k, h in hits.items()},
            "dynamic_compression": [float(np.nanmean(ratio[i:i + window])) if np.isfinite(ratio[i:i + window]).any()
                                    else None for i in edges]})
        start += n
    return out


def stream_figure(series: list[dict[str, Any]], title: str, labels: dict[str, str] | None = None) -> Figure:
    """Two panels a row, one a device; `labels` renames methods in the legend."""
    labels = labels or {}
    cols = 2
    nrows = max(1, (len(series) + cols - 1) // cols)
    fig = Figure(figsize=(14, 3.2 * nrows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols, sharey=True)).ravel()
    for ax, dev in zip(axes, series, strict=False):
        w = dev["window"]
        points = sum(1 for i in range(0, dev["inferences"], w) if dev["inferences"] - i >= w // 2)  # no short tail
        for method, acc in dev["accuracy"].items():
            colour, ls = STYLE.get(method, ("#000000", "-"))
            x = (np.arange(points) * w + w / 2) / 1000
            ax.plot(x, 100 * np.asarray(acc[:points], dtype=float), color=colour, ls=ls,
                    lw=1.6 if method == LOOP else 1.1, label=labels.get(method, method))
        for start, name in dev["phase_starts"]:
            ax.axvline(start / 1000, color="#666666", lw=0.8)
            ax.text(start / 1000, 1.01, f" {name}", transform=ax.get_xaxis_transform(), fontsize=8, va="bottom")
        twin = ax.twinx()
        comp = [np.nan if c is None else c for c in dev["dynamic_compression"][:points]]
        twin.step(np.arange(len(comp)) * w / 1000, comp, where="post", color=STYLE[LOOP][0], alpha=0.3, lw=1)
        twin.set_ylabel("compression served (x)", color=STYLE[LOOP][0], alpha=0.6, fontsize=8)
        twin.set_ylim(0, max([c for c in comp if np.isfinite(c)], default=1) * 1.15)
        ax.set_title(dev["device"], loc="left", fontsize=10, pad=14)
        ax.set_xlabel("inferences (thousands)")
        ax.set_ylabel(f"accuracy per {w} inferences (%)")
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    if series:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncol=len(names), fontsize=9)
    else:
        axes[0].text(0.5, 0.5, "no devices in this run", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(title)
    return fig
