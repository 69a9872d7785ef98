"""The one compression ratio every benchmark and every manifest reports (DESIGN.md)."""

from __future__ import annotations

FP32_BYTES = 4


def dense_fp32_bytes(dense_param_count: int) -> int:
    """4 bytes x (weights + biases) of the dense target network."""
    return FP32_BYTES * int(dense_param_count)


def compression_ratio(dense_param_count: int, artifact_bytes: int) -> float:
    """Dense fp32 bytes over the bytes of everything the agent downloads to build its runtime
    model (manifest and signature excluded, packing and general-purpose compression included)."""
    if artifact_bytes <= 0:
        raise ValueError("artifact_bytes must be positive")
    return dense_fp32_bytes(dense_param_count) / artifact_bytes
