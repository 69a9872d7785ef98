"""The model artifact: bit-packed masks and int8 weights in, the same tensors out; anything
malformed is an ArtifactError that says what is wrong; the unpacked ONNX runs in ONNX Runtime."""

import lzma
import struct
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qsae_shared import artifact
from qsae_shared.errors import ArtifactError


def _tensors(rng):
    w = rng.integers(-127, 128, size=(6, 5), dtype=np.int8)
    mask = rng.random((6, 5)) < 0.3
    w[~mask] = 0
    return [
        artifact.PackedTensor("w", w, rng.uniform(0.01, 0.1, 6).astype(np.float32), mask),
        artifact.PackedTensor("v", rng.integers(-127, 128, size=(4, 2, 3, 3), dtype=np.int8),
                              np.full(4, 0.05, np.float32), compute="int8"),
        artifact.PackedTensor("b", rng.normal(size=6).astype(np.float32)),
    ]


def test_round_trip_restores_every_tensor_and_stores_only_kept_weights():
    rng = np.random.default_rng(0)
    tensors = _tensors(rng)
    blob = artifact.pack(b"graph-bytes", tensors, {"spec": {"name": "x"}})
    c = artifact.unpack(blob)
    assert c.graph == b"graph-bytes" and c.header["meta"] == {"spec": {"name": "x"}}
    for t in tensors:
        got = c.tensors[t.name]
        np.testing.assert_array_equal(got.values, t.values)
        if t.scales is not None:
            np.testing.assert_array_equal(got.scales, t.scales)
    np.testing.assert_array_equal(c.tensors["w"].mask, tensors[0].mask)
    entry = next(e for e in c.header["tensors"] if e["name"] == "w")
    assert entry["encoding"] == "masked-int8"
    assert entry["length"] == 4 + 6 * 4 + int(tensors[0].mask.sum())  # mask bits, scales, kept values
    assert c.tensors["v"].compute == "int8"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b"XART" + b[4:], "bad magic"),
    (lambda b: b[:4] + struct.pack("<H", 9) + b[6:], "unknown version 9"),
    (lambda b: b[:-5], "truncated|corrupt"),
    (lambda b: b + b"\0\0", "trailing bytes|corrupt"),
    (lambda b: b[:3], "shorter than its prefix"),
])
def test_malformed_artifacts_are_rejected_with_a_reason(mutate, message):
    blob = artifact.pack(b"g", _tensors(np.random.default_rng(1)))
    with pytest.raises(ArtifactError, match=message):
        artifact.unpack(mutate(blob))


def _xz_dictionary(blob: bytes) -> int:
    """The dictionary size an artifact's xz stream declares (its one LZMA2 filter's property byte)."""
    p = _block_header(blob)[4]
    return (2 | (p & 1)) << (p // 2 + 11)


def _block_header(blob: bytes) -> bytearray:
    xz = blob[6:]  # after b"QART" and the version; then a 12-byte stream header
    return bytearray(xz[12:12 + (xz[12] + 1) * 4])  # size, flags, filter id 0x21, 1 property byte, ..., CRC32


def test_a_packed_artifact_asks_a_device_for_a_small_dictionary_and_a_greedy_one_is_refused():
    blob = artifact.pack(b"g" * 3000, _tensors(np.random.default_rng(3)))
    assert _xz_dictionary(blob) == 4096  # not lzma's preset 64 MiB: the body is about 3 KB
    header = _block_header(blob)
    assert header[2:4] == b"\x21\x01"
    header[4] = 40  # declare a dictionary of 4 GiB - 1
    header[-4:] = struct.pack("<I", zlib.crc32(header[:-4]))
    greedy = blob[:18] + bytes(header) + blob[18 + len(header):]
    with pytest.raises(ArtifactError, match="needs more than 72 MiB to unpack"):
        artifact.unpack(greedy)


def test_a_header_that_lies_about_sizes_is_rejected():
    header = b'{"graph":{"offset":0,"length":1},"tensors":[{"name":"w","shape":[1000],"encoding":"int8",' \
             b'"compute":"fp32","offset":1,"length":3}],"meta":{}}'
    body = struct.pack("<I", len(header)) + header + b"gabc"
    blob = b"QART" + struct.pack("<H", 1) + lzma.compress(body, format=lzma.FORMAT_XZ)
    with pytest.raises(ArtifactError, match="tensor w"):
        artifact.unpack(blob)


def test_unpacked_model_runs_in_onnx_runtime_with_dequantized_weights():
    rng = np.random.default_rng(2)
    q = rng.integers(-127, 128, size=(3, 4), dtype=np.int8)
    scales = np.array([0.1, 0.2, 0.3], np.float32)
    bias = np.array([1.0, -1.0, 0.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    blob = artifact.pack(model.SerializeToString(),
                         [artifact.PackedTensor("w", q, scales), artifact.PackedTensor("b", bias)])
    onnx_bytes = artifact.to_onnx(artifact.unpack(blob))
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = rng.normal(size=(5, 4)).astype(np.float32)
    want = x @ (q.astype(np.float32) * scales[:, None]).T + bias
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    c = artifact.unpack(blob)
    assert artifact.runtime_weight_bytes(c) == 4 * (12 + 3)
