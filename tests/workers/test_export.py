"""int8 export: the torch simulation and ONNX Runtime agree; the artifact round-trips through the
agent's unpacker with its sha256 checked; the stem output is the dense stem's."""

import numpy as np
import pytest
import torch

from qsae_shared import artifact
from qsae_shared.errors import ArtifactError
from qsae_shared.manifest import FileEntry, Manifest
from workers import export, importance, masks, nets, onnx_graph, runtime_choice
from workers.errors import ExportError
from workers.policy import Policy
from workers.recovery import RecoveryConfig, recover

from .conftest import inputs


def _pruned(net, spec, calib, amount=0.6):
    scores = importance.score("energy", net, spec, calib)
    p = masks.shrink(net, masks.build(spec, scores, amount, masks.Schedule()), spec)
    recover(p, net, spec, calib, RecoveryConfig())
    return p


def _onnx(p, compute=None, act=None, int8_weights=None):
    return artifact.to_onnx(artifact.unpack(export.build_artifact(p, compute, act)), int8_weights)


def test_fp32_compute_onnx_runtime_matches_the_torch_simulation(tiny_cnn):
    net, spec, calib = tiny_cnn
    p = _pruned(net, spec, calib)
    x = inputs(spec, 64, seed=5)
    logits, stem = export.run(export.session(_onnx(p)), x)
    with torch.no_grad():
        want = export.simulate(p.net, spec)(torch.from_numpy(x)).numpy()
        dense_stem = net[: spec["stem_end"]](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)
    # The stem is never pruned: the artifact's extra output is the stem's output.
    np.testing.assert_allclose(stem, dense_stem, atol=1e-2, rtol=1e-2)


# This CPU's own weight form (None) and uint8 + 128, which every CPU computes exactly; int8
# weights ("s8") saturate on x86 without VNNI (qsae_shared.cpu), so they are not asserted here.
@pytest.mark.parametrize("int8_weights", [None, "u8"])
@pytest.mark.parametrize("pattern", ["int8 int8 int8 int8", "int8 int8 fp32 fp32", "fp32 int8 int8 fp32",
                                     "int8 fp32 int8 int8"])
def test_int8_compute_onnx_runtime_matches_the_torch_simulation(tiny_cnn, pattern, int8_weights):
    net, spec, calib = tiny_cnn
    p = _pruned(net, spec, calib, amount=0.3)
    compute, act = runtime_choice.choose_compute(p, calib, "int8")
    assert [compute[i] for i in nets.weighted_indices(spec)] == ["fp32", "int8", "int8", "int8", "int8"]
    compute.update(zip(nets.weighted_indices(spec)[1:], pattern.split(), strict=True))
    x = inputs(spec, 256, seed=6)
    logits, _ = export.run(export.session(_onnx(p, compute, act, int8_weights)), x)
    with torch.no_grad():
        want = export.simulate(p.net, spec, compute, act)(torch.from_numpy(x)).numpy()
    spread = float(want.std())
    assert float(np.abs(logits - want).max()) < 0.05 * spread + 1e-3
    assert (logits.argmax(1) == want.argmax(1)).mean() >= 0.98


def test_int8_layers_pass_uint8_tensors_to_each_other_without_requantizing(tiny_cnn):
    net, spec, calib = tiny_cnn
    p = _pruned(net, spec, calib, amount=0.3)
    compute, act = runtime_choice.choose_compute(p, calib, "int8")
    ops = [n.op_type for n in onnx_graph.build_graph(p.spec, compute, act).graph.node
           if not n.name.startswith("bias_")]  # the int32 bias nodes are folded at load
    # One QuantizeLinear after the fp32 stem; the ReLUs after int8 layers are the uint8 clamp.
    assert ops == ["Conv", "Relu", "MaxPool", "QuantizeLinear", "QLinearConv", "MaxPool", "QLinearConv",
                   "Flatten", "QGemm", "QGemm"]
    compute[9] = compute[11] = "fp32"  # an fp32 layer reads a float tensor: one DequantizeLinear
    ops = [n.op_type for n in onnx_graph.build_graph(p.spec, compute, act).graph.node
           if not n.name.startswith("bias_")]
    assert ops[-5:] == ["Flatten", "DequantizeLinear", "Gemm", "Relu", "Gemm"]


def test_weights_are_stored_int8_with_bit_packed_masks(tiny_cnn):
    net, spec, calib = tiny_cnn
    p = _pruned(net, spec, calib)
    contents = artifact.unpack(export.build_artifact(p))
    for i in nets.weighted_indices(spec):
        w, _ = onnx_graph.weight_names(i)
        t = contents.tensors[w]
        assert t.values.dtype == np.int8 and t.scales.shape == (t.values.shape[0],)
        if i in p.masks and not bool(p.masks[i].all()):
            np.testing.assert_array_equal(t.mask, p.masks[i].numpy())
            assert not t.values[~t.mask].any()  # masked weights are not stored


def _manifest(blob: bytes, sha: str | None = None, size: int | None = None) -> Manifest:
    import hashlib

    from qsae_shared.data import preprocessing_spec
    from qsae_shared.manifest import ConfidenceProfile, PolicyFloors

    return Manifest(
        version_id="v1", base_model="tiny-cnn", base_version="t", device_id=None, created_at=0.0,
        preprocessing=preprocessing_spec(), input_name="input", output_name="logits",
        stem_output_name="stem", stem_shape=[4, 4, 4], hist_edges=[[0.0, 1.0]] * 4,
        confidence_profile=ConfidenceProfile([0.0, 1.0], [0.5], [1.0]), floors=PolicyFloors(),
        method={}, metrics={},
        files=[FileEntry("model.qart", "model", size if size is not None else len(blob),
                         sha or hashlib.sha256(blob).hexdigest())])


def test_artifact_round_trip_checks_sha256_and_size(tiny_cnn, tmp_path):
    net, spec, calib = tiny_cnn
    p = _pruned(net, spec, calib)
    blob = export.build_artifact(p)
    (tmp_path / "model.qart").write_bytes(blob)
    path = artifact.materialize(_manifest(blob), tmp_path, tmp_path / "out")
    x = inputs(spec, 8, seed=7)
    logits, _ = export.run(export.session(path.read_bytes()), x)
    assert logits.shape == (8, 3)
    with pytest.raises(ArtifactError, match="sha256"):
        artifact.materialize(_manifest(blob, sha="0" * 64), tmp_path, tmp_path / "out")
    with pytest.raises(ArtifactError, match="bytes, the manifest says"):
        artifact.materialize(_manifest(blob, size=len(blob) + 1), tmp_path, tmp_path / "out")
    (tmp_path / "model.qart").write_bytes(blob[:-10])
    with pytest.raises(ArtifactError):
        artifact.materialize(_manifest(blob[:-10]), tmp_path, tmp_path / "out2")


def test_auto_compute_picks_a_mode_per_layer_and_keeps_the_stem_fp32(tiny_cnn):
    net, spec, calib = tiny_cnn
    p = _pruned(net, spec, calib)
    compute, _ = runtime_choice.choose_compute(p, calib, Policy().compute)
    assert compute[0] == "fp32"
    assert set(compute.values()) <= {"fp32", "int8"}
    assert sorted(compute) == nets.weighted_indices(spec)


def test_an_int8_stem_is_refused(tiny_cnn):
    net, spec, calib = tiny_cnn
    p = _pruned(net, spec, calib)
    compute, act = runtime_choice.choose_compute(p, calib, "int8")
    with pytest.raises(ExportError, match="stem layers"):
        onnx_graph.build_graph(p.spec, {**compute, 0: "int8"}, act)
