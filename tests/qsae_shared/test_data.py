import numpy as np
import pytest

from qsae_shared import data
from qsae_shared.errors import DatasetMissingError


def test_loads_both_splits_with_the_documented_shapes():
    train, test = data.load_split("train"), data.load_split("test")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28)
    assert np.array_equal(np.bincount(test.labels), [1000] * 10)


def test_missing_dataset_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetMissingError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_split("train")


def test_preprocess_normalizes_clean_training_images():
    x = data.load_split("train").images[:5000].astype(np.float32) / 255
    y = data.preprocess(x)
    assert y.shape == (5000, 1, 28, 28) and y.dtype == np.float32
    assert abs(float(y.mean())) < 0.05 and abs(float(y.std()) - 1) < 0.05
