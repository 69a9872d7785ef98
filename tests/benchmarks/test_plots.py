"""The benchmarks' figures: drawn beside the JSON, showing what the rows say."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.image import imread

from benchmarks import plots, targets
from qsae_shared.distributions import DeviceProfile, Phase
from workers.figures import stream_series


def _row(method, ratio, drop, **kw):
    return {"scenario": "full", "calibration": "global", "seed": 0, "method": method, "policy": "none",
            "target": None, "default_policy": False, "label_free": True, "compression_ratio": ratio,
            "drop_pp": drop, **kw}


def compression_doc():
    rows = [_row("int8", 4.7, 0.06)]
    for method, drops in (("qsae", (0.4, 1.1)), ("magnitude", (0.2, 1.7)), ("qsae+lsq", (0.1, 0.2)),
                          ("magnitude+lsq", (0.1, 0.5))):
        for t, d in zip((8, 16), drops, strict=True):
            rows.append(_row(method, t * 1.02, d, policy=f"target_compression={t}", target=t))
    rows.append(_row("qsae+lsq", 22.2, 0.62, policy="default", default_policy=True))
    rows.append(_row("qsae+lsq", 21.9, 0.69, policy="oracle-validation-1pp", label_free=False))
    for cal, ratio, drop in (("global", 22.2, 0.2), ("device", 70.4, 1.0)):
        rows.append({**_row("qsae+lsq", ratio, drop, policy="default", default_policy=True),
                     "scenario": "classes-footwear", "calibration": cal})
    return {"benchmark": "compression", "seeds": 1, "rows": rows}


def labels(ax):
    return ax.get_legend_handles_labels()[1]


def test_compression_figure_has_a_curve_per_criterion_and_the_default_policy(tmp_path):
    path = tmp_path / "compression.json"
    path.write_text(json.dumps(compression_doc()))
    out = plots.save(path)
    assert out == tmp_path / "compression.png"
    img = imread(out)
    assert img.shape[:2] == (480, 1500) and img[..., :3].std() > 0.05  # drawn, not blank
    fig = plots.compression(compression_doc())
    without, with_lsq, per_device = fig.axes
    assert labels(without) == ["qsae", "magnitude"]
    assert labels(with_lsq)[:2] == ["qsae", "magnitude"]
    assert "default policy (label-free)" in labels(with_lsq) and "oracle (labelled validation)" in labels(with_lsq)
    qsae_line = with_lsq.get_lines()[0]
    assert list(qsae_line.get_ydata()) == [0.1, 0.2]  # the rows' drops, in target order
    assert "classes-footwear" in labels(per_device)


def test_dynamic_figure_draws_one_panel_per_device_with_its_phases():
    devs = [{"device": f"dev-{i}", "window": 500, "inferences": 2000,
             "phase_starts": [[0, "clear"], [1000, "rain"]], "switches": [[0, "v1"], [700, "v2"]],
             "accuracy": {"dense": [0.9] * 4, "dynamic_qsae": [0.88, 0.9, 0.8, 0.89], "static_qsae": [0.9, 0.9, 0.7, 0.7]},
             "dynamic_compression": [4.7, 20.0, 30.0, 30.0]} for i in range(3)]
    rows = [{"method": "dynamic_qsae", "time_avg_accuracy": 0.87, "avg_compression_ratio": 24.0, "reprunes": 3}]
    fig = plots.dynamic({"benchmark": "dynamic", "rows": rows, "series": devs})
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in panels] == ["dev-0", "dev-1", "dev-2"]
    assert {t.get_text().strip() for t in panels[0].texts} == {"clear", "rain"}
    assert "dynamic_qsae (87.0 %, 24x)" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert "re-pruned 3 times" in fig.get_suptitle()
    short = {**devs[0], "inferences": 1700}  # the last window holds 200 of 500 inferences: not drawn
    fig = plots.dynamic({"benchmark": "dynamic", "rows": rows, "series": [short]})
    method_lines = fig.axes[0].get_lines()[:3]  # drawn before the phase lines
    assert [len(line.get_xdata()) for line in method_lines] == [3, 3, 3]


def test_a_benchmark_without_a_figure_writes_none(tmp_path):
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps({"benchmark": "ingest", "rows": []}))
    assert plots.save(path) is None and not (tmp_path / "ingest.png").exists()


def test_series_windows_follow_the_stream_and_the_versions_served():
    prof = DeviceProfile("cam", (Phase(6, name="clear"), Phase(4, name="rain")))
    phases = np.array([0] * 6 + [1] * 4)
    dyn_hits = bytearray([1, 1, 1, 1, 0, 0, 1, 0, 1, 1])
    device = SimpleNamespace(hits=dyn_hits, switches=[(0, "base"), (4, "v2")])
    dense = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    out = stream_series([device], [prof], [phases], {"dense": dense}, {"base": 4.0, "v2": 40.0}, window=4)
    (dev,) = out
    assert dev["phase_starts"][0][0] == 0 and dev["phase_starts"][1][0] == 6
    assert dev["accuracy"]["dynamic_qsae"] == [1.0, 0.25, 1.0]
    assert dev["accuracy"]["dense"] == [1.0, 1.0, 0.0]
    assert dev["dynamic_compression"] == [4.0, 40.0, 40.0]
    assert dev["switches"] == [[0, "base"], [4, "v2"]]


@pytest.mark.parametrize("name", ["latency", "retrain"])
def test_latency_and_retrain_figures_show_their_targets(name):
    if name == "latency":
        rows = [{"variant": v, "batch": b, "threads": 1, "speedup": s}
                for v, s in (("dense_fp32", 1.0), ("default_artifact", 2.9)) for b in (1, 64)]
        fig = plots.latency({"benchmark": "latency", "rows": rows})
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert "2.90x" in texts and any("2.5x" in t for t in texts)
    else:
        doc = {"benchmark": "retrain", "rows": [{"per_device": s, "per_device_cold": s + 1.2} for s in (5.5, 7.0, 8.6)],
               "per_device_seconds": 7.0, "fleet": [{"workers": 1, "devices": 32, "seconds": 210.0},
                                                      {"workers": 2, "devices": 32, "seconds": 108.0}],
               "speedup_2_vs_1": 1.94}
        fig = plots.retrain(doc)
        assert "median 7.00 s" in labels(fig.axes[0]) and "1.94x" in fig.axes[1].get_title()
        assert "measuring its widths' compute choice first" in labels(fig.axes[0])
        widths = sorted(round(p.get_width(), 1) for p in fig.axes[0].patches)
        assert widths == [5.5, 6.7, 7.0, 8.2, 8.6, 9.8]  # warm bars over the cold ones


def test_mlflow_gets_a_run_per_row_and_the_figure(tmp_path):
    import mlflow

    from benchmarks.common import log_mlflow

    path = tmp_path / "compression.json"
    doc = compression_doc()
    path.write_text(json.dumps(doc))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    verdicts = targets.verdicts(doc["rows"])
    log_mlflow(uri, "qsae-fleet/compression", doc["rows"][:3], params=("method", "policy"),
               metrics=("compression_ratio", "drop_pp"), figure=plots.save(path), verdicts=verdicts)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("qsae-fleet/compression")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert len(runs) == 4 and runs["qsae/target_compression=8"].data.metrics["drop_pp"] == 0.4
    figure = runs["figure"]
    assert sorted(a.path for a in client.list_artifacts(figure.info.run_id)) == ["compression.png", "targets.json"]
    # P1 22.2x at +0.62; P2 0.6 pp ahead; P8 footwear 70.4x at +1.0 against 22.2x at +0.2, both readings
    assert [figure.data.tags[t] for t in ("P1", "P2", "P8")] == ["met", "not met", "met"]
    assert mlflow.artifacts.load_dict(f"{figure.info.artifact_uri}/targets.json")["P1"]["compression_ratio"] == 22.2
    assert list((tmp_path / "mlartifacts").rglob("compression.png"))  # beside the store, not in ./mlruns


def test_the_command_names_files_it_cannot_draw_and_draws_the_rest(tmp_path, capsys):
    good = tmp_path / "compression.json"
    good.write_text(json.dumps(compression_doc()))
    broken = tmp_path / "broken.json"
    broken.write_text('{"benchmark": "compression", "rows": [')
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"benchmark": "latency", "rows": [{"variant": "x"}]}))
    assert plots.main([str(broken), str(tmp_path / "missing.json"), str(wrong), str(good)]) == 1
    err = capsys.readouterr().err
    assert f"{broken}: cannot draw it: JSONDecodeError" in err
    assert f"{tmp_path / 'missing.json'}: cannot draw it: FileNotFoundError" in err
    assert f"{wrong}: cannot draw it: KeyError" in err
    assert (tmp_path / "compression.png").exists()
