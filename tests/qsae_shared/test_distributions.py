import numpy as np
import pytest

from qsae_shared.data import CLASS_NAMES
from qsae_shared.distributions import Corruption, profiles_from_scenario
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
