import numpy as np
import pytest

from edge_agent.errors import NoModelError
from edge_agent.model import LoadedModel
from edge_agent.runtime import Runtime
from qsae_shared.data import load_split
from qsae_shared.sketch import parse_sketch


@pytest.fixture(params=[False, True], ids=["inline-sketch", "background-sketch"])
def runtime(kit, request):
    rt = Runtime("dev-1", "fmnist-cnn", recent_inputs=64, pending_labels=1000, sketch_in_background=request.param)
    rt.swap(LoadedModel(kit.good, kit.onnx_path(kit.good)))
    yield rt
    rt.close()


def test_predict_before_a_model_is_installed_says_so():
    with pytest.raises(NoModelError, match="no model is installed"):
        Runtime("dev-1", "fmnist-cnn").predict(np.zeros((1, 28, 28), np.uint8))


def test_predict_then_late_feedback_counts_labelled_accuracy(runtime):
    split = load_split("test")
    p1 = runtime.predict(split.images[:200])  # uint8 straight from the data set
    p2 = runtime.predict(split.images[200:400] / 255.0)  # or floats in [0, 1]
    assert p1.classes.shape == (200,) and p1.version == "v-good"
    assert (p1.classes == split.labels[:200]).mean() > 0.5  # the model really classifies
    window1 = runtime.close_window()
    assert window1.inference_count == 400 and window1.labelled_count == 0
    assert 0.3 < window1.estimated_accuracy < 1.0
    assert window1.latency_p50_ms > 0 and window1.latency_p95_ms >= window1.latency_p50_ms
    # labels for the first batch arrive one window later; each prediction counts once
    assert runtime.feedback(p1.ids, split.labels[:200]) == 200
    assert runtime.feedback(p1.ids, split.labels[:200]) == 0
    window2 = runtime.close_window()
    assert window2.inference_count == 0 and window2.labelled_count == 200
    assert window2.labelled_correct == int((p1.classes == split.labels[:200]).sum())
    acc, n = runtime.stats("v-good").labelled
    assert n == 200 and acc == window2.labelled_correct / 200
    assert runtime.close_window() is None  # an empty window makes no record
    del p2


def test_feedback_for_forgotten_predictions_is_ignored(kit):
    rt = Runtime("dev-1", "fmnist-cnn", pending_labels=100)
    rt.swap(LoadedModel(kit.good, kit.onnx_path(kit.good)))
    split = load_split("test")
    old = rt.predict(split.images[:100])
    rt.predict(split.images[100:200])  # overwrites the ring
    assert rt.feedback(old.ids, split.labels[:100]) == 0


def test_sketch_holds_stem_summaries_and_nothing_input_sized(runtime):
    split = load_split("test")
    for i in range(0, 1000, 100):
        runtime.predict(split.images[i:i + 100])
    builder = runtime.take_sketch()
    builder.seq = 7
    data = builder.emit()
    sketch = parse_sketch(data)
    assert len(data) <= 256 * 1024
    assert sketch.seq == 7 and sketch.inference_count == 1000 and sketch.device_id == "dev-1"
    assert sketch.deployed_version == "v-good"
    assert list(sketch.samples.shape[1:]) == runtime.model.manifest.stem_shape  # stem outputs, int8
    assert sketch.samples.dtype == np.int8 and sketch.num_samples <= 1000
    assert int(sketch.confidence_hist.sum()) == 1000
    # nothing with the input's size (28 x 28 = 784 values per image) and no labels
    for name in ("samples", "scales", "channel_count", "channel_mean", "channel_var", "hist_edges",
                 "hist_counts", "confidence_hist"):
        arr = getattr(sketch, name)
        assert 784 not in arr.shape[1:] and tuple(arr.shape[-2:]) != (28, 28)
    assert sketch.extra == {}
    assert runtime.take_sketch() is None  # the next window starts empty


def test_background_and_inline_sketches_are_the_same(kit):
    split = load_split("test")
    sketches = []
    for background in (False, True):
        rt = Runtime("dev-1", "fmnist-cnn", sketch_in_background=background, clock=lambda: 5.0)
        rt.swap(LoadedModel(kit.good, kit.onnx_path(kit.good)))
        for i in range(0, 600, 50):
            rt.predict(split.images[i:i + 50])
        sketches.append(parse_sketch(rt.take_sketch().emit()))
        rt.close()
    a, b = sketches
    assert a.inference_count == b.inference_count == 600
    assert np.array_equal(a.samples, b.samples) and np.array_equal(a.hist_counts, b.hist_counts)
    assert np.allclose(a.channel_mean, b.channel_mean) and np.array_equal(a.confidence_hist, b.confidence_hist)


def test_recent_inputs_keep_the_last_ones_with_their_labels(runtime):
    split = load_split("test")
    p = runtime.predict(split.images[:100])
    runtime.feedback(p.ids[-10:], split.labels[90:100])
    x, y = runtime.recent()
    assert x.shape == (64, 1, 28, 28)
    assert (y[-10:] == split.labels[90:100]).all() and (y[:-10] == -1).all()


def test_a_probation_baseline_is_the_previous_versions_newest_labels_not_its_whole_history():
    from edge_agent.telemetry import VersionStats

    stats = VersionStats(window=2000)
    stats.add_labels(np.ones(1000, bool))  # right on the data the device saw before a drift
    stats.add_labels(np.arange(300) % 4 != 0)  # 75 % on what it sees now
    assert stats.labelled[1] == 1300 and stats.labelled[0] > 0.94
    assert stats.recent_labelled(300) == (0.75, 300)
