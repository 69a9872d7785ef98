import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsae_shared.errors import SizeLimitError, WireFormatError
from qsae_shared.sketch import (
    DEFAULT_MAX_BYTES,
    SketchBuilder,
    SketchLimits,
    histogram_drift,
    merge_sketches,
    parse_sketch,
)

C, H, W, B = 32, 14, 14, 32
EDGES = np.tile(np.linspace(0.0, 4.0, B + 1, dtype=np.float32), (C, 1))


def stem_outputs(n, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.normal(0.5, 0.7, (n, C, H, W)), 0) * scale).astype(np.float32)


def built(n, seed=0, scale=1.0, device="dev-1"):
    b = SketchBuilder(device, "fmnist-cnn", EDGES, seed=seed)
    x = stem_outputs(n, seed, scale)
    probs = np.random.default_rng(seed).dirichlet(np.ones(10), n)
    for i in range(0, n, 256):
        b.update(x[i:i + 256], probs[i:i + 256], now=1000.0 + i)
    return b, x


@pytest.mark.parametrize("n", [1000, 10_000])
def test_upload_stays_under_the_cap_however_many_inferences(n):
    b, _ = built(n)
    data = b.emit()
    assert len(data) <= DEFAULT_MAX_BYTES
    s = parse_sketch(data)
    assert s.inference_count == n and s.num_samples == 40


def test_round_trip_keeps_moments_histograms_and_samples():
    b, x = built(600)
    before = b.build()
    s = parse_sketch(b.emit())
    assert s.device_id == "dev-1" and s.seq == 0 and s.window_start == 1000.0
    np.testing.assert_allclose(s.channel_mean, x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(s.channel_var, x.var(axis=(0, 2, 3)), rtol=1e-4)
    assert int(s.hist_counts.sum()) == 600 * C * H * W
    assert int(s.confidence_hist.sum()) == 600
    np.testing.assert_array_equal(s.samples, before.samples)
    # int8 with per-channel scales: error at most half a step.
    reservoir_rows = [next(i for i in range(600) if np.allclose(x[i], r, atol=s.scales.max()))
                      for r in s.samples_float()[:3]]
    assert len(reservoir_rows) == 3
    assert b.seq == 1 and b.inference_count == 0


def test_nothing_input_sized_leaves_the_device():
    """A sketch holds stem outputs and summaries only: no 28x28 image, no labels, no extra payload."""
    b, _ = built(300)
    data = b.emit()
    s = parse_sketch(data)
    for name in ("samples", "scales", "channel_count", "channel_mean", "channel_var", "hist_edges",
                 "hist_counts", "confidence_hist"):
        assert 28 * 28 not in getattr(s, name).shape
    header_len = struct.unpack_from("<I", data, 6)[0]
    header = json.loads(data[10:10 + header_len])
    assert set(header) == {"device_id", "seq", "window_start", "window_end", "inference_count",
                           "base_model", "deployed_version", "num_samples", "channels", "height",
                           "width", "bins", "confidence_bins", "extra"}
    assert "label" not in data.decode("latin-1")


def test_merge_gives_a_uniform_sample_weighted_by_inferences():
    # Window a: 9,000 inferences of scale 1; window b: 1,000 of scale 10. A uniform merged sample
    # draws about 10% of its samples from b.
    sa = parse_sketch(built(9000, seed=1, scale=1.0)[0].emit())
    sb = parse_sketch(built(1000, seed=2, scale=10.0)[0].emit())
    shares = []
    for seed in range(20):
        m = merge_sketches([sa, sb], max_samples=40, seed=seed)
        from_b = (m.samples_float().mean(axis=(1, 2, 3)) > 2.0).mean()
        shares.append(from_b)
    assert 0.03 < np.mean(shares) < 0.2
    m = merge_sketches([sa, sb], max_samples=512)
    assert m.inference_count == 10_000 and m.num_samples == 80
    expected_mean = (9000 * sa.channel_mean + 1000 * sb.channel_mean) / 10_000
    np.testing.assert_allclose(m.channel_mean, expected_mean, rtol=1e-6)
    assert int(m.hist_counts.sum()) == int(sa.hist_counts.sum()) + int(sb.hist_counts.sum())


def test_merge_rejects_different_bin_edges():
    sa = parse_sketch(built(100)[0].emit())
    other = SketchBuilder("dev-1", "fmnist-cnn", EDGES * 2)
    other.update(stem_outputs(50))
    with pytest.raises(WireFormatError, match="bin edges"):
        merge_sketches([sa, parse_sketch(other.emit())], 512)


def test_drift_is_zero_for_the_same_data_and_grows_with_a_shift():
    same = histogram_drift(built(500, seed=1)[0].build().hist_counts, built(500, seed=2)[0].build().hist_counts)
    shifted = histogram_drift(built(500, seed=1)[0].build().hist_counts,
                              built(500, seed=2, scale=2.5)[0].build().hist_counts)
    assert same < 0.01 < shifted


GOOD = built(200)[0].emit()


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d[:-1], "trailing|truncated"),
    (lambda d: d[:100], "truncated"),
    (lambda d: b"XXXX" + d[4:], "bad magic"),
    (lambda d: d[:4] + struct.pack("<H", 9) + d[6:], "unknown version 9"),
    (lambda d: d + b"\0", "trailing"),
    (lambda d: d[:10] + d[10:].replace(b'"channels":32', b'"channels":99', 1), "truncated|trailing"),
    (lambda d: d[:10] + d[10:].replace(b'"device_id":"dev-1"', b'"device_id":5,"x":1', 1), "device_id"),
])
def test_malformed_bytes_are_rejected_with_the_reason(mutate, match):
    with pytest.raises(WireFormatError, match=match):
        parse_sketch(mutate(GOOD))


def test_nan_in_moments_is_rejected():
    b, _ = built(100)
    s = b.build()
    s.channel_mean[3] = np.nan
    with pytest.raises(WireFormatError, match="NaN or Inf"):
        s.to_bytes()


def test_oversized_upload_and_caps():
    with pytest.raises(SizeLimitError, match="over the cap"):
        parse_sketch(GOOD, SketchLimits(max_bytes=1000))
    with pytest.raises(WireFormatError, match="channels"):
        parse_sketch(GOOD, SketchLimits(max_channels=8))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_parser(blob):
    with pytest.raises(WireFormatError):
        parse_sketch(blob)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255))
def test_single_byte_corruption_is_caught_or_harmless(pos, value):
    corrupted = GOOD[:pos] + bytes([value]) + GOOD[pos + 1:]
    try:
        s = parse_sketch(corrupted)
    except WireFormatError:
        return
    assert np.all(np.isfinite(s.channel_mean)) and s.samples.shape[1:] == (C, H, W)
