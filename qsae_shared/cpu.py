"""What this CPU is, as far as the runtime's int8 kernels care (numpy-free, for the agent too).

ONNX Runtime computes an int8 layer with uint8 activations and int8 weights (U8S8). On x86
without VNNI (AVX2 or AVX-512 only) its kernels use VPMADDUBSW, which adds two u8 x s8 products
into a *saturating* int16: with activations near 255 and weights near 127 the sum is clamped and
the layer computes something else than the artifact says (measured on an AMD EPYC with AVX2 only:
logits off by 0.45 on a tiny CNN whose logits spread 1.8). Its U8U8 kernels widen to int16 first
and are exact everywhere, so such CPUs get the same int8 weights as uint8 offset by 128 with zero
point 128: the same numbers, another kernel. VNNI CPUs and ARM keep U8S8.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8"})
INT8_WEIGHT_FORMATS = ("s8", "u8")


@cache
def model_and_flags() -> tuple[str, frozenset[str]]:
    """The CPU's model name and instruction-set flags (empty where /proc/cpuinfo is missing)."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() in ("flags", "Features") and not flags:
                flags = value.strip()
    except OSError:
        pass
    return model, frozenset(flags.split())


def int8_weight_format(machine: str | None = None, flags: frozenset[str] | None = None) -> str:
    """"s8" (int8 weights, zero point 0) or "u8" (uint8 weights + 128, zero point 128): the form in
    which ONNX Runtime computes an int8 layer exactly and fastest on this CPU."""
    machine = (machine or platform.machine()).lower()
    if flags is None:
        flags = model_and_flags()[1]
    x86 = machine in ("x86_64", "amd64", "i386", "i686", "x86")
    return "u8" if x86 and not flags & VNNI_FLAGS else "s8"
