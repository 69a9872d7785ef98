"""One device's retrain, end to end: sketches -> calibration -> importance -> KL-budgeted search
-> recovery -> int8 artifact + manifest. This is what the dispatcher runs per job.

    result = retrain(checkpoint, sketches, policy, device_id="dev-1")
    result.manifest, result.files, result.metrics, result.candidates

`export_base` builds the dense int8 artifact of a base model (the fleet-wide starting version).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from qsae_shared import artifact
from qsae_shared.compression import compression_ratio
from qsae_shared.data import preprocessing_spec
from qsae_shared.manifest import FileEntry, Manifest, PolicyFloors
from qsae_shared.signing import SigningKey
from qsae_shared.sketch import Sketch
from workers import calibration, export, importance, masks, nets, onnx_graph, profile, search
from workers.calibration import Calibration
from workers.errors import PolicyError
from workers.masks import Pruned
from workers.policy import DEFAULT_POLICY, Policy
from workers.recovery import quantize_weights, recover
from workers.training import Checkpoint

log = logging.getLogger(__name__)

MODEL_FILE = "model.qart"


@dataclass
class RetrainResult:
    manifest: Manifest  # signed when a key was given
    files: dict[str, bytes]  # file name -> bytes (one artifact: MODEL_FILE)
    metrics: dict[str, float]  # kl, compression_ratio, artifact_bytes, ...
    candidates: list[dict]  # every candidate the search evaluated (summaries)
    chosen: search.Candidate  # the deployed candidate
    meets_policy: bool  # whether the chosen candidate meets the policy
    seconds: float  # wall time of the whole retrain
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


def dense_pruned(ck: Checkpoint) -> Pruned:
    """The dense base as a 'pruned' network that removes nothing (int8-rounded weights)."""
    net = copy.deepcopy(ck.network())
    p = Pruned(copy.deepcopy(ck.spec), net, {}, {})
    quantize_weights(p, 0)
    return p


def pruned_from_artifact(data: bytes) -> Pruned:
    """Rebuild the torch network of an artifact (for fallbacks and tests)."""
    contents = artifact.unpack(data)
    meta = contents.header.get("meta", {})
    spec = meta["spec"]
    net = nets.build(spec)
    masks: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i in nets.weighted_indices(spec):
            w_name, b_name = onnx_graph.weight_names(i)
            t = contents.tensors[w_name]
            assert t.scales is not None
            view = (-1,) + (1,) * (t.values.ndim - 1)
            net[i].weight.copy_(torch.from_numpy(t.values.astype(np.float32) * t.scales.reshape(view)))
            net[i].bias.copy_(torch.from_numpy(contents.tensors[b_name].values))
            if t.mask is not None:
                masks[i] = torch.from_numpy(t.mask)
            elif i >= spec["stem_end"]:
                masks[i] = torch.from_numpy(t.values != 0)
    keep = {int(k): np.asarray(v, dtype=np.int64) for k, v in meta.get("keep", {}).items()}
    return Pruned(spec, net.eval(), masks, keep)


def _meta(p: Pruned, c: search.Candidate | None) -> dict:
    return {"spec": p.spec, "keep": {str(k): [int(i) for i in v] for k, v in p.keep.items()},
            "method": None if c is None else c.method}


def search_candidates(ck: Checkpoint, calib: Calibration, policy: Policy,
                      fallbacks: dict[str, Pruned] | None = None,
                      timings: dict[str, float] | None = None) -> tuple[search.Candidate, list[search.Candidate]]:
    """Run the portfolio: every criterion searched under the policy, plus fallbacks judged on
    this calibration set. Returns (chosen, all candidates)."""
    net, spec = ck.network(), ck.spec
    fit, held = calib.split(policy.holdout)
    judge = search.Judge(spec, held, policy)
    timings = timings if timings is not None else {}
    found: list[search.Candidate] = []
    all_scores = {}
    for criterion in policy.criteria:
        t0 = time.perf_counter()
        all_scores[criterion] = scores = importance.score(criterion, net, spec, fit, policy.qsae)
        timings[f"score:{criterion}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        found += search.bisect(search.builder(net, spec, fit, scores, policy, judge), policy)
        timings[f"search:{criterion}"] = time.perf_counter() - t0
    for name, p in (fallbacks or {}).items():
        found.append(judge(p, f"fallback:{name}", float("nan"), "none", time.perf_counter()))
    chosen = search.best(found, policy)
    if chosen is None:
        chosen = search.closest(found, policy)
        log.warning("no candidate meets the policy %s; closest: %s kl %.4f %.1fx", policy.describe(),
                    chosen.method, chosen.kl, chosen.compression_ratio)
    if policy.refit_all and fit is not calib and chosen.criterion in all_scores:
        t0 = time.perf_counter()
        chosen = refit_on_all(net, spec, calib, all_scores[chosen.criterion], policy, chosen)
        timings["refit_all"] = time.perf_counter() - t0
    return chosen, found


def refit_on_all(net: nn.Module, spec: nets.Spec, calib: Calibration, scores: importance.Scores,
                 policy: Policy, chosen: search.Candidate) -> search.Candidate:
    """The chosen mask, re-fitted on the whole calibration set. Its KL stays the held-out KL of
    the search (a conservative estimate: the shipped re-fit saw more data)."""
    mask = masks.build(spec, scores, chosen.amount, policy.schedule)
    pruned = masks.shrink(net, mask, spec)
    recover(pruned, net, spec, calib, policy.recovery)
    size = len(export.build_artifact(pruned))
    return replace(chosen, pruned=pruned, artifact_bytes=size,
                   compression_ratio=compression_ratio(nets.param_count(spec), size),
                   params_kept=pruned.kept_params(), notes={**chosen.notes, "refit_all": True})


def _package(ck: Checkpoint, chosen: search.Candidate, calib: Calibration, policy: Policy,
             device_id: str | None, signing_key: SigningKey | None, extra: dict) -> tuple[Manifest, dict[str, bytes], dict[str, float]]:
    p = chosen.pruned
    compute = {i: "fp32" for i in nets.weighted_indices(p.spec)}
    act = None
    if policy.compute != "fp32":
        from workers.runtime_choice import choose_compute

        compute, act = choose_compute(p, calib, policy.compute)
    blob = export.build_artifact(p, compute, act, _meta(p, chosen))
    sha = hashlib.sha256(blob).hexdigest()
    contents = artifact.unpack(blob)
    prof = profile.base_profile(ck)
    sim = export.simulate(p.net, p.spec, compute, act)
    metrics = {
        "kl": float(chosen.kl), "compression_ratio": compression_ratio(nets.param_count(ck.spec), len(blob)),
        "artifact_bytes": float(len(blob)), "params_kept": float(chosen.params_kept),
        "macs": float(chosen.macs), "runtime_weight_bytes": float(artifact.runtime_weight_bytes(contents)),
        "calibration_size": float(calib.size), "amount": float(0.0 if np.isnan(chosen.amount) else chosen.amount),
    }
    method = {"criterion": chosen.criterion, "recovery": chosen.recovery, "method": chosen.method,
              "policy": policy.describe(), "widths": search.widths(p.spec),
              "compute": {str(k): v for k, v in compute.items()}, **extra}
    manifest = Manifest(
        version_id=f"{ck.name}-{device_id or 'fleet'}-{sha[:12]}", base_model=ck.name,
        base_version=ck.base_version, device_id=device_id, created_at=time.time(),
        preprocessing=preprocessing_spec(), input_name=onnx_graph.INPUT,
        output_name=onnx_graph.LOGITS, stem_output_name=onnx_graph.STEM,
        stem_shape=profile.stem_shape(ck.spec), hist_edges=prof.hist_edges.tolist(),
        confidence_profile=profile.confidence_profile(sim[ck.spec["stem_end"]:], prof, calib.stem_out),
        floors=PolicyFloors(), method=method, metrics=metrics,
        files=[FileEntry(MODEL_FILE, artifact.MODEL_ROLE, len(blob), sha)])
    if signing_key is not None:
        manifest = signing_key.sign_manifest(manifest)
    return manifest, {MODEL_FILE: blob}, metrics


def retrain(ck: Checkpoint, sketches: list[Sketch], policy: Policy = DEFAULT_POLICY,
            device_id: str | None = None, signing_key: SigningKey | None = None,
            fallbacks: dict[str, bytes] | None = None, calib: Calibration | None = None,
            calibration_size: int = calibration.DEFAULT_CALIBRATION_SIZE) -> RetrainResult:
    """Prune the base model for one device from its sketches alone (no labels, no inputs).

    fallbacks: name -> artifact bytes of existing versions (e.g. the fleet-wide mask) that are
    judged on this device's calibration set and win when they are better under the policy.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    net, spec = ck.network(), ck.spec
    if calib is None:
        if any(s.base_model != ck.name for s in sketches):
            raise PolicyError(f"sketches of another base model than {ck.name}")
        t0 = time.perf_counter()
        calib = calibration.from_sketches(net, spec, sketches, calibration_size)
        timings["calibration"] = time.perf_counter() - t0
    fb = {name: pruned_from_artifact(data) for name, data in (fallbacks or {}).items()}
    chosen, found = search_candidates(ck, calib, policy, fb, timings)
    t0 = time.perf_counter()
    extra = {"device_id": device_id, "sketch_seqs": sorted(s.seq for s in sketches),
             "calibration": calib.source}
    manifest, files, metrics = _package(ck, chosen, calib, policy, device_id, signing_key, extra)
    timings["export"] = time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    metrics["seconds"] = seconds
    manifest = replace(manifest, metrics=dict(metrics))
    if signing_key is not None:
        manifest = signing_key.sign_manifest(manifest)
    log.info("retrain %s: %s kl %.4f %.1fx in %.1f s (%s)", device_id or "fleet", chosen.method,
             chosen.kl, metrics["compression_ratio"], seconds,
             ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return RetrainResult(manifest, files, metrics, [c.summary() for c in found], chosen,
                         chosen.meets_policy, seconds, timings)


def export_base(ck: Checkpoint, signing_key: SigningKey | None = None,
                policy: Policy = DEFAULT_POLICY) -> RetrainResult:
    """The dense base model as an int8 artifact (no pruning): the fleet's starting version."""
    t0 = time.perf_counter()
    prof = profile.base_profile(ck)
    net = ck.network()
    with torch.no_grad():
        stem = prof.val_stem[:512]
        calib = calibration.from_stem_outputs(net, ck.spec, stem, source="validation images")
    dense_policy = replace(policy, mode="kl_budget", min_compression=1.0)
    judge = search.Judge(ck.spec, calib, dense_policy)
    cand = judge(dense_pruned(ck), "int8", 0.0, "none", t0)
    manifest, files, metrics = _package(ck, cand, calib, dense_policy, None, signing_key,
                                        {"calibration": calib.source})
    return RetrainResult(manifest, files, metrics, [cand.summary()], cand, True,
                         time.perf_counter() - t0)


def simulate_network(data: bytes) -> tuple[nn.Sequential, nets.Spec]:
    """The torch simulation of an artifact: what ONNX Runtime computes, up to float rounding."""
    contents = artifact.unpack(data)
    p = pruned_from_artifact(data)
    compute = {int(t.name[1:]): t.compute for t in contents.tensors.values() if t.name.startswith("w")}
    return export.simulate(p.net, p.spec, compute, None), p.spec
