"""The model artifact a device pulls: one file holding the graph, the bit-packed masks and the
int8 weights they keep. numpy-only, so the agent unpacks it without torch or the `onnx` package.

File layout (version 1): b"QART", u16 version, then an xz (lzma) stream of
    u32 header length, UTF-8 JSON header, body sections.
The header names the ONNX graph section (a model whose large weights were left out) and one
entry per weight tensor:
    {"name", "shape", "encoding", "compute", "offset", "length"}
`encoding` is how the bytes are stored:
    "masked-int8": bit-packed mask (np.packbits over the flattened tensor, 1 = kept),
                   fp32 scales per output channel, then the int8 values of the kept entries;
    "int8":        fp32 scales per output channel, then every int8 value;
    "float32":     raw float32 values (biases).
`compute` is how the runtime uses it: "fp32" means the unpacker writes float32 weights
(q * scale; the layer computes in fp32), "int8" means it writes the int8 tensor as `name` plus
`name_scale` (fp32) and `name_zero_point` for a QLinear operator: int8 with zero point 0, or, on
CPUs whose int8 kernels would saturate, the same values as uint8 + 128 with zero point 128
(`qsae_shared.cpu`).

`materialize` verifies the manifest's sizes and sha256 digests, unpacks, and writes an ONNX
model that ONNX Runtime loads directly: the weights are appended to the graph as protobuf
initializer fields (protobuf merges repeated occurrences of a message field).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qsae_shared import cpu
from qsae_shared.canonical import canonical_json
from qsae_shared.errors import ArtifactError
from qsae_shared.manifest import Manifest

MAGIC = b"QART"
VERSION = 1
MODEL_ROLE = "model"
MAX_UNPACKED_BYTES = 64 * 1024 * 1024  # refuse to inflate anything larger (decompression bombs)
# and to unpack with more memory than this (an xz stream declares its dictionary size; artifacts
# packed before session 11 used lzma's 64 MiB preset dictionary)
MAX_UNPACK_MEMORY = MAX_UNPACKED_BYTES + 8 * 1024 * 1024
ENCODINGS = ("masked-int8", "int8", "float32")
COMPUTES = ("fp32", "int8")
_PREFIX = struct.Struct("<4sH")
_ONNX_FLOAT, _ONNX_UINT8, _ONNX_INT8 = 1, 2, 3


@dataclass
class PackedTensor:
    """One weight tensor as the worker hands it to `pack`."""

    name: str  # initializer name in the graph
    values: np.ndarray  # int8 (quantized weights) or float32 (biases), full shape
    scales: np.ndarray | None = None  # (out,) float32 for int8 values
    mask: np.ndarray | None = None  # bool, values' shape; None = every entry kept
    compute: str = "fp32"  # "fp32" or "int8", see the module docstring


@dataclass
class Contents:
    """An unpacked artifact: the graph and every tensor, dense again."""

    header: dict[str, Any]
    graph: bytes  # ONNX ModelProto without the packed tensors
    tensors: dict[str, PackedTensor]


def _encode(t: PackedTensor) -> tuple[str, bytes]:
    v = np.ascontiguousarray(t.values)
    if v.dtype == np.float32:
        if t.mask is not None:
            raise ArtifactError(f"tensor {t.name}: float32 tensors cannot carry a mask")
        return "float32", v.astype("<f4").tobytes()
    if v.dtype != np.int8 or t.scales is None:
        raise ArtifactError(f"tensor {t.name}: need int8 values with scales, or float32 values")
    scales = np.ascontiguousarray(t.scales, dtype="<f4")
    if scales.shape != (v.shape[0],):
        raise ArtifactError(f"tensor {t.name}: scales must have shape ({v.shape[0]},), got {scales.shape}")
    if t.mask is None or bool(np.all(t.mask)):
        return "int8", scales.tobytes() + v.tobytes()
    mask = np.asarray(t.mask, dtype=bool)
    if mask.shape != v.shape:
        raise ArtifactError(f"tensor {t.name}: mask shape {mask.shape} != values shape {v.shape}")
    flat = mask.reshape(-1)
    return "masked-int8", np.packbits(flat).tobytes() + scales.tobytes() + v.reshape(-1)[flat].tobytes()


def _xz_filters(size: int) -> list[dict[str, int]]:
    """lzma's strongest settings (preset 9, extreme) with a dictionary just large enough for
    `size` bytes: the same compressed size as the preset's 64 MiB dictionary on every artifact
    measured (60 to 460 KB; 5 header bytes differ), packed about 6x faster (11 against 64 ms for
    75 KB), and a device unpacks it with a dictionary of 64 to 512 KiB instead of 64 MiB."""
    dict_size = max(1 << 12, 1 << max(size - 1, 1).bit_length())
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]


def pack(graph: bytes, tensors: list[PackedTensor], meta: dict[str, Any] | None = None) -> bytes:
    """Serialize and compress an artifact. `meta` is stored in the header as-is (JSON)."""
    sections: list[bytes] = [graph]
    entries = []
    offset = len(graph)
    for t in tensors:
        if t.compute not in COMPUTES:
            raise ArtifactError(f"tensor {t.name}: compute must be one of {COMPUTES}")
        encoding, data = _encode(t)
        entries.append({"name": t.name, "shape": [int(s) for s in t.values.shape],
                        "encoding": encoding, "compute": t.compute, "offset": offset,
                        "length": len(data)})
        sections.append(data)
        offset += len(data)
    header = canonical_json({"graph": {"offset": 0, "length": len(graph)}, "tensors": entries,
                             "meta": meta or {}})
    body = struct.pack("<I", len(header)) + header + b"".join(sections)
    return _PREFIX.pack(MAGIC, VERSION) + lzma.compress(body, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                                         filters=_xz_filters(len(body)))


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ArtifactError(f"malformed artifact: {msg}")


def _inflate(data: bytes) -> bytes:
    _require(len(data) >= _PREFIX.size, "shorter than its prefix")
    magic, version = _PREFIX.unpack_from(data)
    _require(magic == MAGIC, f"bad magic {magic!r}, expected {MAGIC!r}")
    _require(version == VERSION, f"unknown version {version}; this build reads {VERSION}")
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=MAX_UNPACK_MEMORY)
    try:
        body = dec.decompress(data[_PREFIX.size:], max_length=MAX_UNPACKED_BYTES)
    except lzma.LZMAError as exc:
        if "memory" in str(exc).lower():
            raise ArtifactError(f"malformed artifact: its xz stream needs more than {MAX_UNPACK_MEMORY >> 20} MiB "
                                f"to unpack ({exc})") from exc
        raise ArtifactError(f"malformed artifact: compressed body is corrupt ({exc})") from exc
    _require(dec.eof, "compressed body is truncated or inflates past "
             f"{MAX_UNPACKED_BYTES} bytes")
    _require(not dec.unused_data, "trailing bytes after the compressed body")
    return body


def unpack(data: bytes) -> Contents:
    """Parse an artifact file; every problem is an ArtifactError that names it."""
    body = _inflate(data)
    _require(len(body) >= 4, "no header length")
    (header_len,) = struct.unpack_from("<I", body)
    _require(4 + header_len <= len(body), "truncated inside the header")
    try:
        header = json.loads(body[4:4 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"malformed artifact: header is not JSON ({exc})") from exc
    _require(isinstance(header, dict) and isinstance(header.get("tensors"), list)
             and isinstance(header.get("graph"), dict), "header needs `graph` and `tensors`")
    payload = body[4 + header_len:]

    def section(entry: dict[str, Any], what: str) -> bytes:
        off, length = entry.get("offset"), entry.get("length")
        if not (isinstance(off, int) and isinstance(length, int)
                and off >= 0 and length >= 0 and off + length <= len(payload)):
            raise ArtifactError(f"malformed artifact: {what}: section outside the body")
        return payload[off:off + length]

    graph = section(header["graph"], "graph")
    tensors: dict[str, PackedTensor] = {}
    for e in header["tensors"]:
        _require(isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"],
                 "tensor entry without a name")
        name = e["name"]
        shape = e.get("shape")
        _require(isinstance(shape, list) and all(isinstance(s, int) and s > 0 for s in shape)
                 and len(shape) >= 1, f"tensor {name}: bad shape {shape!r}")
        _require(e.get("encoding") in ENCODINGS, f"tensor {name}: unknown encoding {e.get('encoding')!r}")
        _require(e.get("compute") in COMPUTES, f"tensor {name}: unknown compute {e.get('compute')!r}")
        _require(name not in tensors, f"tensor {name} appears twice")
        raw = section(e, f"tensor {name}")
        n = int(np.prod(shape))
        out = shape[0]
        if e["encoding"] == "float32":
            _require(len(raw) == 4 * n, f"tensor {name}: {len(raw)} bytes for {n} float32 values")
            tensors[name] = PackedTensor(name, np.frombuffer(raw, "<f4").reshape(shape).copy(),
                                         compute=e["compute"])
            continue
        if e["encoding"] == "int8":
            _require(len(raw) == 4 * out + n, f"tensor {name}: {len(raw)} bytes, expected {4 * out + n}")
            scales = np.frombuffer(raw, "<f4", count=out).copy()
            values = np.frombuffer(raw, np.int8, offset=4 * out).reshape(shape).copy()
            mask = None
        else:
            nbits = (n + 7) // 8
            _require(len(raw) >= nbits + 4 * out, f"tensor {name}: too short for its mask and scales")
            mask = np.unpackbits(np.frombuffer(raw, np.uint8, count=nbits), count=n).astype(bool)
            kept = int(mask.sum())
            _require(len(raw) == nbits + 4 * out + kept,
                     f"tensor {name}: {len(raw)} bytes, mask keeps {kept} values")
            scales = np.frombuffer(raw, "<f4", count=out, offset=nbits).copy()
            flat = np.zeros(n, np.int8)
            flat[mask] = np.frombuffer(raw, np.int8, offset=nbits + 4 * out)
            values, mask = flat.reshape(shape), mask.reshape(shape)
        _require(bool(np.all(np.isfinite(scales))) and bool(np.all(scales > 0)),
                 f"tensor {name}: scales must be finite and positive")
        tensors[name] = PackedTensor(name, values, scales, mask, e["compute"])
    return Contents(header=header, graph=graph, tensors=tensors)


# --- ONNX protobuf, written by hand (field numbers from onnx.proto) -------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _tensor_proto(name: str, array: np.ndarray) -> bytes:
    dtype = {np.dtype("float32"): _ONNX_FLOAT, np.dtype("int8"): _ONNX_INT8,
             np.dtype("uint8"): _ONNX_UINT8}[array.dtype]
    dims = b"".join(_varint(1 << 3 | 0) + _varint(int(d)) for d in array.shape)
    return (dims + _varint(2 << 3 | 0) + _varint(dtype) + _field(8, name.encode())
            + _field(9, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()))


def initializers(tensor: PackedTensor, int8_weights: str = "s8") -> list[tuple[str, np.ndarray]]:
    """The ONNX initializers one packed tensor becomes, by its compute mode; an int8-compute
    weight as int8 ("s8") or as the same values in uint8 + 128 ("u8", see `qsae_shared.cpu`)."""
    if tensor.scales is None:
        return [(tensor.name, tensor.values.astype(np.float32))]
    if tensor.compute == "int8":
        if int8_weights not in cpu.INT8_WEIGHT_FORMATS:
            raise ArtifactError(f"int8 weights must be one of {cpu.INT8_WEIGHT_FORMATS}, not {int8_weights!r}")
        q = tensor.values.astype(np.int8)
        zero_point = np.zeros(len(tensor.scales), np.int8)
        if int8_weights == "u8":
            q, zero_point = (q.astype(np.int16) + 128).astype(np.uint8), np.full(len(tensor.scales), 128, np.uint8)
        return [(tensor.name, q), (f"{tensor.name}_scale", tensor.scales.astype(np.float32)),
                (f"{tensor.name}_zero_point", zero_point)]
    view = (-1,) + (1,) * (tensor.values.ndim - 1)
    return [(tensor.name, tensor.values.astype(np.float32) * tensor.scales.reshape(view))]


def to_onnx(contents: Contents, int8_weights: str | None = None) -> bytes:
    """The runnable ONNX model: the graph with every tensor appended as an initializer, int8
    weights in the form this CPU computes exactly (`qsae_shared.cpu`) unless told otherwise."""
    fmt = int8_weights or cpu.int8_weight_format()
    inits = b"".join(_field(5, _tensor_proto(name, arr))
                     for t in contents.tensors.values() for name, arr in initializers(t, fmt))
    return contents.graph + _field(7, inits)


def runtime_weight_bytes(contents: Contents) -> int:
    """Bytes of weights the runtime holds after loading (fp32 or int8 per its compute mode)."""
    return sum(arr.nbytes for t in contents.tensors.values() for _, arr in initializers(t))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(manifest: Manifest, files_dir: Path) -> dict[str, Path]:
    """role -> path for every file of the manifest, after checking its size and sha256.
    A file may be stored under its name or under its sha256."""
    found: dict[str, Path] = {}
    for entry in manifest.files:
        candidates = [Path(files_dir) / entry.name, Path(files_dir) / entry.sha256]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ArtifactError(f"version {manifest.version_id}: file {entry.name} "
                                f"({entry.sha256[:12]}) is not in {files_dir}")
        size = path.stat().st_size
        if size != entry.size:
            raise ArtifactError(f"version {manifest.version_id}: {entry.name} is {size} bytes, "
                                f"the manifest says {entry.size}")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ArtifactError(f"version {manifest.version_id}: {entry.name} has sha256 "
                                f"{digest[:12]}..., the manifest says {entry.sha256[:12]}...")
        found[entry.role] = path
    return found


def materialize(manifest: Manifest, files_dir: Path, out_dir: Path) -> Path:
    """Verify the version's files against its manifest, unpack the model artifact and write an
    ONNX model ONNX Runtime can load; returns its path (out_dir / "<version_id>.onnx")."""
    paths = verify_files(manifest, Path(files_dir))
    if MODEL_ROLE not in paths:
        raise ArtifactError(f"version {manifest.version_id} has no file with role {MODEL_ROLE!r}")
    contents = unpack(paths[MODEL_ROLE].read_bytes())
    model = to_onnx(contents)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in manifest.version_id)
    target = out_dir / f"{safe}.onnx"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".materialize-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
