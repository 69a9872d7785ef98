"""The int8 weight form follows the CPU: uint8 + 128 where ONNX Runtime's int8 kernels saturate
(x86 without VNNI), int8 elsewhere; both forms hold the same numbers."""

import numpy as np
import pytest

from qsae_shared import artifact, cpu
from qsae_shared.errors import ArtifactError

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})


@pytest.mark.parametrize(("machine", "flags", "want"), [
    ("x86_64", AVX2, "u8"),
    ("x86_64", AVX2 | {"avx512f", "avx512bw"}, "u8"),  # AVX-512 without VNNI saturates as well
    ("x86_64", AVX2 | {"avx512f", "avx512_vnni"}, "s8"),
    ("x86_64", AVX2 | {"avx_vnni"}, "s8"),
    ("AMD64", frozenset(), "u8"),  # nothing known about the CPU: the exact form
    ("aarch64", frozenset({"asimd", "asimddp"}), "s8"),
])
def test_weight_form_by_cpu(machine, flags, want):
    assert cpu.int8_weight_format(machine, flags) == want


def _dequantized(inits):
    (_, q), (_, scale), (_, zero_point) = inits
    return (q.astype(np.float32) - zero_point.astype(np.float32)[:, None]) * scale[:, None]


def test_both_forms_hold_the_same_weights():
    q = np.array([[-127, -1, 0, 1, 127], [5, -5, 64, -64, 0]], np.int8)
    t = artifact.PackedTensor("w", q, np.array([0.5, 0.25], np.float32), compute="int8")
    s8, u8 = artifact.initializers(t, "s8"), artifact.initializers(t, "u8")
    assert s8[0][1].dtype == np.int8 and u8[0][1].dtype == np.uint8
    assert u8[2][1].tolist() == [128, 128]
    np.testing.assert_array_equal(_dequantized(s8), _dequantized(u8))
    np.testing.assert_array_equal(_dequantized(s8), q * np.array([[0.5], [0.25]], np.float32))
    with pytest.raises(ArtifactError, match="int8 weights must be one of"):
        artifact.initializers(t, "int4")
