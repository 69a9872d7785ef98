"""Installs model versions like an A/B update, and rolls them back.

For a desired version it: verifies the manifest's signature against the keys pinned at
enrollment; downloads every file and checks its size and sha256; unpacks and loads it; shadow-
evaluates it against the serving model on recent inputs kept on the device (agreement at least
the manifest's floor); switches the `current` pointer atomically, keeping the last known good
version; then watches the new version for `rollback_window` inferences and rolls back to the
last known good one if its accuracy (labelled where feedback arrives, estimated otherwise) fell
by more than the manifest's `rollback_accuracy_drop_pp`: judged with both versions on the same
recent inputs where the previous one still loads, so that data drifting during probation is not
blamed on the version. Every transition becomes an event.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge_agent.backoff import Backoff
from edge_agent.client import Assignment, FleetClient
from edge_agent.errors import InstallError, NotEnrolledError, RejectedError, RetryableError
from edge_agent.model import LoadedModel, softmax
from edge_agent.runtime import Runtime
from edge_agent.state import load_credentials, save_credentials
from edge_agent.store import Blocked, ModelStore, Pointer
from edge_agent.telemetry import WindowSummary
from qsae_shared.accuracy import significant_drop, significant_paired_drop
from qsae_shared.canonical import canonical_json
from qsae_shared.errors import ArtifactError, SignatureError, WireFormatError
from qsae_shared.keyrotation import chain_from_manifest_extra, follow
from qsae_shared.manifest import Manifest
from qsae_shared.signing import verify_manifest
from qsae_shared.sketch import SketchBuilder

logger = logging.getLogger(__name__)

MIN_LABELS = 50  # labels needed, on each side, before labelled accuracy decides a rollback
LABEL_WAIT_FACTOR = 10  # judge without labels after this many rollback windows
MIN_PAIRED_INPUTS = 64  # recent inputs needed to compare two versions on the same data
BASELINE_LABELS = 300  # newest labels of the previous version a probation compares against
BASELINE_PREDICTIONS = 1000  # newest predictions behind the previous version's estimate

EventSink = Callable[[str, "str | None", str], None]  # (kind, version_id, reason)
FlushSink = Callable[[tuple[WindowSummary | None, SketchBuilder | None]], None]  # what Runtime.swap returns


@dataclass(frozen=True)
class PairedComparison:
    """The version on probation and the one before it, run on the same recent inputs."""

    inputs: int
    agreement: float  # share of inputs where both predict the same class
    estimated_current: float  # label-free estimates, each version with its own profile
    estimated_previous: float
    # How much less accurate the current version is estimated to be: where both predict the same
    # class they are equally right, so only the disagreements count (each version's own profile
    # there). Whole-input estimates would compare two profiles' biases on every input instead.
    estimated_drop: float
    labelled: int  # inputs whose label came back while still held
    labelled_current: float
    labelled_previous: float
    lost: int  # labelled inputs only the previous version got right
    gained: int  # labelled inputs only the current version got right


def _lost_gained(right_old: np.ndarray, right_new: np.ndarray) -> tuple[int, int]:
    """Of the same labelled inputs: how many only the old version got right, and only the new one."""
    return int((right_old & ~right_new).sum()), int((right_new & ~right_old).sum())


def manifest_digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(doc)).hexdigest()[:16]


class Updater:
    def __init__(self, device_id: str, base_model: str, signing_keys: dict[str, str], store: ModelStore,
                 runtime: Runtime, client: FleetClient, emit: EventSink, flush: FlushSink,
                 max_attempts: int = 3, intra_op_threads: int = 1) -> None:
        self.device_id = device_id
        self.base_model = base_model
        self.signing_keys = signing_keys  # pinned at enrollment
        self.store = store
        self.runtime = runtime
        self.client = client
        self.emit = emit  # stores an event in the outbox
        self.flush = flush  # stores the telemetry window and sketch a swap closed
        self.max_attempts = max_attempts
        self.intra_op_threads = intra_op_threads
        self.last_error: str | None = None  # why the last install or the last version failed
        self.backoff = Backoff(base_s=5.0, cap_s=600.0)  # between attempts at a failing version
        self.retry_at = 0.0  # no install attempt before this time
        self._previous: LoadedModel | None = None  # the version before the one on probation, to compare with

    # ----- start-up -----

    def load_current(self) -> None:
        """Serve what the pointer says; fall back to the last known good version if the current
        one no longer verifies (disk corruption, a crash mid-install is impossible by design)."""
        p = self.store.pointer()
        for version in dict.fromkeys([p.current, p.last_known_good]):
            if version is None:
                continue
            try:
                model = self._load(version)
            except (InstallError, ArtifactError, WireFormatError, OSError) as exc:
                logger.error("device_id=%s model_version=%s cannot be loaded: %s", self.device_id, version, exc)
                self.emit("failed", version, f"installed version no longer loads: {exc}")
                continue
            if version != p.current:
                self.store.set_pointer(Pointer(version, version, None, p.reference))
                self.emit("rolled_back", p.current, f"current version failed to load; serving {version}")
            self.flush(self.runtime.swap(model))
            return

    def _load(self, version: str) -> LoadedModel:
        manifest = self.store.manifest(version)
        return LoadedModel(manifest, self.store.materialize(version, manifest), self.intra_op_threads)

    # ----- reconcile -----

    def reconcile(self, assignment: Assignment | None, now: float) -> None:
        """Move towards the desired version (no-op when already there, when it was refused, or
        while a failed attempt's backoff runs)."""
        if assignment is None or assignment.desired_version is None or assignment.manifest is None:
            return
        desired = assignment.desired_version
        if desired == self.runtime.version or now < self.retry_at:
            return
        digest = manifest_digest(assignment.manifest)
        blocked = self.store.blocked().get(desired)
        if blocked and blocked.final and blocked.manifest_digest in (None, digest):
            return
        attempts = (blocked.attempts if blocked and blocked.manifest_digest == digest else 0) + 1
        try:
            try:
                self.install(desired, assignment.manifest)
            except (InstallError, RetryableError):
                raise
            except Exception as exc:  # e.g. a full disk: not the version's fault, but no hot loop either
                logger.exception("device_id=%s model_version=%s install failed unexpectedly", self.device_id,
                                 desired)
                raise InstallError(f"install failed on the device: {type(exc).__name__}: {exc}") from exc
        except InstallError as exc:
            final = exc.final or attempts >= self.max_attempts
            self.store.block(desired, Blocked(str(exc), final, attempts, digest))
            self.last_error = str(exc)
            logger.warning("device_id=%s model_version=%s refused (attempt %d%s): %s", self.device_id, desired,
                           attempts, ", final" if final else "", exc)
            if final:
                self.emit("rejected", desired, str(exc))
            else:
                self.retry_at = now + self.backoff.next_delay()
                self.emit("failed", desired, f"attempt {attempts} of {self.max_attempts}: {exc}")
        else:
            self.backoff.reset()
            self.retry_at = 0.0

    def install(self, version: str, manifest_doc: dict[str, Any]) -> None:
        """Download, verify, shadow-evaluate and switch to `version`. Raises InstallError (the old
        model keeps serving) or RetryableError (try again later)."""
        manifest = self._verified_manifest(version, manifest_doc)
        if not (self.store.has(version) and self.store.manifest(version).to_json() == manifest.to_json()):
            staging = self.store.staging_dir(version)
            for entry in manifest.files:
                got = self._download(entry.sha256, staging / "files" / entry.name, entry.size)
                if got != entry.sha256:
                    raise InstallError(f"file {entry.name} has sha256 {got[:12]}..., the signed manifest "
                                       f"says {entry.sha256[:12]}... (corrupted or tampered download)")
            self.emit("downloaded", version, f"{len(manifest.files)} file(s), {manifest.download_bytes} bytes")
            self.store.commit(version, staging, manifest.to_json())
        try:
            candidate = self._load(version)
            x, _ = self.runtime.recent()
            candidate.check_shapes(x[:8] if len(x) else np.zeros((1, 1, 28, 28), np.float32))
        except (ArtifactError, InstallError) as exc:
            self.store.prune(self._keep())
            raise InstallError(f"version {version} does not verify: {exc}", final=True) from exc
        self.emit("verified", version, "signature, sha256 and model outputs check out")
        self._shadow_evaluate(candidate)
        self._switch(candidate)

    def _verified_manifest(self, version: str, doc: dict[str, Any]) -> Manifest:
        try:
            manifest = Manifest.from_dict(doc)
        except WireFormatError as exc:
            raise InstallError(f"manifest of {version} is malformed: {exc}", final=True) from exc
        try:
            verify_manifest(manifest, self.signing_keys)
        except SignatureError as exc:
            if self._follow_key_rotation(manifest):
                return self._verified_manifest(version, doc)
            raise InstallError(f"{exc} (keys pinned at enrollment: "
                                      f"{', '.join(sorted(self.signing_keys)) or 'none'})", final=True) from exc
        if manifest.version_id != version:
            raise InstallError(f"assignment names {version} but its manifest is {manifest.version_id}", final=True)
        if manifest.base_model != self.base_model:
            raise InstallError(f"version {version} is built on {manifest.base_model}, this device "
                                      f"runs {self.base_model}", final=True)
        return manifest

    def _follow_key_rotation(self, manifest: Manifest) -> bool:
        """A manifest signed by a key this device does not pin may carry the server's rotation
        announcements (qsae_shared.keyrotation): follow them from the pinned keys, and pin the new
        key if, and only if, the chain reaches the manifest's key and the manifest verifies."""
        if manifest.key_id in self.signing_keys:
            return False  # a pinned key with a bad signature: nothing to follow
        keys, applied = follow(self.signing_keys, chain_from_manifest_extra(manifest.extra))
        if manifest.key_id not in keys:
            return False
        try:
            verify_manifest(manifest, keys)
        except SignatureError:
            return False
        self.signing_keys.clear()
        self.signing_keys.update(keys)  # the dict the agent's credentials hold: pinned from now on
        state_dir = self.store.pointer_path.parent
        with contextlib.suppress(NotEnrolledError):  # no state folder (tests): pinned in memory only
            save_credentials(state_dir, replace(load_credentials(state_dir), signing_keys=dict(keys)))
        logger.info("device_id=%s followed %d signing key rotation(s) to %s; pinned keys now %s", self.device_id,
                    len(applied), manifest.key_id, ", ".join(sorted(keys)))
        return True

    def _download(self, sha256: str, dest: Any, size: int) -> str:
        try:
            return self.client.download(sha256, dest, size)
        except RejectedError as exc:  # e.g. 404: the server does not have that file
            raise InstallError(f"artifact {sha256[:12]} cannot be downloaded: {exc.reason}") from exc

    def _shadow_evaluate(self, candidate: LoadedModel) -> None:
        current = self.runtime.model
        x, y = self.runtime.recent()
        if current is None or len(x) == 0:
            return
        floors = candidate.manifest.floors
        cur = current.run(x).logits.argmax(axis=1)
        new = candidate.run(x).logits.argmax(axis=1)
        # Agreement is judged against the base model, as the version's floor was set (its agreement
        # with the base on the device's calibration data): the serving version may be one pruned
        # for data the device no longer sees, and disagreeing with it is no reason to refuse.
        judge = self._reference(current)
        ref = cur if judge is current else judge.run(x).logits.argmax(axis=1)
        agreement = float((ref == new).mean())
        labelled = y >= 0
        detail = f"agreement {agreement:.3f} with {judge.version} on {len(x)} recent inputs"
        is_reference = bool(candidate.manifest.method.get("reference"))
        if agreement < floors.shadow_agreement_min and not is_reference:
            self.store.prune(self._keep())
            raise InstallError(f"shadow evaluation: {detail}, below the floor "
                                      f"{floors.shadow_agreement_min:.3f}", final=True)
        if labelled.sum() >= MIN_LABELS:
            right_cur, right_new = cur[labelled] == y[labelled], new[labelled] == y[labelled]
            acc_cur, acc_new = float(right_cur.mean()), float(right_new.mean())
            if significant_paired_drop(*_lost_gained(right_cur, right_new), int(labelled.sum()),
                                       floors.rollback_accuracy_drop_pp / 100):
                self.store.prune(self._keep())
                raise InstallError(f"shadow evaluation: accuracy {acc_new:.3f} vs {acc_cur:.3f} on "
                                          f"{int(labelled.sum())} labelled recent inputs", final=True)
        logger.info("device_id=%s model_version=%s shadow evaluation passed: %s", self.device_id,
                    candidate.version, detail)

    def _reference(self, current: LoadedModel) -> LoadedModel:
        """The base model's version if it is on disk and not the one serving, else `current`."""
        ref = self.store.pointer().reference
        if ref is None or ref == current.version:
            return current
        try:
            return self._load(ref)
        except (InstallError, ArtifactError, WireFormatError, OSError, KeyError) as exc:
            logger.info("device_id=%s shadow evaluation without the reference %s: %s", self.device_id, ref, exc)
            return current

    def _switch(self, candidate: LoadedModel) -> None:
        old = self.store.pointer()
        previous = self.runtime.model
        lkg = old.last_known_good if old.probation else old.current
        probation = None
        if previous is not None and lkg is not None:
            stats = self.runtime.stats(previous.version)
            # The previous version's newest predictions only: a long window would mix in data the
            # device no longer sees (a version that served before and after a drift).
            acc, n = stats.recent_labelled(BASELINE_LABELS)
            probation = {"version": candidate.version, "previous": previous.version,
                         "baseline_estimated": stats.recent_estimated(BASELINE_PREDICTIONS),
                         "baseline_labelled": acc, "baseline_labels": n,
                         "window": candidate.manifest.floors.rollback_window,
                         "drop_pp": candidate.manifest.floors.rollback_accuracy_drop_pp}
        else:
            lkg = candidate.version  # the first model: nothing to roll back to
        reference = candidate.version if candidate.manifest.method.get("reference") else old.reference
        self.store.set_pointer(Pointer(candidate.version, lkg, probation, reference))
        self.flush(self.runtime.swap(candidate))
        self.store.unblock(candidate.version)
        self.store.prune(self._keep())
        self.last_error = None
        self.emit("applied", candidate.version,
                  f"serving; was {previous.version if previous else 'nothing'}"
                  + (f", on probation for {probation['window']} inferences" if probation else ""))

    def _keep(self) -> set[str]:
        p = self.store.pointer()
        return {v for v in (p.current, p.last_known_good, p.reference) if v}

    # ----- after the swap -----

    def check_probation(self) -> None:
        """Judge the version on probation once it has served long enough; roll back on regression."""
        p = self.store.pointer()
        prob = p.probation
        if not prob or self.runtime.version != prob["version"]:
            return
        stats = self.runtime.stats(prob["version"])
        window = int(prob["window"])
        if stats.inferences < window:
            return
        floor = float(prob["drop_pp"]) / 100
        reasons = []
        paired = self._paired(str(prob["previous"]))
        est, base_est = stats.estimated, prob.get("baseline_estimated")
        if paired is not None:  # both versions on the same recent inputs: drift cannot pose as regression
            if paired.estimated_drop > floor:
                reasons.append(f"estimated {paired.estimated_drop:.1%} less accurate than {prob['previous']} "
                               f"on the same {paired.inputs} recent inputs (they disagree on "
                               f"{1 - paired.agreement:.1%} of them)")
        elif est is not None and base_est is not None and base_est - est > floor:
            reasons.append(f"estimated accuracy {est:.3f} vs {base_est:.3f} before the swap")
        acc, n = stats.labelled
        base_acc, base_n = prob.get("baseline_labelled"), int(prob.get("baseline_labels") or 0)
        labels_expected = base_n >= MIN_LABELS
        if paired is not None and paired.labelled >= MIN_LABELS:
            if significant_paired_drop(paired.lost, paired.gained, paired.labelled, floor):
                reasons.append(f"labelled accuracy {paired.labelled_current:.3f} vs "
                               f"{paired.labelled_previous:.3f} of {prob['previous']} on the same "
                               f"{paired.labelled} labelled inputs")
        elif acc is not None and base_acc is not None and n >= MIN_LABELS and labels_expected:
            # Two versions that agree on all but `floor` of the recent inputs cannot differ in
            # accuracy by more than that: a larger drop came with the data, not with the version.
            explained = paired is not None and 1 - paired.agreement <= floor
            if significant_drop(base_acc, base_n, acc, n, floor) and not explained:
                reasons.append(f"labelled accuracy {acc:.3f} on {n} labels vs {base_acc:.3f} on {base_n} "
                               "before the swap")
        if reasons:
            self.rollback(f"accuracy regressed by more than {prob['drop_pp']:g} pp after the swap: "
                          + "; ".join(reasons))
            return
        waiting_for_labels = labels_expected and n < MIN_LABELS and stats.inferences < LABEL_WAIT_FACTOR * window
        if waiting_for_labels:
            return
        self.store.set_pointer(Pointer(p.current, p.current, None, p.reference))
        self._previous = None
        self.store.prune(self._keep())
        logger.info("device_id=%s model_version=%s passed probation (estimated %s, labelled %s on %d)",
                    self.device_id, p.current, est, acc, n)

    def _paired(self, previous: str) -> PairedComparison | None:
        """The serving and the previous version on the same recent inputs (None when the previous
        version cannot be loaded or too few inputs are held)."""
        current = self.runtime.model
        x, y = self.runtime.recent()
        if current is None or len(x) < MIN_PAIRED_INPUTS:
            return None
        try:
            if self._previous is None or self._previous.version != previous:  # loaded once a probation
                self._previous = self._load(previous)
            old = self._previous
        except (InstallError, ArtifactError, WireFormatError, OSError, KeyError) as exc:
            logger.info("device_id=%s probation without the previous version %s: %s", self.device_id, previous, exc)
            return None
        p_new, p_old = softmax(current.run(x).logits), softmax(old.run(x).logits)
        labelled = y >= 0
        right_new, right_old = p_new.argmax(1) == y, p_old.argmax(1) == y
        est_new, est_old = current.estimator.per_prediction(p_new.max(1)), old.estimator.per_prediction(p_old.max(1))
        differ = p_new.argmax(1) != p_old.argmax(1)
        lost, gained = _lost_gained(right_old[labelled], right_new[labelled])
        return PairedComparison(
            inputs=len(x), agreement=float(1 - differ.mean()),
            estimated_current=float(est_new.mean()), estimated_previous=float(est_old.mean()),
            estimated_drop=float((est_old - est_new)[differ].sum() / len(x)),
            labelled=int(labelled.sum()),
            labelled_current=float(right_new[labelled].mean()) if labelled.any() else 0.0,
            labelled_previous=float(right_old[labelled].mean()) if labelled.any() else 0.0,
            lost=lost, gained=gained)

    def rollback(self, reason: str) -> bool:
        """Go back to the last known good version; False when there is none to go back to."""
        p = self.store.pointer()
        bad, target = p.current, p.last_known_good
        if target is None or target == bad:
            return False
        try:
            model = self._load(target)
        except (InstallError, ArtifactError, WireFormatError, OSError) as exc:
            self.emit("failed", bad, f"rollback to {target} impossible: {exc}")
            return False
        self.store.set_pointer(Pointer(target, target, None, p.reference))
        self._previous = None
        self.flush(self.runtime.swap(model))
        if bad:
            self.store.block(bad, Blocked(f"rolled back: {reason}", True, 0, None))
        self.store.prune(self._keep())
        self.last_error = reason
        logger.warning("device_id=%s model_version=%s rolled back to %s: %s", self.device_id, bad, target, reason)
        self.emit("rolled_back", bad, f"{reason}; serving {target}")
        return True

