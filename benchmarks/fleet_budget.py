"""The fleet policy's KL budget for `benchmarks.dynamic`, chosen on validation images.

    python -m benchmarks.fleet_budget [--quick] [--budgets B,...] --json PATH

The loop without its lag: each phase of each device of the demo's fleet is pruned under the default
policy at KL budget B from 512 samples of its own sketches (training-split images, as the agent
builds them) and scored in ONNX Runtime on held-out TRAINING images of that phase (never trained
on, never the test split), against the dense network on the same images.
The rule (docs/dynamic-loop.md, written before its figures were seen): the largest budget whose
mean accuracy over the device-phases is within `--margin` (0.5) pp of dense, leaving the rest of
P3's 1 pp for the real loop's lag; if none but the product default qualifies, the default.
Each row also carries the agent's label-free estimate of the version's accuracy on the same
images, from the manifest's confidence profile (`estimate_error_pp`: estimate minus truth).
`--quick`: the first three devices, 1,000 images a phase.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import (
    BaseRuntime,
    artifact_logits,
    base_checkpoint,
    onnx_correct,
    parser,
    progress,
    setup,
    validation_images,
    write_json,
)
from benchmarks.dynamic import FULL, QUICK, phase_sketches
from edge_agent.estimator import ConfidenceEstimator
from edge_agent.model import softmax
from edge_agent.simulator import expand_profiles
from workers import export
from workers.demo import _scaled_scenario
from workers.policy import DEFAULT_POLICY, Policy
from workers.retrain import MODEL_FILE, retrain

BUDGETS = (0.045, 0.06, 0.075, 0.09, 0.12)


def choose(summary: list[dict], margin_pp: float) -> float:
    """The largest budget whose mean drop is within the margin; the product default if none is."""
    ok = [r["kl_budget"] for r in summary if r["mean_drop_pp"] <= margin_pp]
    return max(ok, default=DEFAULT_POLICY.kl_budget)


def main() -> None:
    p = parser("fleet_budget", __doc__ or "")
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="comma-separated KL budgets (nats)")
    p.add_argument("--margin", type=float, default=0.5, help="largest mean drop (pp) a chosen budget may have")
    args = p.parse_args()
    setup(threads=args.threads)
    budgets = sorted(float(b) for b in args.budgets.split(","))
    plan = QUICK if args.quick else FULL
    n_images = 1000 if args.quick else 3000
    ck = base_checkpoint()
    runtime = BaseRuntime(ck)
    dense = export.dense_onnx(ck.network(), ck.spec)
    cases = []  # (profile, phase index, images, labels, dense accuracy)
    for k, prof in enumerate(expand_profiles(_scaled_scenario(plan), plan.devices)):
        for i, phase in enumerate(prof.phases):
            x, y = validation_images(ck, phase, n_images, 20_000 + 10 * k + i)
            cases.append((prof, i, x, y, float(onnx_correct(dense, x, y).mean())))
    rows, summary = [], []
    for budget in budgets:
        mine: list[dict[str, Any]] = []
        for prof, i, x, y, dense_acc in cases:
            progress(f"KL {budget}: {prof.device_id} / {prof.phases[i].name}")
            result = retrain(ck, phase_sketches(runtime, prof, i), Policy(kl_budget=budget), device_id=prof.device_id)
            logits = artifact_logits(result.files[MODEL_FILE], x)
            acc = float((logits.argmax(1) == y).mean())
            estimate = ConfidenceEstimator(result.manifest.confidence_profile).estimate(softmax(logits).max(1))
            mine.append({"kl_budget": budget, "device": prof.device_id, "phase": prof.phases[i].name,
                         "compression_ratio": result.metrics["compression_ratio"], "kl": result.metrics["kl"],
                         "accuracy": acc, "dense_accuracy": dense_acc, "drop_pp": 100 * (dense_acc - acc),
                         "estimated_accuracy": estimate, "estimate_error_pp": 100 * ((estimate or 0.0) - acc),
                         "images": len(y)})
            print(f"{budget:>6} {prof.device_id:>16} {prof.phases[i].name:>14} "
                  f"{mine[-1]['compression_ratio']:6.1f}x {100 * acc:6.2f}% (dense {100 * dense_acc:6.2f}%, "
                  f"estimate {mine[-1]['estimate_error_pp']:+.2f} pp)", flush=True)
        rows += mine
        summary.append({"kl_budget": budget, "mean_compression_ratio": float(np.mean([r["compression_ratio"] for r in mine])),
                        "mean_drop_pp": float(np.mean([r["drop_pp"] for r in mine])),
                        "mean_abs_estimate_error_pp": float(np.mean([abs(r["estimate_error_pp"]) for r in mine]))})
    chosen = choose(summary, args.margin)
    print(f"{'KL budget':>10} {'compr.':>7} {'drop':>8} {'|estimate error|':>17}")
    for s in summary:
        print(f"{s['kl_budget']:>10} {s['mean_compression_ratio']:6.1f}x {s['mean_drop_pp']:+7.2f}pp "
              f"{s['mean_abs_estimate_error_pp']:15.2f}pp"
              + ("  <- chosen" if s["kl_budget"] == chosen else ""))
    write_json(args.json, "fleet_budget", rows, summary=summary, chosen=chosen, margin_pp=args.margin,
               devices=plan.devices, images_per_phase=n_images, split="validation")


if __name__ == "__main__":
    main()
