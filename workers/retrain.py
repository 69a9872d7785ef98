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
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from qsae_shared import artifact
from qsae_shared.accuracy import Z_ONE_SIDED_95
from qsae_shared.compression import compression_ratio
from qsae_shared.data import preprocessing_spec
from qsae_shared.manifest import FileEntry, Manifest, PolicyFloors
from qsae_shared.signing import SigningKey
from qsae_shared.sketch import Sketch
from workers import calibration, export, importance, masks, nets, onnx_graph, profile, search
from workers.calibration import Calibration
from workers.errors import PolicyError
from workers.masks import Pruned
from workers.onnx_graph import ActQuant
from workers.policy import DEFAULT_POLICY, Policy
from workers.qsae import QSAEConfig
from workers.recovery import quantize_weights, recover
from workers.search import Candidate, ShippedSize
from workers.training import Checkpoint

log = logging.getLogger(__name__)

MODEL_FILE = "model.qart"


@dataclass
class RetrainResult:
    manifest: Manifest  # signed when a key was given
    files: dict[str, bytes]  # file name -> bytes (one artifact: MODEL_FILE)
    metrics: dict[str, float]  # kl, compression_ratio, artifact_bytes, ...
    candidates: list[dict]  # every candidate the search evaluated (summaries)
    chosen: Candidate  # the deployed candidate
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
            layer = nets.weighted_layer(net, i)
            layer.weight.copy_(torch.from_numpy(t.values.astype(np.float32) * t.scales.reshape(view)))
            nets.bias(layer).copy_(torch.from_numpy(contents.tensors[b_name].values))
            if t.mask is not None:
                masks[i] = torch.from_numpy(t.mask)
            elif i >= spec["stem_end"]:
                masks[i] = torch.from_numpy(t.values != 0)
    keep = {int(k): np.asarray(v, dtype=np.int64) for k, v in meta.get("keep", {}).items()}
    return Pruned(spec, net.eval(), masks, keep)


class Pruner:
    """One base model on one calibration set: importance scores are computed once per criterion
    and shared by every policy searched on it (the benchmarks search many)."""

    def __init__(self, ck: Checkpoint, calib: Calibration) -> None:
        self.ck = ck
        self.net, self.spec = ck.network(), ck.spec
        self.calib = calib
        self._scores: dict[tuple, importance.Scores] = {}
        self.score_seconds: dict[str, float] = {}
        self._searched: dict[Policy, tuple[Candidate, list[Candidate]]] = {}

    def scores(self, criterion: str, qsae_cfg: QSAEConfig) -> importance.Scores:
        key = (criterion, qsae_cfg)
        if key not in self._scores:
            t0 = time.perf_counter()
            self._scores[key] = importance.score(criterion, self.net, self.spec, self.calib, qsae_cfg)
            self.score_seconds[criterion] = time.perf_counter() - t0
        return self._scores[key]

    def search(self, policy: Policy, fallbacks: dict[str, Pruned] | None = None,
               timings: dict[str, float] | None = None) -> tuple[Candidate, list[Candidate]]:
        """The portfolio: every criterion searched under the policy, plus fallbacks judged on
        the same held-out samples. Returns (chosen, every candidate)."""
        timings = timings if timings is not None else {}
        if not fallbacks and policy in self._searched:
            return self._searched[policy]
        judge = search.Judge(self.spec, self.calib, policy)
        found: list[Candidate] = []
        for criterion in policy.criteria:
            scores = self.scores(criterion, policy.qsae)
            timings[f"score:{criterion}"] = self.score_seconds.get(criterion, 0.0)
            t0 = time.perf_counter()
            build = search.builder(self.net, self.spec, scores, policy, judge)
            size = search.sizer(self.net, self.spec, scores, policy, judge.size)
            found += search.bisect(build, policy, size)
            timings[f"search:{criterion}"] = time.perf_counter() - t0
        for name, p in (fallbacks or {}).items():
            found.append(judge(p, f"fallback:{name}", float("nan"), "none", time.perf_counter()))
        chosen = search.best(found, policy)
        if chosen is None:
            chosen = search.closest(found, policy)
            log.warning("no candidate meets the policy %s; closest: %s kl %.4f %.1fx",
                        policy.describe(), chosen.method, chosen.kl, chosen.compression_ratio)
        if policy.refit_all and policy.folds > 1 and not chosen.criterion.startswith("fallback:"):
            t0 = time.perf_counter()
            chosen = self.refit_on_all(policy, chosen, judge.size)
            timings["refit_all"] = time.perf_counter() - t0
        if not fallbacks:
            self._searched[policy] = (chosen, found)
        return chosen, found

    def refit_on_all(self, policy: Policy, chosen: Candidate, size: ShippedSize) -> Candidate:
        """The chosen mask, re-fitted on the whole calibration set. Its KL stays the cross-fitted
        KL of the search (conservative: the shipped re-fit saw more data); its size is judged as
        the search's were (`size`: the search's own, whose int8 overhead is already measured)."""
        scores = self.scores(chosen.criterion, policy.qsae)
        mask = masks.build(self.spec, scores, chosen.amount, policy.schedule)
        pruned = masks.shrink(self.net, mask, self.spec)
        recover(pruned, self.net, self.spec, self.calib, policy.recovery)
        nbytes = size(pruned, chosen.method)
        refit = replace(chosen, pruned=pruned, artifact_bytes=nbytes,
                        compression_ratio=compression_ratio(nets.param_count(self.spec), nbytes),
                        params_kept=pruned.kept_params(), notes={**chosen.notes, "refit_all": True})
        meets = search.Judge(self.spec, self.calib, replace(policy, folds=1)).meets(refit)
        return refit if meets or not chosen.meets_policy else chosen  # its int8 values may pack larger


