"""fold_masks and the export binary: plain layers, TFLite sparsity, prediction agreement."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from conftest import fabricated_record, run_binary
from lth_keras import artifacts, lottery, models, pruning, tflite_export, weights
from lth_keras.errors import UserError
from lth_keras.lottery import architecture
from lth_keras.lottery.directory import ModelRecord
from lth_keras.layers import MASKED_LAYER_TYPES


def _random_ticket(model, density=0.3, seed=0):
    """Random masks, and BN statistics / biases moved off their initial values."""
    rng = np.random.default_rng(seed)
    weights.set_masks(model, {k: (rng.random(v.shape) < density).astype(np.float32)
                              for k, v in weights.get_masks(model).items()})
    for v in model.variables:
        name = v.path.rsplit("/", 1)[-1]
        if name in ("bias", "beta", "gamma", "moving_mean"):
            v.assign(0.1 * rng.standard_normal(v.shape).astype(np.float32))
        elif name == "moving_variance":
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    return model


# --------------------------------------------------------------------------- #
# fold_masks
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_fold_masks_gives_plain_layers_and_the_same_predictions(name):
    model = _random_ticket(models.build_model(name, input_shape=(32, 32, 3), num_classes=5,
                                              seed=1))
    folded = models.fold_masks(model)

    assert not any(isinstance(layer, MASKED_LAYER_TYPES)
                   for layer in folded._flatten_layers(include_self=False))
    assert [layer.name for layer in folded.layers] == [layer.name for layer in model.layers]
    assert not any(v.path.endswith("/mask") for v in folded.variables)
    masks, kernels = weights.get_masks(model), weights.get_kernels(model)
    folded_values = {v.path: v.numpy() for v in folded.variables}
    for path, mask in masks.items():
        np.testing.assert_array_equal(folded_values[path], kernels[path] * mask)
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(folded(x, training=False), model(x, training=False),
                               rtol=0, atol=1e-5)


def test_fold_masks_of_a_replaced_head_model_copies_the_new_head():
    config = ModelRecord(model="conv4", image_size=16, channels=3, source_classes=10, seed=3,
                         bn_momentum=0.9)
    source, target = architecture.build_target_model(config, 4, head_seed=7)
    _random_ticket(source)
    folded = models.fold_masks(target)
    np.testing.assert_array_equal(models.head_layer(folded).kernel.numpy(),
                                  models.head_layer(target).kernel.numpy())
    assert models.head_layer(folded).units == 4
    x = np.random.default_rng(1).standard_normal((3, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(folded(x), target(x), rtol=0, atol=1e-5)


def test_fold_masks_with_dense_masks_is_the_plain_architecture():
    model = models.build_model("resnet20", input_shape=(16, 16, 3), num_classes=10, seed=0)
    folded = models.fold_masks(model)
    assert weights.count_parameters(model) == sum(int(np.prod(v.shape))
                                                  for v in folded.trainable_variables)
    assert {v.path for v in folded.trainable_variables} == \
        {v.path for v in model.trainable_variables}


# --------------------------------------------------------------------------- #
# Export of run directories (fabricated in the documented formats)
# --------------------------------------------------------------------------- #

MODEL_CONFIG = ModelRecord(model="lenet_300_100", image_size=16, channels=3, source_classes=10,
                           seed=3, bn_momentum=0.9)


def _fabricate_transfer_run(path, level, masks_for, model_config=MODEL_CONFIG, num_classes=4):
    """A transfer run dir with one finished level whose target model has masks_for(model)."""
    source, target = architecture.build_target_model(model_config, num_classes, head_seed=0)
    weights.set_masks(source, masks_for(source))
    rng = np.random.default_rng(level)
    for v in target.variables:  # a "fine-tuned" head
        if v.path.startswith(models.HEAD_NAME + "/"):
            v.assign(0.3 * rng.standard_normal(v.shape).astype(np.float32))
    run = lottery.TransferRun(str(path))
    artifacts.write_json(run.config_path, fabricated_record(
        "transfer", ["--target=fake_target"], dataset="fake_target", num_classes=num_classes,
        condition="rewind", model=model_config.as_dict(), levels=[level]))
    artifacts.write_arrays(run.level_file(level, "weights.npz"), weights.snapshot(target))
    artifacts.write_json(run.level_file(level, "metrics.json"), {"level": level})
    return target


def _layerwise_masks(rates):
    """masks_for(model): magnitude-prune each kernel by its own rate (default 0)."""
    def masks_for(model):
        kernels, masks = weights.get_kernels(model), weights.get_masks(model)
        return {path: pruning.prune({path: kernels[path]}, {path: masks[path]},
                                    rates.get(path.split("/")[0], 0.0))[path]
                for path in kernels}
    return masks_for


def test_export_of_a_90_percent_ticket_agrees_and_the_sparse_tflite_is_smaller(tmp_path):
    run_dir = tmp_path / "run"
    target = _fabricate_transfer_run(run_dir, 2, _layerwise_masks({"fc1": 0.9, "fc2": 0.9}))
    model, description = architecture.level_model(str(run_dir), 2)
    assert description["kind"] == "transfer" and description["num_classes"] == 4
    x = np.random.default_rng(0).standard_normal((5, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), target(x))  # the stored model came back

    out = tmp_path / "out"
    report = tflite_export.export(model, str(out), "ticket", description=description)

    files = report["files"]
    assert sorted(os.listdir(out)) == sorted([*files, "export.json"])
    for file, size in files.items():
        assert os.path.getsize(out / file) == size
    assert files["ticket_sparse.tflite"] < 0.35 * files["ticket_dense.tflite"]
    assert report["sparsity"]["prunable_fraction_pruned"] == pytest.approx(0.9, abs=1e-3)
    assert report["tflite_sparse_encoding"]["sparse_tensors"] == 2
    for result in report["agreement"].values():
        assert result["max_abs_diff"] <= result["tolerance"]
        assert result["argmax_agreement"] == 1.0
    assert report["agreement"]["keras_folded_vs_masked"]["max_abs_diff"] == 0.0
    assert json.loads((out / "export.json").read_text())["files"] == files

    reloaded = keras.models.load_model(out / "ticket.keras")  # no lth_keras custom objects
    assert not any(isinstance(layer, MASKED_LAYER_TYPES) for layer in reloaded.layers)
    np.testing.assert_allclose(reloaded(x), target(x), rtol=0, atol=1e-5)
    for variant in ("sparse", "dense"):
        flatbuffer = (out / f"ticket_{variant}.tflite").read_bytes()
        np.testing.assert_allclose(tflite_export.tflite_predict(flatbuffer, x), target(x),
                                   rtol=0, atol=1e-4)


def test_weights_below_30_percent_zeros_stay_dense_in_tflite(tmp_path):
    """The converter's threshold: conv kernels compress too, a 20%-sparse one does not."""
    config = dataclasses.replace(MODEL_CONFIG, model="conv4")
    rates = {"conv1": 0.9, "conv2": 0.9, "conv3": 0.9, "conv4": 0.9, "fc1": 0.9, "fc2": 0.2}
    _fabricate_transfer_run(tmp_path / "run", 1, _layerwise_masks(rates), model_config=config)
    model, description = architecture.level_model(str(tmp_path / "run"), 1)
    report = tflite_export.export(model, str(tmp_path / "out"), "conv4", description=description)
    kernels = report["sparsity"]["kernels"]
    assert not kernels["fc2/kernel"]["tflite_compressed"]
    assert kernels["conv1/kernel"]["tflite_compressed"]
    encoding = report["tflite_sparse_encoding"]
    assert encoding["kernels_expected_compressed"] == 5 == encoding["sparse_tensors"]
    # unstructured masks are not the 1x4 blocks TFLite computes on: densified at load time
    assert encoding["densify_ops"] == 5
    assert report["sparse_over_dense_tflite"] < 0.5


