"""Tests for lth_keras.models: architectures, initialisation, naming, replace_head."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lth_keras.layers import MaskedConv2D, MaskedDense, masked_layers  # noqa: E402
from lth_keras.models import (  # noqa: E402
    BN_EPSILON, HEAD_NAME, BUILDERS, build_model, head_layer, replace_head)

SHAPE = (32, 32, 3)
CLASSES = 10

# Parameters (every variable but the masks, BN moving statistics included) at
# 32x32x3 with 10 classes.
EXPECTED_PARAMS = {
    "resnet50": 23_581_642,
    "resnet20": 274_042,  # 272_474 trainable
    # conv1 432 + bn 64; stage 1: 2 x (2,304 + 64); stage 2: projection 512 + 128,
    # 4,608 + 128, 9,216 + 128; stage 3: 2,048 + 256, 18,432 + 256, 36,864 + 256; head 650
    "resnet8": 78_714,  # 78_042 trainable
    "lenet_300_100": 953_010,
    "conv4": 2_425_930,
}


def n_params(model):
    """Number of parameters, masks excluded (they are not parameters)."""
    return sum(int(np.prod(v.shape)) for v in model.weights
               if not v.path.endswith("/mask"))


def kernels(model):
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def bns(model):
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def by_path(model):
    return {v.path: np.asarray(v) for v in model.weights}


@pytest.fixture(scope="module")
def models():
    return {name: build_model(name, input_shape=SHAPE, num_classes=CLASSES, seed=0)
            for name in BUILDERS}


# --------------------------------------------------------------------------- #
# Architectures
# --------------------------------------------------------------------------- #

def test_resnet50_matches_keras_applications(models):
    model = models["resnet50"]
    ref = keras.applications.ResNet50(weights=None, include_top=False,
                                      input_shape=SHAPE)
    ref_convs = [layer for layer in ref.layers if isinstance(layer, keras.layers.Conv2D)]
    our_convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [tuple(c.kernel.shape) for c in our_convs] == \
        [tuple(c.kernel.shape) for c in ref_convs]
    assert [c.strides for c in our_convs] == [c.strides for c in ref_convs]
    assert len(our_convs) == 53
    assert len(bns(model)) == len(bns(ref)) == 53

    # Ours = keras.applications' - its conv biases (one per output channel of
    # every conv; ours have none since BN follows) + head (2048*C kernel + C bias).
    ref_conv_biases = sum(c.filters for c in ref_convs)
    assert ref_conv_biases == 26_560
    expected = ref.count_params() - ref_conv_biases + 2048 * CLASSES + CLASSES
    assert n_params(model) == expected == EXPECTED_PARAMS["resnet50"]

    assert tuple(head_layer(model).kernel.shape) == (2048, CLASSES)
    assert model(np.zeros((2, *SHAPE), "float32")).shape == (2, CLASSES)


def test_resnet50_at_224():
    model = build_model("resnet50", input_shape=(224, 224, 3), num_classes=7, seed=0)
    assert model.get_layer("stage4_block3_out").output.shape == (None, 7, 7, 2048)
    assert model(np.zeros((1, 224, 224, 3), "float32")).shape == (1, 7)


def test_resnet20_layout(models):
    model = models["resnet20"]
    assert model.get_layer("conv1").filters == 16
    for stage, (channels, spatial) in enumerate(((16, 32), (32, 16), (64, 8)), start=1):
        for block in (1, 2, 3):
            out = model.get_layer(f"stage{stage}_block{block}_out").output
            assert out.shape == (None, spatial, spatial, channels)
    # Projection shortcuts exactly where the shape changes.
    projections = sorted(c.name for c in kernels(model) if c.name.endswith("_proj"))
    assert projections == ["stage2_block1_proj", "stage3_block1_proj"]
    assert len([c for c in kernels(model) if isinstance(c, MaskedConv2D)]) == 21
    assert n_params(model) == EXPECTED_PARAMS["resnet20"]
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 272_474
    assert model(np.zeros((2, *SHAPE), "float32")).shape == (2, CLASSES)


def test_resnet8_is_resnet20_with_one_block_a_stage(models):
    model, deep = models["resnet8"], models["resnet20"]
    for stage, (channels, spatial) in enumerate(((16, 32), (32, 16), (64, 8)), start=1):
        out = model.get_layer(f"stage{stage}_block1_out").output
        assert out.shape == (None, spatial, spatial, channels)
    assert not [layer for layer in model.layers if "block2" in layer.name]
    projections = sorted(c.name for c in kernels(model) if c.name.endswith("_proj"))
    assert projections == ["stage2_block1_proj", "stage3_block1_proj"]
    assert len(kernels(model)) == 10 and len(bns(model)) == 9  # 6n + 2 = 8 layers, 2 shortcuts
    assert n_params(model) == EXPECTED_PARAMS["resnet8"]
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 78_042
    # The layers the two share are drawn alike: weights are a function of seed and name.
    shared = by_path(model).keys() & by_path(deep).keys()
    assert "stage3_block1_conv2/kernel" in shared
    for path in shared - {f"{HEAD_NAME}/kernel"}:
        np.testing.assert_array_equal(by_path(model)[path], by_path(deep)[path], err_msg=path)


def test_lenet_and_conv4_layout(models):
    lenet = models["lenet_300_100"]
    assert [layer.units for layer in kernels(lenet)] == [300, 100, CLASSES]
    conv4 = models["conv4"]
    assert [c.filters for c in kernels(conv4)[:4]] == [64, 64, 128, 128]
    assert [c.units for c in kernels(conv4)[4:]] == [256, 256, CLASSES]
    assert not bns(lenet) and not bns(conv4)
    # LeNet flattens, so any image size works.
    other = build_model("lenet_300_100", input_shape=(28, 28, 3), num_classes=4, seed=0)
    assert other(np.zeros((1, 28, 28, 3), "float32")).shape == (1, 4)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_param_count_names_and_output(models, name):
    model = models[name]
    assert model.name == name
    assert n_params(model) == EXPECTED_PARAMS[name]
    paths = [v.path for v in model.weights]
    assert len(paths) == len(set(paths))
    layer_names = [layer.name for layer in model.layers]
    assert len(layer_names) == len(set(layer_names))
    # Logits, not probabilities.
    x = np.random.default_rng(0).normal(size=(3, *SHAPE)).astype("float32")
    y = np.asarray(model(x))
    assert y.shape == (3, CLASSES)
    assert not np.allclose(y.sum(axis=1), 1.0)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="vgg16") as info:
        build_model("vgg16", input_shape=SHAPE, num_classes=CLASSES, seed=0)
    assert all(name in str(info.value) for name in BUILDERS)


# --------------------------------------------------------------------------- #
# Initialisation
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_weights_are_a_function_of_the_seed_alone(name):
    def build(seed):
        return by_path(build_model(name, input_shape=SHAPE, num_classes=CLASSES, seed=seed))

    first = build(1)
    # Build unrelated models in between: their draws must not shift ours.
    build_model("conv4", input_shape=(16, 16, 3), num_classes=3, seed=123)
    keras.initializers.GlorotUniform()(shape=(100, 100))
    second = build(1)
    other = build(2)

    assert first.keys() == second.keys() == other.keys()
    for path in first:
        np.testing.assert_array_equal(first[path], second[path], err_msg=path)
    for path in first:
        if path.endswith("/kernel"):
            assert not np.array_equal(first[path], other[path]), path


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_glorot_uniform_kernels(models, name):
    for layer in kernels(models[name]):
        w = np.asarray(layer.kernel)
        receptive = int(np.prod(w.shape[:-2])) if w.ndim == 4 else 1
        fan_in, fan_out = receptive * w.shape[-2], receptive * w.shape[-1]
        var = 2.0 / (fan_in + fan_out)
        limit = np.sqrt(3 * var)
        assert np.abs(w).max() <= limit * (1 + 1e-6), layer.name  # float32 rounding
        # For U(-a, a), the sample variance has relative std sqrt(0.8 / n):
        # allow 6 of those.
        tol = 6 * np.sqrt(0.8 / w.size)
        assert abs(w.var() / var - 1) < tol, (layer.name, w.var(), var)
    # Every layer has its own draw (no two layers share a seed).
    firsts = [float(np.asarray(layer.kernel).flat[0]) for layer in kernels(models[name])]
    assert len(set(firsts)) == len(firsts)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_biases_bn_and_masks_at_init(models, name):
    model = models[name]
    for layer in kernels(model):
        if layer.use_bias:
            assert not np.asarray(layer.bias).any(), layer.name
    for layer in masked_layers(model):
        assert np.all(np.asarray(layer.mask) == 1.0), layer.name
    for bn in bns(model):
        assert np.all(np.asarray(bn.gamma) == 1.0)
        assert not np.asarray(bn.beta).any()
        assert not np.asarray(bn.moving_mean).any()
        assert np.all(np.asarray(bn.moving_variance) == 1.0)
        assert bn.momentum == 0.9
        assert bn.epsilon == BN_EPSILON == 1e-5
        assert bn.synchronized


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_convs_before_bn_have_no_bias(models, name):
    convs = [c for c in kernels(models[name]) if isinstance(c, keras.layers.Conv2D)]
    assert convs and not any(c.use_bias for c in convs)


def test_bn_momentum_is_passed_through():
    model = build_model("resnet20", input_shape=SHAPE, num_classes=CLASSES, seed=0,
                        bn_momentum=0.95)
    assert {bn.momentum for bn in bns(model)} == {0.95}
    # One training-mode step runs (synchronized BN outside a strategy) and
    # moves the moving mean by (1 - momentum) of the batch mean.
    x = np.random.default_rng(0).normal(size=(4, *SHAPE)).astype("float32") + 1.0
    model(x, training=True)
    assert np.asarray(model.get_layer("bn1").moving_mean).any()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_only_the_head_is_unmasked(models, name):
    model = models[name]
    head = head_layer(model)
    assert head.name == HEAD_NAME
    assert type(head) is keras.layers.Dense
    assert head is model.layers[-1]
    body = [layer for layer in kernels(model) if layer is not head]
    assert body and all(isinstance(layer, (MaskedConv2D, MaskedDense)) for layer in body)
    assert masked_layers(model) == body


# --------------------------------------------------------------------------- #
# replace_head
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", ["resnet20", "lenet_300_100"])
def test_replace_head_shares_the_body(models, name):
    source = models[name]
    old_head = head_layer(source)
    old_kernel = np.asarray(old_head.kernel).copy()
    features = old_head.kernel.shape[0]

    new = replace_head(source, 4, kernel_seed=7)
    new_head = head_layer(new)
    assert new_head is not old_head and type(new_head) is keras.layers.Dense
    assert tuple(new_head.kernel.shape) == (features, 4)
    assert not np.asarray(new_head.bias).any()

    # Same variable objects (identity, not copies), in the same order.
    def body_vars(model):
        head_ids = {id(v) for v in head_layer(model).weights}
        return [v for v in model.weights if id(v) not in head_ids]
    assert [id(v) for v in body_vars(new)] == [id(v) for v in body_vars(source)]
    assert len(body_vars(new)) == len(source.weights) - 2
    paths = [v.path for v in new.weights]
    assert len(paths) == len(set(paths))

    x = np.zeros((2, *SHAPE), "float32")
    assert new(x).shape == (2, 4)
    assert source(x).shape == (2, CLASSES)
    np.testing.assert_array_equal(np.asarray(old_head.kernel), old_kernel)

    # The new head's draw is seeded.
    again = replace_head(source, 4, kernel_seed=7)
    np.testing.assert_array_equal(np.asarray(head_layer(again).kernel),
                                  np.asarray(new_head.kernel))
    other = replace_head(source, 4, kernel_seed=8)
    assert not np.array_equal(np.asarray(head_layer(other).kernel),
                              np.asarray(new_head.kernel))


def test_a_transfer_head_is_independent_of_theta_0s_head():
    """The grid gives a transfer its ticket's seed; with the same class count the fresh
    head must still be a new draw, not θ_0's head again (nor correlated with it)."""
    from lth_keras.lottery import architecture, fine_tuning
    from lth_keras.lottery.directory import ModelRecord

    ticket_heads, transfer_heads = [], []
    for seed in range(4):
        config = ModelRecord(model="lenet_300_100", image_size=16, channels=3,
                             source_classes=10, seed=seed, bn_momentum=0.9)
        source, target = architecture.build_target_model(
            config, 10, fine_tuning.head_seed(seed, "fashion_mnist"))
        ticket_heads.append(np.asarray(head_layer(source).kernel).ravel())
        transfer_heads.append(np.asarray(head_layer(target).kernel).ravel())
        assert not np.array_equal(ticket_heads[-1], transfer_heads[-1])
    r = np.corrcoef(np.concatenate(ticket_heads), np.concatenate(transfer_heads))[0, 1]
    assert abs(r) < 0.08, r  # 4000 pairs: |r| of independent draws is ~0.016
    # Its own stream: fixed by (seed, target), and another target draws another head.
    assert fine_tuning.head_seed(0, "a") == fine_tuning.head_seed(0, "a")
    assert len({fine_tuning.head_seed(s, t) for s in range(3) for t in "ab"}) == 6
