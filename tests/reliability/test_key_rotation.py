"""Key rotation, piece by piece: the announcement format, following a chain from pinned keys
(forged, malformed and unreachable links add nothing), and the server's keyring (rotate, re-read
without a restart, chain in every manifest it signs, retired keys no longer handed out)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from control_plane.keyring import RotatingSigner, rotate_signing_key, rotations_path, trusted_public_keys
from control_plane.keys import load_or_create_signing_key
from qsae_shared.errors import SignatureError, WireFormatError
from qsae_shared.keyrotation import (
    MANIFEST_EXTRA_KEY,
    MAX_CHAIN,
    RotationAnnouncement,
    announce,
    chain_from_manifest_extra,
    follow,
    verify_announcement,
)
from qsae_shared.manifest import ConfidenceProfile, FileEntry, Manifest, PolicyFloors
from qsae_shared.signing import SigningKey, verify_manifest


def pinned(*keys: SigningKey) -> dict[str, str]:
    return {k.key_id: k.public_key_b64 for k in keys}


def manifest() -> Manifest:
    return Manifest(version_id="v-1", base_model="tiny-cnn", base_version="1", device_id=None, created_at=1.0,
                    preprocessing={"mean": 0.3, "std": 0.35}, input_name="input", output_name="logits",
                    stem_output_name="stem", stem_shape=[2, 14, 14], hist_edges=[[0.0, 1.0, 2.0]] * 2,
                    confidence_profile=ConfidenceProfile([0.0, 0.5, 1.0], [0.4, 0.9], [0.2, 0.8]),
                    floors=PolicyFloors(), method={}, metrics={"kl": 0.01},
                    files=[FileEntry("model.qart", "model", 10, "a" * 64)])


def test_an_announcement_round_trips_and_verifies_only_against_its_signer() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    ann = announce(old, new.public_key_b64, issued_at=100.0)
    again = RotationAnnouncement.from_json(ann.to_json())
    assert again == ann and again.new_key_id == new.key_id and again.signed_by == old.key_id
    verify_announcement(again, pinned(old))
    with pytest.raises(SignatureError, match="unknown key"):
        verify_announcement(again, pinned(new))
    with pytest.raises(SignatureError, match="bad signature"):
        verify_announcement(replace(again, issued_at=101.0), pinned(old))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(schema_version=2), "schema_version"),
    (lambda d: d.pop("signature"), "missing"),
    (lambda d: d.update(extra=1), "unknown"),
    (lambda d: d.update(new_key_id="0" * 16), "has id"),
    (lambda d: d.update(issued_at=float("inf")), "finite"),
    (lambda d: d.update(retire_previous="yes"), "true or false"),
    (lambda d: d.update(new_public_key="not base64!"), "base64"),
])
def test_malformed_announcements_are_refused(edit, match) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    doc = announce(old, new.public_key_b64, issued_at=1.0).to_dict()
    edit(doc)
    with pytest.raises(WireFormatError, match=match):
        RotationAnnouncement.from_dict(doc)


def test_follow_walks_a_chain_in_any_order_and_retires() -> None:
    k1, k2, k3 = (SigningKey.generate() for _ in range(3))
    a12 = announce(k1, k2.public_key_b64, issued_at=1.0)
    a23 = announce(k2, k3.public_key_b64, issued_at=2.0, retire_previous=True)
    keys, applied = follow(pinned(k1), [a23.to_dict(), a12])  # out of order, dict or object
    assert keys == pinned(k1, k3) and applied == [a12, a23]
    assert follow(pinned(k3), [a12, a23]) == (pinned(k3), [])  # nothing reachable from k3: nothing changes


def test_forged_malformed_and_unreachable_links_add_nothing() -> None:
    k1, evil, other = (SigningKey.generate() for _ in range(3))
    forged = replace(announce(evil, evil.public_key_b64, issued_at=1.0), signed_by=k1.key_id)  # claims k1
    by_stranger = announce(other, evil.public_key_b64, issued_at=2.0)  # signed by a key nobody pinned
    malformed = {**announce(k1, evil.public_key_b64, issued_at=3.0).to_dict(), "new_key_id": "0" * 16}
    keys, applied = follow(pinned(k1), [forged, by_stranger, malformed, "junk"])
    assert keys == pinned(k1) and applied == []


def test_follow_reads_a_bounded_chain() -> None:
    keys = [SigningKey.generate() for _ in range(MAX_CHAIN + 3)]
    chain = [announce(a, b.public_key_b64, issued_at=float(i)) for i, (a, b) in enumerate(itertools.pairwise(keys))]
    trusted, applied = follow(pinned(keys[0]), chain)
    assert len(applied) == MAX_CHAIN and keys[-1].key_id not in trusted


def test_chain_from_manifest_extra_ignores_junk() -> None:
    assert chain_from_manifest_extra({}) == []
    assert chain_from_manifest_extra({MANIFEST_EXTRA_KEY: "nope"}) == []
    assert chain_from_manifest_extra({MANIFEST_EXTRA_KEY: [1, {"a": 1}]}) == [{"a": 1}]


def test_keyring_rotates_and_signers_follow_without_a_restart(tmp_path) -> None:
    path = tmp_path / "keys" / "signing.key"
    signer = load_or_create_signing_key(path)
    assert isinstance(signer, RotatingSigner)
    k1, pub1 = signer.key_id, signer.public_key_b64
    before = signer.sign_manifest(manifest())
    assert MANIFEST_EXTRA_KEY not in before.extra  # nothing rotated yet: manifests as before
    assert trusted_public_keys(signer) == {k1: signer.public_key_b64}

    ann = rotate_signing_key(path)
    assert ann.signed_by == k1 and (path.stat().st_mode & 0o777) == 0o600
    after = signer.sign_manifest(manifest())  # the running signer noticed the new key file
    assert after.key_id == ann.new_key_id != k1
    assert chain_from_manifest_extra(after.extra) == [ann.to_dict()]
    keys, _ = follow({k1: pub1}, chain_from_manifest_extra(after.extra))
    verify_manifest(after, keys)  # a device pinned on k1 verifies it through the chain
    verify_manifest(before, signer.trusted_keys())  # versions signed before still verify
    assert set(json.loads(rotations_path(path).read_text())["keys"]) == {k1, ann.new_key_id}

    third = rotate_signing_key(path, retire_previous=True)
    assert set(signer.trusted_keys()) == {k1, third.new_key_id}  # the second key is retired
    assert len(chain_from_manifest_extra(signer.sign_manifest(manifest()).extra)) == 2


def test_a_half_written_key_file_keeps_the_loaded_key(tmp_path) -> None:
    path = tmp_path / "signing.key"
    signer = load_or_create_signing_key(path)
    k1 = signer.key_id
    path.write_bytes(b"short")  # e.g. copied in by hand, wrong
    assert signer.reload_if_rotated() is False
    assert signer.sign_manifest(manifest()).key_id == k1
