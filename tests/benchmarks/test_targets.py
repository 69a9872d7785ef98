"""The targets' verdicts, read off benchmark output as a closing note would quote them."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import targets


def _row(scenario, calibration, policy, ratio, drop, seed=0, method="qsae+lsq", **kw):
    return {"scenario": scenario, "calibration": calibration, "policy": policy, "seed": seed,
            "method": method, "default_policy": policy == "default", "label_free": True, "split": "test",
            "compression_ratio": ratio, "drop_pp": drop, **kw}


def test_p1_is_the_mean_over_seeds_of_the_default_policy_on_full():
    rows = [_row("full", "global", "default", r, d, seed=s)
            for s, (r, d) in enumerate([(22.2, 0.71), (30.9, 1.18), (29.2, 1.40)])]
    rows.append(_row("full", "global", "kl_budget=0.02", 14.0, 0.2))
    p1 = targets.p1(rows)
    assert p1["seeds"] == 3
    assert p1["compression_ratio"] == pytest.approx(27.43, abs=0.01)
    assert p1["drop_pp"] == pytest.approx(1.097, abs=0.001)
    assert p1["met"] is False
    rows[2]["drop_pp"] = 0.5
    assert targets.p1(rows)["met"] is True


def test_p2_compares_the_best_qsae_variant_with_the_better_baseline_under_the_same_recovery():
    at16 = "target_compression=16"
    rows = [_row("full", "global", at16, 16.1, d, method=m) for m, d in
            [("qsae", 1.09), ("qsae-noquant", 1.0), ("magnitude", 1.73), ("wanda", 1.28),
             ("qsae+lsq", 0.22), ("wanda+lsq", 0.40), ("magnitude+lsq", 0.52)]]
    p2 = targets.p2(rows)
    assert (p2["qsae_method"], p2["rival"]) == ("qsae-noquant", "wanda")
    assert p2["lead_pp"] == pytest.approx(0.28)
    assert p2["met"] is False
    rows[5]["drop_pp"], rows[6]["drop_pp"] = 1.3, 1.4  # the baselines with the re-fit lose >= 1.08 pp more
    p2 = targets.p2(rows)
    assert (p2["qsae_method"], p2["rival"], p2["met"]) == ("qsae+lsq", "wanda+lsq", True)


def test_p8_reads_the_default_policy_and_the_most_compression_within_one_pp():
    s = "classes-tops"
    rows = [_row(s, "global", "default", 27.4, 2.27), _row(s, "device", "default", 22.2, 0.94),
            _row(s, "global", "kl_budget=0.02", 13.9, 0.80), _row(s, "device", "kl_budget=0.02", 14.0, 0.3),
            _row(s, "global", "kl_budget=0.05", 30.0, 2.9), _row(s, "device", "kl_budget=0.05", 25.0, 1.2),
            _row("full", "global", "default", 27.4, 1.1)]
    default, matched = targets.p8(rows)
    assert (default["reading"], default["met"]) == ("default", False)  # global is 2.27 pp off
    assert default["gain"] == pytest.approx(22.2 / 27.4)
    assert matched["reading"] == "matched"
    assert matched["device"]["policy"] == "default" and matched["global"]["policy"] == "kl_budget=0.02"
    assert matched["gain"] == pytest.approx(22.2 / 13.9)
    assert matched["met"] is True
    rows[3]["compression_ratio"] = rows[1]["compression_ratio"] = 20.0  # 1.44x: not enough
    assert targets.p8(rows)[1]["met"] is False


def test_p8_is_undecided_when_the_global_mask_is_never_within_one_pp():
    s = "classes-tops"
    rows = [_row(s, "global", "default", 27.4, 2.27), _row(s, "device", "default", 22.2, 0.94)]
    matched = targets.p8(rows)[1]
    assert matched["global"] is None and matched["met"] is None
    assert "global none within 1 pp" in targets.lines(targets.verdicts(rows))[-1]


def _dynamic_rows(loop, static_magnitude, static_qsae, compression=33.0, sketch=256_407, update=97_430, nm=1.0):
    common = {"dense_time_avg_accuracy": 0.9275, "fp32_model_bytes": 1_834_280}
    return [{"method": "dynamic_qsae", "time_avg_accuracy": loop, "avg_compression_ratio": compression,
             "sketch_bytes_max": sketch, "update_bytes_max": update, "not_modified_ratio": nm, **common},
            {"method": "dense", "time_avg_accuracy": 0.9275, "avg_compression_ratio": 1.0, **common},
            {"method": "static_magnitude", "time_avg_accuracy": static_magnitude, "avg_compression_ratio": 33.8,
             **common},
            {"method": "static_qsae", "time_avg_accuracy": static_qsae, "avg_compression_ratio": 34.0, **common}]


def test_p3_and_p7_read_the_dynamic_rows():
    v = targets.dynamic_verdicts(_dynamic_rows(0.9260, 0.9125, 0.8996))
    assert v["P3"]["loop_below_dense_pp"] == pytest.approx(0.15)
    assert v["P3"]["statics_below_loop_pp"] == pytest.approx({"static_magnitude": 1.35, "static_qsae": 2.64})
    assert (v["P3"]["met_loop"], v["P3"]["met_gap"], v["P3"]["met"]) == (True, False, False)
    assert v["P7"]["met"] is True and v["P7"]["update_limit"] == 183_428
    assert targets.dynamic_verdicts(_dynamic_rows(0.9260, 0.8950, 0.8900))["P3"]["met"] is True
    assert targets.dynamic_verdicts(_dynamic_rows(0.9260, 0.8950, 0.8900, compression=7.5))["P3"]["met"] is False
    assert targets.dynamic_verdicts(_dynamic_rows(0.9260, 0.9, 0.9, nm=0.98))["P7"]["met"] is False
    assert targets.dynamic_verdicts(_dynamic_rows(0.9260, 0.9, 0.9, update=190_000))["P7"]["met"] is False
    assert "P3: loop 0.15 pp below dense at 33.0x: met" in targets.lines(v)[0]


def test_p4_reads_the_default_artifact_on_one_thread():
    rows = [{"variant": v, "batch": b, "threads": t, "speedup": x} for v, b, t, x in
            [("dense_fp32", 1, 1, 1.0), ("default_artifact", 1, 1, 2.92), ("default_artifact", 64, 1, 3.27),
             ("default_artifact", 64, 2, 1.79), ("dense_int8", 64, 1, 2.6)]]
    p4 = targets.latency_verdicts(rows)["P4"]
    assert (p4["speedup_batch1"], p4["speedup_batch64"], p4["met"]) == (2.92, 3.27, True)
    rows[2]["speedup"] = 2.4  # batch 64 below 2.5x
    assert targets.latency_verdicts(rows)["P4"]["met"] is False


def test_p6_needs_both_the_per_device_time_and_the_scaling(tmp_path, capsys, monkeypatch):
    doc = {"benchmark": "retrain", "per_device_seconds": 8.39,
           "fleet": [{"workers": 1, "seconds": 252.0}, {"workers": 2, "seconds": 137.0}]}
    p6 = targets.retrain_verdicts(doc)["P6"]
    assert p6["speedup_2_vs_1"] == pytest.approx(1.839, abs=0.001) and p6["met"] is True
    assert targets.retrain_verdicts({**doc, "per_device_seconds": 14.21})["P6"]["met"] is False
    path = tmp_path / "retrain.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(sys, "argv", ["targets", str(path)])
    targets.main()
    assert "P6: one retrain on one core 8.39 s (10 s): met; 2 workers 1.84x" in capsys.readouterr().out


def test_tags_give_one_word_per_target_and_p8_is_met_only_if_every_reading_is():
    p8 = [{"met": True}, {"met": None}]
    assert targets.tags({"P1": {"met": True}, "P2": {"met": False}, "P8": p8, "P4": None}) == \
        {"P1": "met", "P2": "not met", "P8": "undecided"}
    assert targets.tags({"P8": [*p8, {"met": False}]}) == {"P8": "not met"}
