"""One device's retrain from its sketches alone, end to end, on a tiny CNN trained in seconds."""

from dataclasses import replace

import numpy as np
import pytest

from qsae_shared import artifact
from qsae_shared.data import preprocess
from qsae_shared.distributions import DeviceProfile, Phase
from qsae_shared.errors import WireFormatError
from qsae_shared.manifest import Manifest
from qsae_shared.signing import SigningKey, verify_manifest
from qsae_shared.sketch import SketchBuilder, parse_sketch
from tests.tiny_model import device_sketches, tiny_checkpoint
from workers import export, search
from workers.errors import CalibrationError, PolicyError
from workers.policy import Policy
from workers.retrain import MODEL_FILE, retrain, shadow_floor

POLICY = Policy(kl_budget=0.1, min_compression=2.0, compute="fp32", search_steps=4)


@pytest.fixture(scope="module")
def tiny():
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def sketches(tiny):
    return [parse_sketch(b) for b in device_sketches(tiny, "dev-1", 8)]


def test_retrain_from_sketches_gives_a_signed_verifiable_artifact(tiny, sketches, tmp_path):
    key = SigningKey.generate()
    r = retrain(tiny, sketches, POLICY, device_id="dev-1", signing_key=key)
    m = Manifest.from_json(r.manifest.to_json())
    verify_manifest(m, {key.key_id: key.public_key_b64})
    assert m.device_id == "dev-1" and m.base_version == tiny.base_version
    assert r.meets_policy and m.metrics["kl"] <= POLICY.kl_budget
    assert m.metrics["compression_ratio"] >= POLICY.min_compression
    assert m.metrics["artifact_bytes"] == len(r.files[MODEL_FILE])
    assert len(m.hist_edges) == m.stem_shape[0] == 8
    # the shadow check asks no more agreement with the base than the version showed on held-out
    # samples of the device's data (cross-fitted: the shipped re-fit saw every calibration sample)
    held = m.metrics["heldout_agreement"]
    assert held == r.chosen.agreement and 0 < held <= 1
    assert m.floors.shadow_agreement_min == shadow_floor(held, int(m.metrics["calibration_size"]))
    assert m.floors.shadow_agreement_min <= min(0.9, held)
    assert r.candidates and all("kl" in c and "compression_ratio" in c for c in r.candidates)
    (tmp_path / MODEL_FILE).write_bytes(r.files[MODEL_FILE])
    path = artifact.materialize(m, tmp_path, tmp_path / "run")
    x = np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32)
    logits, stem = export.run(export.session(path.read_bytes()), x)
    assert logits.shape == (4, 10) and stem.shape == (4, *m.stem_shape)
    # the label-free estimate logged with the version: what the agent's estimator says on the
    # calibration data, near the labelled accuracy on the device's own test images
    cp = m.confidence_profile
    assert m.metrics["estimated_accuracy"] == pytest.approx(float(np.dot(cp.reference_hist, cp.accuracy)))
    footwear = DeviceProfile("dev-1", (Phase(10**9, tuple(float(c in (5, 7, 9)) for c in range(10))),))
    batch = footwear.stream("test", role="eval").next_batch(2000)
    logits, _ = export.run(export.session(path.read_bytes()), preprocess(batch.images))
    assert abs(m.metrics["estimated_accuracy"] - float((logits.argmax(1) == batch.labels).mean())) < 0.06


def test_the_global_mask_competes_as_a_fallback_and_wins_when_it_is_better(tiny, sketches):
    global_sketches = [parse_sketch(b) for b in device_sketches(tiny, "fleet", 8, classes=tuple(range(10)))]
    strong = retrain(tiny, global_sketches, replace(POLICY, mode="target_compression",
                                                     target_compression=9.0, min_compression=1.0))
    assert strong.metrics["compression_ratio"] >= 9.0
    weak = replace(POLICY, kl_budget=10.0, min_compression=1.0, search_steps=1, max_amount=0.2)  # one light probe
    r = retrain(tiny, sketches, weak, fallbacks={"global": strong.files[MODEL_FILE]})
    fallback = next(c for c in r.candidates if c["method"] == "fallback:global")
    assert fallback["kl"] > 0  # judged on this device's own calibration set
    assert r.chosen.criterion == "fallback:global"
    assert r.metrics["compression_ratio"] >= 9.0


@pytest.mark.parametrize("compute", ["fp32", "int8"])
def test_the_size_the_search_judges_is_the_size_of_the_file_it_ships(tiny, sketches, compute):
    # One fold: no re-fit on the whole set after the search, so the chosen network is the shipped one.
    policy = replace(POLICY, mode="target_compression", target_compression=6.0, min_compression=1.0,
                     compute=compute, folds=1)
    r = retrain(tiny, sketches, policy)
    shipped = len(r.files[MODEL_FILE])
    assert r.metrics["artifact_bytes"] == shipped
    if compute == "fp32":
        assert r.chosen.artifact_bytes == shipped
    else:  # the int8 layout's overhead measured once, with a margin: never below the file, barely above
        assert shipped <= r.chosen.artifact_bytes <= shipped + 2 * search.ShippedSize.MARGIN
    assert r.metrics["compression_ratio"] >= 6.0


def test_sketches_of_another_base_model_or_stem_are_rejected_with_a_clear_error(tiny, sketches):
    with pytest.raises(PolicyError, match="another base model"):
        retrain(tiny, [replace(sketches[0], base_model="other-cnn")], POLICY)
    edges = np.tile(np.linspace(0, 1, 17, dtype=np.float32), (4, 1))
    b = SketchBuilder("dev-1", tiny.name, edges)
    b.update(np.ones((50, 4, 14, 14), np.float32))
    with pytest.raises(CalibrationError, match="do not fit base model"):
        retrain(tiny, [parse_sketch(b.emit())], POLICY)
    raw = device_sketches(tiny, "dev-1", 1)[0]
    with pytest.raises(WireFormatError, match="malformed sketch"):
        parse_sketch(raw[:-7])


def test_the_shadow_floor_is_the_default_unless_the_version_agreed_less_on_the_device_data():
    assert shadow_floor(0.99, 512) == 0.9
    # 256 inputs on the device against an estimate from 512 held-out samples: about 0.870
    assert shadow_floor(0.90, 512) == pytest.approx(0.90 - 1.645 * (0.9 * 0.1 * (1 / 256 + 1 / 512)) ** 0.5)
    assert shadow_floor(0.90, 512) < shadow_floor(0.90, 10**9) < 0.9  # a rougher estimate asks less
    assert shadow_floor(0.60, 512) < 0.6