def test_export_of_a_find_tickets_run(tmp_path):
    model = models.build_model("conv4", input_shape=(16, 16, 3), num_classes=10, seed=5)
    _random_ticket(model, density=0.5)
    run_dir = tmp_path / "tickets"
    artifacts.write_json(run_dir / "config.json", fabricated_record(
        "find_tickets", ["--model=conv4", "--image_size=16", "--seed=5"],
        dataset="fake_source", num_classes=10))
    artifacts.write_arrays(run_dir / "levels/level_00/theta_i.npz", weights.snapshot(model))
    artifacts.write_json(run_dir / "levels/level_00/metrics.json", {"level": 0})
    loaded, description = architecture.level_model(str(run_dir), 0)
    assert description["kind"] == "find_tickets"
    for path, value in weights.snapshot(model).items():
        np.testing.assert_array_equal(weights.snapshot(loaded)[path], value)


def test_disagreeing_export_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    model = models.build_model("lenet_300_100", input_shape=(16, 16, 3), num_classes=4, seed=0)
    real_predict = tflite_export.tflite_predict
    monkeypatch.setattr(tflite_export, "tflite_predict", lambda fb, x: real_predict(fb, x) + 0.5)
    with pytest.raises(tflite_export.ExportError, match="sparse TFLite|dense TFLite"):
        tflite_export.export(model, str(tmp_path / "out"), "m")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["no_config", "unknown_kind", "unfinished_level",
                                  "missing_model_keys"])
