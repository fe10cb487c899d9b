"""Magnitude pruning: exact survivor counts, deterministic ties, masks only shrink."""

import numpy as np
import pytest

from lth_keras import pruning


def _layers(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"conv1/kernel": (3, 3, 3, 8), "conv2/kernel": (3, 3, 8, 16), "fc/kernel": (64, 10)}
    kernels = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    masks = {k: np.ones(s, np.float32) for k, s in shapes.items()}
    return kernels, masks


@pytest.mark.parametrize("mode", ["global", "layerwise"])
def test_exact_survivors_over_rounds(mode):
    kernels, masks = _layers()
    rng = np.random.default_rng(1)
    for _ in range(8):
        alive_before = {k: int(m.sum()) for k, m in masks.items()}
        new = pruning.prune({k: v * masks[k] for k, v in kernels.items()}, masks, 0.2, mode)
        if mode == "global":
            n = sum(alive_before.values())
            assert sum(int(m.sum()) for m in new.values()) == round(n * 0.8)
        else:
            for k, n in alive_before.items():
                assert int(new[k].sum()) == round(n * 0.8), k
        for k in masks:  # masks only ever shrink
            assert np.all(new[k] <= masks[k])
            assert set(np.unique(new[k])) <= {0.0, 1.0}
        masks = new
        # retraining moves the surviving weights
        kernels = {k: (v + 0.3 * rng.normal(size=v.shape)).astype(np.float32)
                   for k, v in kernels.items()}


def test_global_keeps_the_largest_magnitudes():
    kernels, masks = _layers()
    new = pruning.prune(kernels, masks, 0.2)
    kept = np.concatenate([np.abs(kernels[k])[new[k] == 1] for k in kernels])
    dropped = np.concatenate([np.abs(kernels[k])[new[k] == 0] for k in kernels])
    assert kept.min() >= dropped.max()


def test_layerwise_prunes_each_layer_at_the_rate():
    kernels, masks = _layers()
    fc = kernels["fc/kernel"]
    kernels["fc/kernel"] = np.sign(fc) * (100 + np.abs(fc))  # global pruning spares it all
    glob = pruning.prune(kernels, masks, 0.2, "global")
    assert glob["fc/kernel"].all()
    local = pruning.prune(kernels, masks, 0.2, "layerwise")
    assert int(local["fc/kernel"].sum()) == round(640 * 0.8)


def test_dead_weights_are_not_candidates():
    kernels = {"a/kernel": np.array([5.0, 4.0, 3.0, 2.0, 1.0], np.float32)}
    masks = {"a/kernel": np.array([0, 1, 1, 1, 1], np.float32)}
    new = pruning.prune(kernels, masks, 0.5)
    # 4 alive -> 2 survive: the largest alive ones (4 and 3), never the dead 5.
    np.testing.assert_array_equal(new["a/kernel"], [0, 1, 1, 0, 0])


def test_ties_are_broken_by_position_and_deterministically():
    kernels = {"a/kernel": np.ones(10, np.float32), "b/kernel": -np.ones(10, np.float32)}
    masks = {k: np.ones(10, np.float32) for k in kernels}
    first = pruning.prune(kernels, masks, 0.3)
    # 20 equal magnitudes, 14 survive: all of layer a, then the first 4 of layer b.
    np.testing.assert_array_equal(first["a/kernel"], np.ones(10))
    np.testing.assert_array_equal(first["b/kernel"], [1] * 4 + [0] * 6)
    again = pruning.prune(kernels, masks, 0.3)
    for k in kernels:
        np.testing.assert_array_equal(first[k], again[k])


def test_density_report():
    masks = {"a/kernel": np.array([1, 0, 0, 1], np.float32), "b/kernel": np.ones(6, np.float32)}
    report = pruning.density_report(masks, total_params=20)
    assert report["prunable_alive"] == 8 and report["prunable_size"] == 10
    assert report["density"] == pytest.approx(0.8)
    assert report["fraction_pruned"] == pytest.approx(0.2)
    assert report["fraction_pruned_all_params"] == pytest.approx(2 / 20)
    assert report["layers"]["a/kernel"]["density"] == pytest.approx(0.5)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_bad_rate_is_refused(rate):
    kernels, masks = _layers()
    with pytest.raises(ValueError, match="prune rate"):
        pruning.prune(kernels, masks, rate)


