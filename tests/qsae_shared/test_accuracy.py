from qsae_shared.accuracy import significant_drop


def test_a_drop_counts_only_beyond_the_floor_and_the_noise_of_its_windows():
    assert not significant_drop(0.93, 256, 0.88, 256, 0.03)  # 5 pp on 256 predictions: 2 standard errors
    assert significant_drop(0.93, 20_000, 0.88, 20_000, 0.03)
    assert not significant_drop(0.93, 20_000, 0.91, 20_000, 0.03)  # below the floor however long the window
