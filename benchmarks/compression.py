"""Compression against accuracy, per method, policy, scenario and calibration.

    python -m benchmarks.compression [--quick] [--seeds N] [--default-only] [--budgets B,B,...]
                                     [--scenarios S,S,...] [--validation] [--align N] [--damp D] [--json PATH]
                                     [--mlflow URI]

Calibration goes through sketches built by the agent's own `SketchBuilder` from the stem outputs
of the dense base artifact running in ONNX Runtime, on training-split images drawn through the
device distribution; every result is evaluated in ONNX Runtime on the test split of the same
distribution. Scenario `full`: every criterion, with and without recovery, at each target
compression, each KL budget, and the default policy; plus an oracle sweep that picks the amount
by labelled validation accuracy (held-out training images; reported as not label-free).
Per-device scenarios: the default policy and the KL budgets, calibrated on the full distribution
(`global`) and on the device's own (`device`; the global mask competes as a fallback).

`--validation` evaluates every result on held-out TRAINING images (never trained on) of the same
distribution instead of the test split: that is how the default KL budget is chosen, e.g.
`--validation --default-only --budgets 0.03,0.035,0.04,0.045 --scenarios "" --seeds 3`
(with `--default-only`, the default policy at each budget is recorded on `full`, `policy` =
`kl_budget=B`). Rows carry `split` (`test` or `validation`). `--align N` runs every policy with
the schedule's width alignment set to N instead of the default's (a candidate default, judged on
validation before it is adopted); rows carry `align`. `--damp D` does the same for the ridge
strength of the least-squares re-fit; rows carry `damp`.

At the end it prints the verdicts of P1, P2 and P8 (`benchmarks.targets`), also stored under
`targets` in the JSON.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from benchmarks import common, plots, targets
from workers import export, nets, retrain, search
from workers.calibration import from_sketches
from workers.importance import CRITERIA
from workers.masks import Pruned
from workers.policy import DEFAULT_POLICY, Policy
from workers.recovery import RecoveryConfig
from workers.runtime_choice import choose_compute

NAME = "compression"
TARGETS = (8, 12, 16, 20, 24)
BUDGETS = (0.02, 0.05)
DEVICE_SCENARIOS = ("classes-footwear", "classes-tops", "classes-trouser-dress-bag", "corrupt-contrast-noise")
ORACLE_AMOUNTS = tuple(np.round(np.linspace(0.5, 0.95, 10), 3))
COLUMNS = [("scenario", "{}"), ("calibration", "{}"), ("method", "{}"), ("policy", "{}"),
           ("target", "{}"), ("compression_ratio", "{:.1f}"), ("accuracy", "{:.4f}"),
           ("drop_pp", "{:+.2f}"), ("kl", "{:.4f}"), ("seconds", "{:.1f}")]


class Bench:
    def __init__(self, quick: bool, seed: int, default_only: bool = False,
                 budgets: tuple[float, ...] | None = None, validation: bool = False,
                 align: int | None = None, damp: float | None = None) -> None:
        self.quick = quick
        # The default policy this run stands for: the product's, or it with another width alignment
        # or ridge strength (candidates for the default, judged on validation before adoption).
        policy = DEFAULT_POLICY
        if align is not None:
            policy = replace(policy, schedule=replace(policy.schedule, align=align))
        if damp is not None:
            policy = replace(policy, recovery=replace(policy.recovery, damp=damp))
        self.policy = policy
        self.default_only = default_only
        self.seed = seed
        self.budgets = budgets if budgets is not None else (0.05,) if quick else BUDGETS
        self.split = "validation" if validation else "test"
        self.n_test = (2000 if quick else 5000) if validation else (2000 if quick else 10_000)
        self.ck = common.base_checkpoint()
        self.runtime = common.BaseRuntime(self.ck)
        self.model = f"{self.ck.name}@{self.ck.base_version}"
        self.table = common.Table(COLUMNS)
        self.rows: list[dict] = []
        self._tests: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        self.pruners: dict[str, retrain.Pruner] = {}
        self.sketch_bytes: dict[str, int] = {}

    def test(self, scenario: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(inputs, labels, dense fp32 accuracy) of the scenario's evaluation distribution: the test
        split, or held-out training images with `--validation`."""
        if scenario not in self._tests:
            if self.split == "validation":
                x, y = common.validation_set(self.ck, scenario, self.seed, self.n_test)
            else:
                x, y = common.test_set(scenario, self.seed, self.n_test)
            dense = common.onnx_accuracy(export.dense_onnx(self.ck.network(), self.ck.spec), x, y)
            self._tests[scenario] = (x, y, dense)
        return self._tests[scenario]

    def pruner(self, scenario: str) -> retrain.Pruner:
        """Calibration from one device's sketches of `scenario` (training images)."""
        if scenario not in self.pruners:
            common.progress(f"seed {self.seed}: sketches of {scenario}")
            sketches = self.runtime.sketches(scenario, self.seed)
            self.sketch_bytes[scenario] = sum(len(s.to_bytes()) for s in sketches)
            calib = from_sketches(self.ck.network(), self.ck.spec, sketches)
            self.pruners[scenario] = retrain.Pruner(self.ck, calib)
        return self.pruners[scenario]

    def record(self, scenario: str, calibration: str, cand: search.Candidate | None, policy_name: str,
               target: float | None, default: bool, seconds: float, blob: bytes | None = None,
               label_free: bool = True, method: str | None = None, kl: float | None = None,
               compute_mode: str | None = None) -> dict:
        x, y, dense = self.test(scenario)
        if blob is None:  # what the product ships: compute per layer as the policy says
            assert cand is not None
            calib = self.pruner("full" if calibration == "global" else scenario).calib
            compute, act = choose_compute(cand.pruned, calib, compute_mode or self.policy.compute)
            blob = export.build_artifact(cand.pruned, compute, act, cand.method)
        acc = common.artifact_accuracy(blob, x, y)
        pruned = cand.pruned if cand is not None else retrain.pruned_from_artifact(blob)
        from qsae_shared import artifact
        from qsae_shared.compression import compression_ratio

        row = {
            "model": self.model, "scenario": scenario, "seed": self.seed,
            "method": method or (cand.method if cand is not None else "?"), "policy": policy_name,
            "target": target, "default_policy": default, "calibration": calibration,
            "label_free": label_free, "split": self.split, "align": self.policy.schedule.align,
            "damp": self.policy.recovery.damp,
            "compression_ratio": compression_ratio(nets.param_count(self.ck.spec), len(blob)),
            "artifact_bytes": len(blob),
            "runtime_weight_bytes": artifact.runtime_weight_bytes(artifact.unpack(blob)),
            "params_kept": pruned.kept_params(), "macs": nets.macs(pruned.spec),
            "sketch_bytes": self.sketch_bytes.get("full" if calibration == "global" else scenario, 0),
            "accuracy": acc, "dense_accuracy": dense, "drop_pp": 100 * (dense - acc),
            "kl": kl if kl is not None else (cand.kl if cand is not None else None),
            "seconds": seconds, "meets_policy": None if cand is None else cand.meets_policy,
            "widths": search.widths(pruned.spec),
            "int8_compute_layers": sorted(int(t.name[1:]) for t in artifact.unpack(blob).tensors.values()
                                          if t.compute == "int8"),
        }
        self.rows.append(row)
        self.table.row(row)
        return row

    def run_policy(self, scenario: str, calibration: str, policy: Policy, policy_name: str,
                   target: float | None, default: bool, fallbacks: dict[str, Pruned] | None = None,
                   method: str | None = None) -> search.Candidate:
        pruner = self.pruner("full" if calibration == "global" else scenario)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        chosen, _ = pruner.search(policy, fallbacks, timings)
        seconds = time.perf_counter() - t0 + sum(v for k, v in timings.items() if k.startswith("score:"))
        self.record(scenario, calibration, chosen, policy_name, target, default, seconds, method=method,
                    compute_mode=policy.compute)
        return chosen

    # --- scenarios ----------------------------------------------------------------------------

    def full(self) -> dict[str, search.Candidate]:
        """Returns the chosen candidates of the default policy and the budgets (global masks)."""
        common.progress(f"seed {self.seed}: scenario full")
        base = self.runtime.release
        self.pruner("full")
        self.record("full", "global", None, "none", None, False, base.seconds,
                    blob=base.files[retrain.MODEL_FILE], method="int8", kl=base.metrics["kl"])
        criteria = () if self.default_only else ("qsae", "magnitude") if self.quick else CRITERIA
        targets = (16,) if self.quick else TARGETS
        budgets = self.budgets
        recoveries = (RecoveryConfig(lsq=False), self.policy.recovery)
        for criterion in criteria:
            for rec in recoveries:
                for t in targets:
                    pol = replace(self.policy, mode="target_compression", target_compression=float(t),
                                  criteria=(criterion,), recovery=rec, min_compression=1.0)
                    self.run_policy("full", "global", pol, f"target_compression={t}", float(t), False)
                for b in budgets:
                    pol = replace(self.policy, kl_budget=b, criteria=(criterion,), recovery=rec,
                                  min_compression=1.0)
                    self.run_policy("full", "global", pol, f"kl_budget={b}", b, False)
        chosen = {"default": self.run_policy("full", "global", self.policy, "default",
                                             self.policy.kl_budget, True)}
        for b in budgets:
            pol = replace(self.policy, kl_budget=b)
            if self.default_only:  # the default policy at each budget, recorded (how the budget is chosen)
                chosen[f"kl_budget={b}"] = self.run_policy("full", "global", pol, f"kl_budget={b}", b, False)
            else:  # recorded per criterion above; searched here for the device scenarios
                chosen[f"kl_budget={b}"] = self.pruners["full"].search(pol)[0]
        if not self.default_only:
            self.oracle()
        return chosen

    def oracle(self) -> None:
        """Not label-free: the amount with the most compression whose labelled validation
        accuracy is within 1 pp of dense (default criterion and recovery)."""
        pruner = self.pruners["full"]
        policy = self.policy
        xv, yv = common.validation_set(self.ck, "full", self.seed, 2000 if self.quick else 5000)
        with torch.no_grad():
            dense_val = float((self.ck.network()(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean())
        t0 = time.perf_counter()
        judge = search.Judge(self.ck.spec, pruner.calib, policy)
        best: search.Candidate | None = None
        amounts = ORACLE_AMOUNTS[::2] if self.quick else ORACLE_AMOUNTS
        for criterion in policy.criteria:
            build = search.builder(pruner.net, pruner.spec, pruner.scores(criterion, policy.qsae),
                                   policy, judge)
            for a in amounts:
                c = pruner.refit_on_all(policy, build(float(a)), judge.size)  # as shipped: re-fitted on all samples
                with torch.no_grad():
                    acc = float((c.pruned.net(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean())
                if dense_val - acc <= 0.01 and (best is None or c.compression_ratio > best.compression_ratio):
                    best = c
        if best is not None:
            self.record("full", "global", best, "oracle-validation-1pp", None, False,
                        time.perf_counter() - t0, label_free=False)

    def device(self, scenario: str, global_chosen: dict[str, search.Candidate]) -> None:
        common.progress(f"seed {self.seed}: scenario {scenario}")
        policies = [("default", self.policy, True)] + [
            (f"kl_budget={b}", replace(self.policy, kl_budget=b), False)
            for b in (() if self.quick else self.budgets)]
        for name, pol, default in policies:
            g = global_chosen[name]
            self.record(scenario, "global", g, name, pol.kl_budget, default, g.seconds)
            self.run_policy(scenario, "device", pol, name, pol.kl_budget, default,
                            fallbacks={"global": g.pruned})


def main() -> None:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--default-only", action="store_true",
                   help="only the int8 baseline, the default policy and the KL budgets (for --seeds runs)")
    p.add_argument("--scenarios", default=None,
                   help='comma-separated device scenarios (default: all; "" for none)')
    p.add_argument("--budgets", default=None,
                   help=f"comma-separated KL budgets besides the default policy's (default: {BUDGETS})")
    p.add_argument("--validation", action="store_true",
                   help="evaluate on held-out training images instead of the test split (choosing the budget)")
    p.add_argument("--align", type=int, default=None,
                   help="width alignment of every policy's schedule (default: the default policy's)")
    p.add_argument("--damp", type=float, default=None,
                   help="ridge strength of every policy's least-squares re-fit (default: the default policy's)")
    args = p.parse_args()
    budgets = None if args.budgets is None else tuple(float(b) for b in args.budgets.split(",") if b)
    common.setup(args.threads)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for seed in range(args.seeds):
        bench = Bench(args.quick, seed, args.default_only, budgets, args.validation, args.align, args.damp)
        chosen = bench.full()
        scen = ("classes-footwear", "corrupt-contrast-noise") if args.quick else DEVICE_SCENARIOS
        if args.scenarios is not None:
            scen = tuple(x for x in args.scenarios.split(",") if x)
        for s in scen:
            bench.device(s, chosen)
        rows += bench.rows
        common.write_json(args.json, NAME, rows, seeds=args.seeds, quick=args.quick,
                          split=bench.split, targets=targets.verdicts(rows),
                          default_policy=bench.policy.describe(), seconds=time.perf_counter() - t0)
    figure = plots.save(args.json)
    verdicts = targets.verdicts(rows)
    common.log_mlflow(args.mlflow, f"qsae-fleet/{NAME}", rows, figure=figure, verdicts=verdicts,
                      params=("model", "scenario", "seed", "method", "policy", "target", "calibration",
                              "default_policy", "label_free", "align", "damp"),
                      metrics=("compression_ratio", "artifact_bytes", "runtime_weight_bytes", "params_kept",
                               "macs", "sketch_bytes", "accuracy", "dense_accuracy", "drop_pp", "kl", "seconds"))
    print("\n".join(targets.lines(verdicts)), flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
