import json
from dataclasses import replace

import pytest

from qsae_shared.data import preprocessing_spec
from qsae_shared.errors import SignatureError, SizeLimitError, WireFormatError
from qsae_shared.manifest import ConfidenceProfile, FileEntry, Manifest, PolicyFloors
from qsae_shared.signing import SigningKey, verify_manifest


def make_manifest(**changes):
    m = Manifest(
        version_id="v-1", base_model="fmnist-cnn", base_version="1", device_id="dev-1", created_at=1.0,
        preprocessing=preprocessing_spec(), input_name="input", output_name="logits",
        stem_output_name="stem", stem_shape=[2, 14, 14], hist_edges=[[0.0, 1.0, 2.0]] * 2,
        confidence_profile=ConfidenceProfile([0.0, 0.5, 1.0], [0.4, 0.9], [0.2, 0.8]),
        floors=PolicyFloors(), method={"criterion": "qsae"}, metrics={"kl": 0.01, "compression_ratio": 20.0},
        files=[FileEntry("model.qsaf", "model", 1234, "a" * 64)])
    return replace(m, **changes)


def test_round_trip():
    m = make_manifest()
    assert Manifest.from_json(m.to_json()) == m


def test_signature_verifies_and_detects_tampering_and_unknown_keys():
    key = SigningKey.generate()
    signed = key.sign_manifest(make_manifest())
    trusted = {key.key_id: key.public_key_b64}
    verify_manifest(Manifest.from_json(signed.to_json()), trusted)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_manifest(replace(signed, metrics={"kl": 0.0, "compression_ratio": 99.0}), trusted)
    other = SigningKey.generate()
    with pytest.raises(SignatureError, match="unknown key"):
        verify_manifest(signed, {other.key_id: other.public_key_b64})


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(schema_version=2), "unknown manifest schema_version 2"),
    (lambda d: d.pop("files"), "lacks files"),
    (lambda d: d.update(surprise=1), "unknown fields surprise"),
    (lambda d: d["files"][0].update(sha256="xyz"), "sha256"),
    (lambda d: d["files"][0].update(name="../etc/passwd"), "plain file name"),
    (lambda d: d.update(stem_shape=[2, 14]), "stem_shape"),
    (lambda d: d.update(hist_edges=[[0.0, 1.0]]), "one row per stem channel"),
    (lambda d: d.update(hist_edges=[[0.0, 0.0, 2.0]] * 2), "must increase"),
    (lambda d: d["confidence_profile"].update(accuracy=[0.5]), "confidence profile"),
    (lambda d: d["metrics"].update(kl=float("nan")), "finite"),
])
def test_malformed_manifests_say_what_is_wrong(edit, match):
    doc = json.loads(make_manifest().to_json())
    edit(doc)
    with pytest.raises(WireFormatError, match=match):
        Manifest.from_json(json.dumps(doc))


def test_not_json_and_oversized():
    with pytest.raises(WireFormatError, match="not JSON"):
        Manifest.from_json(b"{nope")
    with pytest.raises(SizeLimitError):
        Manifest.from_json(b" " * 2_000_000)