def test_bad_run_directories_are_refused(tmp_path, case):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    transfer = fabricated_record("transfer", ["--target=fake_target"], dataset="fake_target",
                                 num_classes=2, condition="rewind", levels=[3],
                                 model=MODEL_CONFIG.as_dict())
    if case == "unknown_kind":
        artifacts.write_json(run_dir / "config.json", dict(transfer, kind="benchmark"))
    elif case == "missing_model_keys":
        artifacts.write_json(run_dir / "config.json", dict(transfer, model={"model": "conv4"}))
    elif case == "unfinished_level":
        artifacts.write_json(run_dir / "config.json", transfer)
        artifacts.write_arrays(run_dir / "levels/level_03/checkpoint.npz", {"a": np.zeros(1)})
    message = {"no_config": "not a run directory", "unknown_kind": "'benchmark' run",
               "unfinished_level": "level 3 .* not finished; finished levels: none",
               "missing_model_keys": "missing key model.image_size"}[case]
    with pytest.raises((UserError, artifacts.ArtifactError), match=message):
        architecture.level_model(str(run_dir), 3)


@pytest.mark.slow
def test_export_binary_end_to_end_and_bad_input(tmp_path):
    _fabricate_transfer_run(tmp_path / "run", 1, _layerwise_masks({"fc1": 0.9, "fc2": 0.9}))
    ok = run_binary("lth_keras.export", f"--run={tmp_path / 'run'}", "--level=1")
    assert ok.returncode == 0, ok.stderr[-2000:]
    out = tmp_path / "run" / "export" / "level_01"
    assert sorted(os.listdir(out)) == ["export.json", "lenet_300_100_level_01.keras",
                                       "lenet_300_100_level_01_dense.tflite",
                                       "lenet_300_100_level_01_sparse.tflite"]
    assert "sparse_tensors" not in ok.stdout and "vs dense tflite" in ok.stdout

    bad = run_binary("lth_keras.export", f"--run={tmp_path / 'run'}", "--level=4",
                     f"--output_dir={tmp_path / 'bad'}")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        f"export: error: level 4 of {tmp_path / 'run'} is not finished; finished levels: 1")
    assert not (tmp_path / "bad").exists()
