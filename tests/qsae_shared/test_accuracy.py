from qsae_shared.accuracy import significant_drop, significant_paired_drop


def test_a_drop_counts_only_beyond_the_floor_and_the_noise_of_its_windows():
    assert not significant_drop(0.93, 256, 0.88, 256, 0.03)  # 5 pp on 256 predictions: 2 standard errors
    assert significant_drop(0.93, 20_000, 0.88, 20_000, 0.03)
    assert not significant_drop(0.93, 20_000, 0.91, 20_000, 0.03)  # below the floor however long the window


def test_a_paired_drop_counts_only_the_inputs_where_the_versions_differ():
    # 3 pp on 97 labels: 6 inputs lost, 3 gained. Three inputs prove nothing.
    assert not significant_paired_drop(6, 3, 97, 0.03)
    # a version that got 40 of them wrong where the old one was right, and 5 the other way round
    assert significant_paired_drop(40, 5, 97, 0.03)
    # nearly the same answers everywhere: a small but certain drop is still within the floor
    assert not significant_paired_drop(25, 0, 1000, 0.03)
    assert significant_paired_drop(60, 0, 1000, 0.03)
