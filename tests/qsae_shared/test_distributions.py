import numpy as np
import pytest

from qsae_shared.data import CLASS_NAMES, Split
from qsae_shared.distributions import Corruption, Phase, profiles_from_scenario, sample, sample_evenly
from qsae_shared.errors import ScenarioError

SCENARIO = {
    "seed": 7,
    "devices": [
        {"id": "shoe-shop", "count": 2, "labels": {"cohort": "retail"}, "phases": [
            {"duration": 300, "classes": ["sandal", "sneaker", "ankle-boot"]},
            {"duration": 300, "classes": ["sandal", "sneaker", "ankle-boot"],
             "corruptions": [{"kind": "noise", "severity": 0.2}, {"kind": "contrast", "severity": 0.5}]},
        ]},
    ],
}


def test_scenario_expands_counts_and_follows_phases():
    profiles = profiles_from_scenario(SCENARIO)
    assert [p.device_id for p in profiles] == ["shoe-shop-0", "shoe-shop-1"]
    assert profiles[0].labels == {"cohort": "retail"}
    batch = profiles[0].stream("test").next_batch(400)
    assert set(np.unique(batch.labels)) <= {CLASS_NAMES.index(c) for c in ("sandal", "sneaker", "ankle-boot")}
    assert np.array_equal(np.bincount(batch.phase_index), [300, 100])
    clean, noisy = batch.images[:300], batch.images[300:]
    # Low contrast flattens the images; noise roughens them.
    assert noisy.std(axis=(1, 2)).mean() < clean.std(axis=(1, 2)).mean()


def test_streams_are_deterministic_by_seed_and_differ_by_device_and_split():
    a, b = profiles_from_scenario(SCENARIO)
    x1 = a.stream("train").next_batch(50).images
    x2 = a.stream("train").next_batch(50).images
    assert np.array_equal(x1, x2)
    assert not np.array_equal(x1, b.stream("train").next_batch(50).images)
    assert not np.array_equal(x1, a.stream("test").next_batch(50).images)


@pytest.mark.parametrize("kind,severity", [("noise", 0.3), ("contrast", 0.4), ("brightness", 0.3),
                                           ("blur", 1.5), ("rotation", 40)])
def test_every_corruption_changes_images_and_stays_in_range(kind, severity):
    rng = np.random.default_rng(0)
    x = rng.random((8, 28, 28), dtype=np.float32)
    x[:, :4] = 0
    y = Corruption(kind, severity).apply(x, rng)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert np.abs(y - x).mean() > 0.01


@pytest.mark.parametrize("bad,match", [
    ({"devices": []}, "non-empty"),
    ({"devices": [{"id": "a"}]}, "needs `id` and `phases`"),
    ({"devices": [{"id": "a", "phases": [{"duration": 10, "classes": ["hat"]}]}]}, "unknown class"),
    ({"devices": [{"id": "a", "phases": [{"duration": 10, "corruptions": [{"kind": "fog", "severity": 1}]}]}]},
     "unknown corruption"),
    ({"devices": [{"id": "a", "phases": [{"duration": 0}]}]}, "duration must be positive"),
    ({"devices": [{"id": "a", "phases": [{"duration": 5}]}, {"id": "a", "phases": [{"duration": 5}]}]}, "unique"),
])
def test_invalid_scenarios_say_what_is_wrong(bad, match):
    with pytest.raises(ScenarioError, match=match):
        profiles_from_scenario(bad)


def _numbered_split(per_class: int) -> Split:
    """per_class images of each class, image i carrying its number i in its first two pixels."""
    n = 10 * per_class
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return Split(images, np.repeat(np.arange(10), per_class))


def _numbers(x: np.ndarray) -> np.ndarray:
    return np.rint(x[:, 0, 0] * 255).astype(int) + 256 * np.rint(x[:, 0, 1] * 255).astype(int)


def test_evaluation_draws_use_every_image_once_before_any_twice():
    split = _numbered_split(30)
    uniform = Phase(1)
    x, y = sample_evenly(uniform, 300, split, np.random.default_rng(0))
    assert sorted(_numbers(x)) == list(range(300))  # the whole split, once each
    assert np.array_equal(y, split.labels[_numbers(x)])
    assert not np.array_equal(_numbers(x), np.arange(300))  # shuffled
    # Drawing with replacement, as the device streams do, leaves about a third unseen.
    assert len(set(_numbers(sample(uniform, 300, split, np.random.default_rng(0))[0]))) < 220

    skewed = Phase(1, (2, 1, 1) + (0,) * 7)  # 130 images: 65, 33 and 32 (largest remainders)
    x, y = sample_evenly(skewed, 130, split, np.random.default_rng(1))
    assert sorted(np.bincount(y)) == [32, 33, 65]
    uses = np.bincount(_numbers(x)[y == 0], minlength=30)
    assert sorted(uses) == [2] * 25 + [3] * 5  # 65 of 30 images: all twice before 5 a third time