SHADOW_INPUTS = 256  # the agent's default `recent_inputs`: what shadow evaluation measures agreement on


def shadow_floor(agreement: float, samples: int, default: float = PolicyFloors.shadow_agreement_min) -> float:
    """The agreement with the base a version needs in shadow evaluation: the default floor, or lower
    where the version agreed less with the base on held-out samples of the device's own calibration
    data (`samples` of them), less 1.645 standard errors of the difference between a 256-input
    measurement and that estimate. On hard data (rain: the base is 81 % right) a version within 1 pp
    of the base's accuracy still disagrees with it on about a tenth of the inputs, and a fixed 0.9
    refused such versions at random. The estimate must be held out: the shipped network is re-fitted
    on every calibration sample, and there it agreed 0.975 with the base where new rain images gave
    0.916 to 0.923 (docs/agent.md)."""
    p = agreement
    return min(default, p - Z_ONE_SIDED_95 * math.sqrt(p * (1 - p) * (1 / SHADOW_INPUTS + 1 / max(samples, 1))))


def _package(ck: Checkpoint, chosen: Candidate, calib: Calibration, policy: Policy,
             device_id: str | None, signing_key: SigningKey | None, extra: dict,
             pruned: bool = True, timings: dict[str, float] | None = None,
             ) -> tuple[Manifest, dict[str, bytes], dict[str, float]]:
    """pruned: False for the dense base, whose confidence profile is measured on labelled images."""
    p = chosen.pruned
    compute = {i: "fp32" for i in nets.weighted_indices(p.spec)}
    act = None
    if policy.compute != "fp32":
        from workers.runtime_choice import choose_compute

        t0 = time.perf_counter()
        compute, act = choose_compute(p, calib, policy.compute)
        if timings is not None:  # measured on a new shape, or read from the cache
            timings["compute_choice"] = time.perf_counter() - t0
    blob = export.build_artifact(p, compute, act, chosen.method)
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
    head = sim[ck.spec["stem_end"]:]
    with torch.no_grad():
        agreement = search.top_class_agreement(calib.logits, head(calib.stem_out))
    metrics["calibration_agreement"] = agreement  # with the base, on the device's calibration set
    # held out: the search's cross-fitted agreement (a fallback, fitted on earlier data, is judged whole)
    heldout = agreement if np.isnan(chosen.agreement) else chosen.agreement
    metrics["heldout_agreement"] = heldout
    val_logits, _ = export.run(export.session(artifact.to_onnx(contents)), prof.val_inputs)
    confidence = profile.confidence_profile(head, prof, calib.stem_out, calib.logits if pruned else None,
                                            val_logits=val_logits)
    # What the agent's label-free estimate says of this version on the data it was calibrated on.
    metrics["estimated_accuracy"] = float(np.dot(confidence.reference_hist, confidence.accuracy))
    method = {"criterion": chosen.criterion, "recovery": chosen.recovery, "method": chosen.method,
              "policy": policy.describe(), "widths": search.widths(p.spec),
              "compute": {str(k): v for k, v in compute.items()}, **extra}
    manifest = Manifest(
        version_id=f"{ck.name}-{device_id or 'fleet'}-{sha[:12]}", base_model=ck.name,
        base_version=ck.base_version, device_id=device_id, created_at=time.time(),
        preprocessing=preprocessing_spec(), input_name=onnx_graph.INPUT,
        output_name=onnx_graph.LOGITS, stem_output_name=onnx_graph.STEM,
        stem_shape=profile.stem_shape(ck.spec), hist_edges=prof.hist_edges.tolist(),
        confidence_profile=confidence,
        floors=PolicyFloors(shadow_agreement_min=shadow_floor(heldout, calib.size)) if pruned else PolicyFloors(),
        method=method, metrics=metrics,
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
    if calib is None:
        net, spec = ck.network(), ck.spec
        if any(s.base_model != ck.name for s in sketches):
            raise PolicyError(f"sketches of another base model than {ck.name}")
        t0 = time.perf_counter()
        calib = calibration.from_sketches(net, spec, sketches, calibration_size)
        timings["calibration"] = time.perf_counter() - t0
    fb = {name: pruned_from_artifact(data) for name, data in (fallbacks or {}).items()}
    pruner = Pruner(ck, calib)
    chosen, found = pruner.search(policy, fb, timings)
    return finish(pruner, chosen, found, policy, device_id, signing_key, sketches, timings, t_start)


def finish(pruner: Pruner, chosen: Candidate, found: list[Candidate], policy: Policy,
           device_id: str | None, signing_key: SigningKey | None, sketches: list[Sketch],
           timings: dict[str, float], t_start: float) -> RetrainResult:
    """Export the chosen candidate: artifact, manifest (signed when a key is given), metrics."""
    ck, calib = pruner.ck, pruner.calib
    t0 = time.perf_counter()
    extra = {"device_id": device_id, "sketch_seqs": sorted(s.seq for s in sketches),
             "calibration": calib.source}
    manifest, files, metrics = _package(ck, chosen, calib, policy, device_id, signing_key, extra,
                                        timings=timings)
    timings["export"] = time.perf_counter() - t0 - timings.get("compute_choice", 0.0)
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
                                        {"calibration": calib.source, "reference": True}, pruned=False)
    return RetrainResult(manifest, files, metrics, [cand.summary()], cand, True,
                         time.perf_counter() - t0)


def simulate_network(data: bytes) -> tuple[nn.Sequential, nets.Spec]:
    """The torch simulation of an artifact: what ONNX Runtime computes, up to float rounding."""
    contents = artifact.unpack(data)
    p = pruned_from_artifact(data)
    compute = {int(t.name[1:]): t.compute for t in contents.tensors.values() if t.name.startswith("w")}
    act = {int(k): ActQuant(float(v[0]), int(v[1]), float(v[2]), int(v[3]))
           for k, v in contents.header.get("meta", {}).get("act", {}).items()}
    return export.simulate(p.net, p.spec, compute, act), p.spec