@pytest.mark.parametrize("seed", range(6))
def test_selection_keeps_what_a_stable_sort_keeps(seed):
    """The linear-time selection against the definition: sort the alive weights by
    descending magnitude, stably (lower index first among equals), keep the first
    round(0.8 N). Magnitudes drawn from a few values, so that ties cross the threshold."""
    rng = np.random.default_rng(seed)
    shapes = {"a/kernel": (7, 5), "b/kernel": (3, 3, 4, 6), "c/kernel": (40,)}
    kernels = {k: rng.integers(-4, 5, size=s).astype(np.float32) * 0.5 for k, s in shapes.items()}
    masks = {k: (rng.random(s) < 0.7).astype(np.float32) for k, s in shapes.items()}
    new = pruning.prune(kernels, masks, 0.2)
    magnitudes = np.concatenate([np.abs(kernels[k]).ravel() for k in shapes])
    alive = np.flatnonzero(np.concatenate([masks[k].ravel() for k in shapes]))
    order = alive[np.argsort(-magnitudes[alive], kind="stable")]
    expected = np.zeros(magnitudes.size, bool)
    expected[order[:pruning.survivors(len(alive), 0.2)]] = True
    got = np.concatenate([new[k].ravel() for k in shapes]) != 0
    np.testing.assert_array_equal(got, expected)


def _ticket_like_masks(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv/kernel": (rng.random((3, 3, 4, 8)) < 0.3).astype(np.float32),
            "dense/kernel": (rng.random((50, 10)) < 0.6).astype(np.float32),
            "head/kernel": np.ones((10, 4), np.float32)}


def test_random_masks_keep_each_layers_alive_count_and_nothing_else_of_the_ticket():
    ticket = _ticket_like_masks()
    drawn = pruning.random_masks(ticket, seed=7)
    assert drawn.keys() == ticket.keys()
    for path, mask in ticket.items():
        assert drawn[path].shape == mask.shape and drawn[path].dtype == mask.dtype
        assert set(np.unique(drawn[path])) <= {0.0, 1.0}
        assert int(drawn[path].sum()) == int(mask.sum()), path
    for path in ("conv/kernel", "dense/kernel"):  # a partly pruned layer gets another mask
        assert not np.array_equal(drawn[path], ticket[path])
        # ... which overlaps the ticket's about as much as chance says (density d: d²).
        density = ticket[path].mean()
        overlap = (drawn[path] * ticket[path]).sum() / drawn[path].size
        assert abs(overlap - density ** 2) < 0.1, path
    np.testing.assert_array_equal(drawn["head/kernel"], ticket["head/kernel"])  # all alive


def test_random_masks_are_fixed_by_the_seed_and_differ_between_seeds():
    ticket = _ticket_like_masks()
    first, again = pruning.random_masks(ticket, 3), pruning.random_masks(ticket, 3)
    other = pruning.random_masks(ticket, 4)
    for path in ticket:
        np.testing.assert_array_equal(first[path], again[path])
    assert not np.array_equal(first["dense/kernel"], other["dense/kernel"])
    # A layer's draw is its own: it does not depend on the other layers or their order.
    alone = pruning.random_masks({"dense/kernel": ticket["dense/kernel"]}, 3)
    np.testing.assert_array_equal(alone["dense/kernel"], first["dense/kernel"])


def test_the_mask_held_check_fails_on_a_moved_weight_or_mask_and_on_nothing():
    from lth_keras import weights

    mask = {"fc/kernel": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)}
    held = {"fc/kernel": np.array([[0.5, 0.0], [0.0, -2.0]], np.float32), "fc/mask": mask["fc/kernel"]}
    weights.check_arrays_hold_masks(held, mask)
    with pytest.raises(AssertionError, match="pruned weights of fc/kernel moved"):
        weights.check_arrays_hold_masks({**held, "fc/kernel": np.ones((2, 2), np.float32)}, mask)
    with pytest.raises(AssertionError, match="the mask of fc/kernel changed"):
        weights.check_arrays_hold_masks({**held, "fc/mask": np.ones((2, 2), np.float32)}, mask)
    with pytest.raises(AssertionError, match="no masks to check"):
        weights.check_arrays_hold_masks(held, {})
