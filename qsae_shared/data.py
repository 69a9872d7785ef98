"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, and input preprocessing.

Images come back as uint8 arrays of shape (N, 28, 28); `preprocess` turns [0, 1] floats into the
network's normalized (N, 1, 28, 28) float32 input. The data folder defaults to the Debian path and
can be moved with the `FLEET_DATA_DIR` environment variable.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsae_shared.errors import DatasetMissingError

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "install it with `sudo apt-get install -y dataset-fashion-mnist`"
NUM_CLASSES = 10
CLASS_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)
# Mean and std of the clean training images in [0, 1]; part of every manifest's preprocessing.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def data_dir() -> Path:
    return Path(os.environ.get("FLEET_DATA_DIR", str(DEFAULT_DATA_DIR)))


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetMissingError(f"Fashion-MNIST file {path} is missing: {INSTALL_HINT} "
                                  "(or point FLEET_DATA_DIR at a folder holding the IDX files)")
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise DatasetMissingError(f"{path} is not an IDX file (magic {found}, expected {magic})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=4)
def _load(split: str, root: str) -> Split:
    images_name, labels_name = _FILES[split]
    images = _read_idx(Path(root) / images_name, 2051)
    labels = _read_idx(Path(root) / labels_name, 2049).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetMissingError(f"{split}: {len(images)} images but {len(labels)} labels")
    images.setflags(write=False)
    labels.setflags(write=False)
    return Split(images=images, labels=labels)


def load_split(split: str, root: Path | None = None) -> Split:
    """The `train` (60,000) or `test` (10,000) split; cached per process."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return _load(split, str(root or data_dir()))


def preprocess(images01: np.ndarray) -> np.ndarray:
    """(N, 28, 28) floats in [0, 1] -> (N, 1, 28, 28) float32 normalized network input."""
    x = np.asarray(images01, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {x.shape}")
    return ((x - PIXEL_MEAN) / PIXEL_STD)[:, None, :, :].astype(np.float32)


def preprocessing_spec() -> dict[str, float | str]:
    """The preprocessing a manifest records, so a device reproduces it exactly."""
    return {"layout": "NCHW", "height": 28, "width": 28, "scale": 1 / 255,
            "mean": PIXEL_MEAN, "std": PIXEL_STD}
