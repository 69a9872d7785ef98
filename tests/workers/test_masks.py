import numpy as np
import pytest
import torch

from workers import calibration, importance, masks, nets, structure
from workers.errors import MaskError

from .conftest import inputs, make_net


@pytest.mark.parametrize("fixture", ["tiny_cnn", "tiny_mlp"])
@pytest.mark.parametrize("amount", [0.3, 0.6, 0.9])
def test_shrunk_network_computes_exactly_what_the_masked_dense_network_computes(fixture, amount, request):
    net, spec, calib = request.getfixturevalue(fixture)
    scores = importance.score("energy", net, spec, calib)
    mask = masks.build(spec, scores, amount, masks.Schedule(structured_share=0.8))
    masked = masks.apply_dense(net, mask, spec)
    pruned = masks.shrink(net, mask, spec)
    x = calib.stem_out
    with torch.no_grad():
        want = masked[spec["stem_end"]:](x)
        got = pruned.net[spec["stem_end"]:](x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Units really disappear: the shrunk matrices are smaller.
    assert nets.param_count(pruned.spec) < nets.param_count(spec)


def test_mask_shapes_follow_the_network_and_the_stem_stays_whole(tiny_cnn):
    net, spec, calib = tiny_cnn
    scores = importance.score("magnitude", net, spec, calib)
    # align=1: the plain structured step (the width rounding has its own tests below)
    mask = masks.build(spec, scores, 0.5, masks.Schedule(structured_share=1.0, align=1))
    assert sorted(mask.keep) == [3, 6, 9]  # producers after the stem; never the logits
    assert sorted(mask.weights) == [3, 6, 9, 11]  # every weighted layer after the stem
    for li, m in mask.weights.items():
        assert m.shape == net[li].weight.shape
    pruned = masks.shrink(net, mask, spec)
    widths = {i: pruned.spec["layers"][i]["out"] for i in (3, 6, 9)}
    assert widths == {3: 4, 6: 3, 9: 8}  # half of 8, 6 (floored) and 16 units removed
    assert pruned.spec["layers"][9]["in"] == 3 * 2 * 2  # conv channels x spatial after the flatten
    assert pruned.spec["layers"][0] == spec["layers"][0]  # the stem is untouched
    torch.testing.assert_close(pruned.net[0].weight, net[0].weight)


def test_more_amount_prunes_more(tiny_cnn):
    net, spec, calib = tiny_cnn
    scores = importance.score("wanda", net, spec, calib)
    kept = [masks.shrink(net, masks.build(spec, scores, a, masks.Schedule()), spec).kept_params()
            for a in (0.0, 0.3, 0.6, 0.9)]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1]


def test_bad_masks_are_rejected_with_a_clear_message(tiny_cnn):
    net, spec, calib = tiny_cnn
    scores = importance.score("magnitude", net, spec, calib)
    good = masks.build(spec, scores, 0.5, masks.Schedule())
    with pytest.raises(MaskError, match="layer 0 is not prunable"):
        masks.Mask(good.keep, {**good.weights, 0: np.ones((4, 1, 3, 3), bool)}).check(spec)
    with pytest.raises(MaskError, match=r"shape \(8,\)"):
        masks.Mask({**good.keep, 3: np.ones(5, bool)}, good.weights).check(spec)
    with pytest.raises(MaskError, match="removes every unit"):
        masks.Mask({**good.keep, 3: np.zeros(8, bool)}, good.weights).check(spec)
    with pytest.raises(MaskError, match="does not produce a prunable group"):
        masks.Mask({**good.keep, 11: np.ones(3, bool)}, good.weights).check(spec)


def test_groups_of_the_pinned_cnn():
    gs = structure.groups(nets.pinned_spec())
    assert [(g.producer, g.consumer, g.units, g.cols_per_unit) for g in gs] == [
        (3, 6, 64, 1), (6, 9, 64, 49), (9, 11, 128, 1)]
    assert nets.param_count(nets.pinned_spec()) == 458_570


def _kept_widths(spec, scores, amount, schedule):
    mask = masks.build(spec, scores, amount, schedule)
    return {p: int(k.sum()) for p, k in mask.keep.items()}


@pytest.mark.parametrize("align", [4, 8])
def test_kept_widths_are_multiples_of_the_alignment_and_shrink_with_the_amount(align):
    spec = nets.mlp_spec([40, 27, 3], input_shape=(1, 4, 4), stem_width=8)
    groups = {g.producer: g.units for g in structure.groups(spec)}
    net = make_net(spec, seed=2)
    calib = calibration.from_stem_outputs(net, spec, calibration.stem_outputs(net, spec, inputs(spec, 128)))
    scores = importance.score("energy", net, spec, calib)
    schedule = masks.Schedule(structured_share=1.0, align=align)
    seen = [_kept_widths(spec, scores, a, schedule) for a in np.linspace(0.0, 0.98, 15)]
    for widths in seen:
        for p, kept in widths.items():
            assert kept % align == 0 or kept == groups[p], (p, kept)
    for p in groups:  # the bisection relies on widths that never grow with the amount
        assert [w[p] for w in seen] == sorted((w[p] for w in seen), reverse=True)
    assert seen[-1] != seen[0]  # something is really removed
    # align=1 switches the rounding off: then the same sweep gives widths the rounding would change.
    plain = masks.Schedule(structured_share=1.0, align=1)
    assert any(w % align for a in np.linspace(0.0, 0.98, 15) for w in _kept_widths(spec, scores, a, plain).values())


def test_alignment_keeps_the_most_important_units(tiny_mlp):
    net, spec, calib = tiny_mlp
    scores = importance.score("energy", net, spec, calib)
    schedule = masks.Schedule(structured_share=1.0, align=4)
    mask = masks.build(spec, scores, 0.5, schedule)
    for p, keep in mask.keep.items():
        imp = scores.units[p]
        if keep.all():
            continue
        assert imp[keep].min() >= imp[~keep].max()  # whatever the rounding, the best units stay


def test_a_bad_alignment_is_rejected():
    with pytest.raises(MaskError, match="align"):
        masks.Schedule(align=0)
