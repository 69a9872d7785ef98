import dataclasses

import numpy as np

from control_plane.controller.rollouts import Action, Outcomes, rollout_action
from control_plane.controller.triggers import (
    AccuracyWindow,
    DeviceState,
    TriggerPolicy,
    decide,
    idempotency_key,
)

POLICY = TriggerPolicy(debounce_s=60, interval_s=3600)
HIST = np.tile(np.array([50, 30, 15, 5]), (4, 1))
GOOD = AccuracyWindow(inferences=1000, labelled=300, correct=270, estimated_sum=0.9 * 1000)


def state(**kw):
    base = dict(device_id="d1", now=10_000.0, has_active_job=False, last_job_at=None, deployed_at=9_000.0,
                baseline=GOOD, recent=GOOD, reference_hist=HIST, latest_hist=HIST)
    base.update(kw)
    return DeviceState(**base)


def test_a_steady_device_triggers_nothing():
    d = decide(state(), POLICY)
    assert d.reasons == [] and not d.enqueue and d.drift is not None and d.drift < 0.001


def test_first_deploy_is_triggered_once_sketches_exist():
    assert decide(state(deployed_at=None), POLICY).enqueue
    d = decide(state(deployed_at=None, has_sketches=False), POLICY)
    assert not d.enqueue and d.blocked == "no sketches uploaded yet"


def test_labelled_accuracy_drop_triggers_with_its_reason():
    recent = AccuracyWindow(inferences=1000, labelled=300, correct=240, estimated_sum=900)
    d = decide(state(recent=recent), POLICY)
    assert d.enqueue and d.reasons == ["labelled accuracy 80.0% < baseline 90.0% - 3 pp"]


def test_too_few_labels_fall_back_to_the_estimate():
    recent = AccuracyWindow(inferences=1000, labelled=20, correct=0, estimated_sum=800)
    d = decide(state(recent=recent), POLICY)
    assert len(d.reasons) == 1 and d.reasons[0].startswith("estimated accuracy 80.0%")


def test_a_drop_within_the_noise_of_a_short_window_does_not_trigger():
    baseline = AccuracyWindow(inferences=256, estimated_sum=0.93 * 256)
    recent = AccuracyWindow(inferences=256, estimated_sum=0.88 * 256)  # 5 pp lower: 2 standard errors
    assert decide(state(baseline=baseline, recent=recent), POLICY).reasons == []
    longer = AccuracyWindow(inferences=20_000, estimated_sum=0.88 * 20_000)
    baseline = AccuracyWindow(inferences=20_000, estimated_sum=0.93 * 20_000)
    assert decide(state(baseline=baseline, recent=longer), POLICY).reasons[0].startswith("estimated accuracy 88.0%")


def test_drift_of_stem_histograms_triggers():
    shifted = np.tile(np.array([5, 15, 30, 50]), (4, 1))
    d = decide(state(latest_hist=shifted), POLICY)
    assert d.enqueue and d.reasons[0].startswith("drift ")


def test_a_drift_just_over_the_threshold_reads_over_it():
    shifted = np.tile(np.array([49, 31, 15, 5]), (4, 1))
    drift = decide(state(latest_hist=shifted), POLICY).drift
    assert drift is not None and drift > 0
    just_under = dataclasses.replace(POLICY, drift_threshold=drift * (1 - 1e-4))
    reason = decide(state(latest_hist=shifted), just_under).reasons[0]  # "drift X > T"
    shown, threshold = (float(v) for v in reason.removeprefix("drift ").split(" > "))
    assert shown > threshold and abs(shown - drift) <= 5e-3 * drift  # 3 significant digits or more


def test_interval_triggers():
    d = decide(state(deployed_at=10_000.0 - 4000), POLICY)
    assert d.reasons == ["interval: deployed 4000 s ago"]


def test_active_job_and_debounce_block_a_second_job():
    shifted = np.tile(np.array([5, 15, 30, 50]), (4, 1))
    d = decide(state(latest_hist=shifted, has_active_job=True), POLICY)
    assert d.reasons and not d.enqueue and "already queued" in d.blocked
    d = decide(state(latest_hist=shifted, last_job_at=10_000.0 - 10), POLICY)
    assert not d.enqueue and d.blocked.startswith("debounced")
    assert decide(state(latest_hist=shifted, last_job_at=10_000.0 - 100), POLICY).enqueue


def test_no_retrain_while_the_device_is_still_installing_its_last_one():
    d = decide(state(deployed_at=None, install_pending=True), POLICY)
    assert d.reasons == ["initial: no pruned model deployed yet"] and not d.enqueue
    assert d.blocked == "the device has not installed its assigned version yet"


def test_idempotency_key_names_device_window_and_base():
    assert idempotency_key("d1", 7, "3") == idempotency_key("d1", 7, "3") != idempotency_key("d1", 8, "3")


def test_rollout_advances_when_every_moved_device_is_healthy():
    t = {"max_failures": 1, "min_devices_reporting": 2}
    assert rollout_action(Outcomes(assigned=2, healthy=1, failed=0), t) is Action.WAIT
    assert rollout_action(Outcomes(assigned=2, healthy=2, failed=0), t) is Action.ADVANCE
    assert rollout_action(Outcomes(assigned=0, healthy=0, failed=0), t) is Action.WAIT


def test_a_regressing_canary_aborts_the_rollout():
    assert rollout_action(Outcomes(assigned=2, healthy=1, failed=1), {"max_failures": 1}) is Action.ABORT
    assert rollout_action(Outcomes(assigned=4, healthy=2, failed=1), {"max_failures": 2}) is Action.WAIT


def test_a_refused_version_is_not_retried_until_the_data_moves():
    d = decide(state(deployed_at=None, last_refused=True), POLICY)
    assert not d.enqueue and d.blocked.startswith("the device refused")
    shifted = np.tile(np.array([5, 15, 30, 50]), (4, 1))
    assert decide(state(latest_hist=shifted, last_refused=True), POLICY).enqueue
