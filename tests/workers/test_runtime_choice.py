"""The per-layer compute choice is measured once per machine and shape: the next process reads it
from disk instead of measuring again, and a damaged cache file costs a measurement, not a retrain."""

import json

import pytest

from workers import importance, masks, runtime_choice
from workers.recovery import RecoveryConfig, recover


@pytest.fixture
def pruned(tiny_cnn, tmp_path, monkeypatch):
    net, spec, calib = tiny_cnn
    monkeypatch.setenv("FLEET_COMPUTE_CACHE", str(tmp_path / "choice.json"))
    monkeypatch.setattr(runtime_choice, "_CACHE", {})
    scores = importance.score("energy", net, spec, calib)
    p = masks.shrink(net, masks.build(spec, scores, 0.6, masks.Schedule()), spec)
    recover(p, net, spec, calib, RecoveryConfig())
    return p, calib


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured although the choice was on disk")


def test_a_measured_choice_is_read_back_from_disk_by_the_next_process(pruned, tmp_path, monkeypatch):
    p, calib = pruned
    first, _ = runtime_choice.choose_compute(p, calib, "auto")
    doc = json.loads((tmp_path / "choice.json").read_text())
    (entry,) = doc.values()
    assert entry["widths"] == [layer["out"] for layer in p.spec["layers"] if "out" in layer]
    monkeypatch.setattr(runtime_choice, "_CACHE", {})  # a new process
    monkeypatch.setattr(runtime_choice, "compare_ms", _no_measuring)
    again, _ = runtime_choice.choose_compute(p, calib, "auto")
    assert again == first


def test_another_machine_measures_again(pruned, monkeypatch):
    p, calib = pruned
    runtime_choice.choose_compute(p, calib, "auto")
    monkeypatch.setattr(runtime_choice, "_CACHE", {})
    monkeypatch.setattr(runtime_choice, "machine", lambda: "another-cpu")
    monkeypatch.setattr(runtime_choice, "compare_ms", _no_measuring)
    with pytest.raises(AssertionError, match="measured"):
        runtime_choice.choose_compute(p, calib, "auto")


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"KEY": {"compute": {"0": "int4"}}}',
                                    '{"KEY": {"compute": {"0": "int8", "3": "fp32", "6": "fp32", "9": "fp32", "11": "fp32"}}}'])
def test_a_damaged_cache_file_is_measured_over_and_rewritten(pruned, tmp_path, damage, caplog):
    p, calib = pruned
    path = tmp_path / "choice.json"
    runtime_choice.choose_compute(p, calib, "auto")
    key = next(iter(json.loads(path.read_text())))
    path.write_text(damage.replace("KEY", key))
    runtime_choice._CACHE.clear()
    compute, _ = runtime_choice.choose_compute(p, calib, "auto")
    assert set(compute.values()) <= {"fp32", "int8"} and compute[0] == "fp32"  # layer 0: the stem
    assert json.loads(path.read_text())[key]["compute"] == {str(k): v for k, v in compute.items()}
    if damage.startswith("{not"):
        assert "ignoring the compute-choice cache" in caplog.text
