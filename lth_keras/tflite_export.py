"""Export of one level of a run as a plain Keras model and sparse / dense TFLite files
(the export binary, lth_keras.export(), lth_keras/export.py).

The run is a transfer run (the fine-tuned target model of the level) or a
find_tickets run (θ_i of the level, with the source head). The export folds
the masks into plain Conv2D/Dense kernels (`models.fold_masks`), so the files
load without lth_keras. Written to --output_dir (default <run>/export/level_LL/):

  <name>.keras              the folded model
  <name>_dense.tflite       TFLite, weights stored dense (for comparison)
  <name>_sparse.tflite      TFLite with tf.lite.Optimize.EXPERIMENTAL_SPARSITY
  export.json               sizes, sparsity, prediction agreement (written last)

Every export is checked on a seeded batch of random inputs: the folded Keras
model (and the saved .keras file reloaded) against the masked model, and both
TFLite files against the folded model. A disagreement beyond tolerance is an
error and nothing is written.

What EXPERIMENTAL_SPARSITY does (TF's DenseToSparse pass): a Conv2D / Dense
weight is stored in a compressed (CSR-like) format only when at least 30% of it
is zero (kMinSparsityLevel); below that it stays dense. A lottery ticket's mask
is unstructured (not the 1x4 blocks the sparse FullyConnected kernel runs), so
the converter adds a DENSIFY op that expands each compressed weight once when the
interpreter is prepared: the file shrinks, the inference arithmetic and memory
are those of the dense model. export.json lists which kernels were compressed.
"""

import contextlib
import io
import logging as std_logging
import os
import tempfile
import warnings

from lth_keras.errors import ExportError, UserError
from lth_keras.lottery import architecture
from lth_keras.lottery.directory import RunDirectory, level_name
# The converter keeps a weight dense below this fraction of zeros (dense_to_sparse.cc).
TFLITE_MIN_SPARSITY = 0.3
# The folded model does the masked model's arithmetic, so it must match almost exactly.
KERAS_TOLERANCE = 1e-5


def export_level(spec, output_dir=None):
    """Exports level `spec.level` of run `spec.run` (settings.Export) to `output_dir`
    (default <run>/export/level_LL/); returns the report, as export.json holds it."""
    import keras

    # Run directories are the same for both engines; only the TFLite converter is not.
    if keras.backend.backend() != "tensorflow":
        raise UserError(f"export converts to TFLite with TensorFlow, and KERAS_BACKEND is "
                        f"{keras.backend.backend()}: run it with KERAS_BACKEND=tensorflow (runs "
                        "made with either engine export alike)")
    model, description = architecture.level_model(spec.run, spec.level)
    output_dir = output_dir or RunDirectory(spec.run).file("export", level_name(spec.level))
    return export(model, output_dir, f"{description['model']['model']}_{level_name(spec.level)}",
                  check_batch=spec.check_batch, tolerance=spec.tolerance,
                  description={**description, "output_dir": os.path.abspath(output_dir)})


# --------------------------------------------------------------------------- #
# Conversion and checks
# --------------------------------------------------------------------------- #

def to_tflite(keras_model, sparse):
    """TFLite flatbuffer bytes of a plain-layer Keras model."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    # Keras' export prints the SavedModel signature (one line per captured variable) and
    # TF logs a dozen INFO lines per conversion; neither says anything about this model.
    # The loggers' own levels are restored exactly (absl's get/set_verbosity would pin
    # an unset level to WARNING and silence INFO for the rest of the process).
    quiet = [std_logging.getLogger(name) for name in ("tensorflow", "absl")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(std_logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def _interpreter(flatbuffer):
    """A TFLite interpreter: LiteRT's when installed, else tf.lite's (deprecated, still in TF)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            return tf.lite.Interpreter(model_content=flatbuffer)
    return Interpreter(model_content=flatbuffer)


def tflite_predict(flatbuffer, inputs):
    """Logits of a TFLite model on a float32 batch."""
    interpreter = _interpreter(flatbuffer)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, inputs)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def tflite_sparse_tensors(flatbuffer):
    """{"sparse_tensors", "densify_ops"} of a TFLite flatbuffer, or None if unreadable."""
    try:
        from tensorflow.lite.python import schema_py_generated as schema
    except ImportError:  # an internal module: its absence only loses this detail
        return None
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    densify = schema.BuiltinOperator.DENSIFY
    sparse = densify_ops = 0
    for subgraph in model.subgraphs:
        sparse += sum(t.sparsity is not None for t in subgraph.tensors)
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            densify_ops += max(code.builtinCode, code.deprecatedBuiltinCode) == densify
    return {"sparse_tensors": int(sparse), "densify_ops": int(densify_ops)}


def agreement(reference, other):
    """Max |logit difference|, the reference's logit scale and the argmax agreement."""
    import numpy as np

    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    same = reference.argmax(-1) == other.argmax(-1)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    return {"max_abs_diff": float(np.abs(reference - other).max()),
            "logit_scale": float(max(1.0, np.abs(reference).max())),
            "argmax_agreement": float(same.mean()),
            # argmax flips are only excusable where the top two logits (nearly) tie
            "_margins_of_flips": (top2[:, 1] - top2[:, 0])[~same].tolist()}


def check_agreement(name, result, tolerance):
    """Raises ExportError if `result` (from agreement) is beyond `tolerance`."""
    allowed = tolerance * result["logit_scale"]
    result["tolerance"] = allowed
    flips = result.pop("_margins_of_flips")
    if result["max_abs_diff"] > allowed:
        raise ExportError(f"{name}: logits differ by up to {result['max_abs_diff']:.3g} "
                          f"(allowed {allowed:.3g}); the export does not reproduce the model")
    if any(margin > 2 * allowed for margin in flips):
        raise ExportError(f"{name}: predicted classes differ on "
                          f"{100 * (1 - result['argmax_agreement']):.1f}% of the check batch")
    return result


def kernel_sparsity(folded):
    """Per Conv2D/Dense kernel: size, zeros, sparsity and whether TFLite compresses it."""
    import numpy as np

    report = {}
    for layer in folded._flatten_layers(include_self=False):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        value = np.asarray(kernel.numpy())
        zeros = int(np.count_nonzero(value == 0))
        sparsity = zeros / value.size
        report[kernel.path] = {"size": int(value.size), "zeros": zeros, "sparsity": sparsity,
                               "tflite_compressed": sparsity >= TFLITE_MIN_SPARSITY}
    return report


def export(model, output_dir, name, *, check_batch=16, tolerance=1e-3, seed=0,
           description=None):
    """Folds, converts, checks and writes the export of a masked model; returns the report.

    Every file is built and checked in memory first; nothing is written if a
    check fails.
    """
    import keras
    import numpy as np

    from lth_keras import artifacts, models, pruning, weights

    folded = models.fold_masks(model)
    input_shape = tuple(int(d) for d in model.input.shape[1:])
    inputs = np.random.default_rng(seed).standard_normal(
        (check_batch,) + input_shape).astype(np.float32)
    masked_logits = np.asarray(model(inputs, training=False))
    folded_logits = np.asarray(folded(inputs, training=False))

    with tempfile.TemporaryDirectory() as tmp:
        keras_path = os.path.join(tmp, f"{name}.keras")
        folded.save(keras_path)
        with open(keras_path, "rb") as f:
            keras_bytes = f.read()
        reloaded = keras.models.load_model(keras_path, compile=False)
    reloaded_logits = np.asarray(reloaded(inputs, training=False))
    dense_tflite = to_tflite(folded, sparse=False)
    sparse_tflite = to_tflite(folded, sparse=True)

    checks = {
        "keras_folded_vs_masked": check_agreement(
            "folded Keras model vs masked model", agreement(masked_logits, folded_logits),
            KERAS_TOLERANCE),
        "keras_file_vs_masked": check_agreement(
            f"{name}.keras reloaded vs masked model", agreement(masked_logits, reloaded_logits),
            KERAS_TOLERANCE),
        "tflite_dense_vs_keras": check_agreement(
            "dense TFLite vs Keras", agreement(folded_logits,
                                               tflite_predict(dense_tflite, inputs)), tolerance),
        "tflite_sparse_vs_keras": check_agreement(
            "sparse TFLite vs Keras", agreement(folded_logits,
                                                tflite_predict(sparse_tflite, inputs)), tolerance),
    }
    masks = weights.get_masks(model)
    density = pruning.density_report(masks, weights.count_parameters(model))
    kernels = kernel_sparsity(folded)
    files = {f"{name}.keras": keras_bytes, f"{name}_dense.tflite": dense_tflite,
             f"{name}_sparse.tflite": sparse_tflite}
    report = {
        **(description or {}),
        "name": name,
        "files": {file: len(data) for file, data in files.items()},
        "sparse_over_dense_tflite": len(sparse_tflite) / len(dense_tflite),
        "sparsity": {
            "prunable_fraction_pruned": density["fraction_pruned"],
            "prunable_alive": density["prunable_alive"],
            "prunable_size": density["prunable_size"],
            "fraction_pruned_all_params": density["fraction_pruned_all_params"],
            "kernels": kernels,
        },
        "tflite_sparse_encoding": {
            "min_sparsity": TFLITE_MIN_SPARSITY,
            "kernels_expected_compressed": sum(k["tflite_compressed"] for k in kernels.values()),
            **(tflite_sparse_tensors(sparse_tflite) or {}),
        },
        "check_batch": {"size": check_batch, "inputs": f"standard normal, seed {seed}"},
        "agreement": checks,
    }
    for file, data in files.items():
        artifacts.write_bytes(os.path.join(output_dir, file), data)
    artifacts.write_json(os.path.join(output_dir, "export.json"), report)
    return report


def format_report(report):
    """A short table of file sizes, sparsity and agreement."""
    files = report["files"]
    dense = files[f"{report['name']}_dense.tflite"]
    width = max(len(f) for f in files)
    lines = [f"{'file':<{width}}  {'bytes':>12}  vs dense tflite"]
    for file, size in files.items():
        lines.append(f"{file:<{width}}  {size:>12,d}  {size / dense:>6.3f}")
    sparsity = report["sparsity"]
    encoding = report["tflite_sparse_encoding"]
    lines.append(f"pruned: {100 * sparsity['prunable_fraction_pruned']:.2f}% of the prunable "
                 f"weights, {100 * sparsity['fraction_pruned_all_params']:.2f}% of all "
                 f"parameters; {encoding['kernels_expected_compressed']} of "
                 f"{len(sparsity['kernels'])} kernels are >= "
                 f"{100 * encoding['min_sparsity']:.0f}% zero (stored compressed)")
    for key, result in report["agreement"].items():
        lines.append(f"{key:<24} max |Δlogit| {result['max_abs_diff']:.2e} "
                     f"(allowed {result['tolerance']:.1e}), argmax agreement "
                     f"{100 * result['argmax_agreement']:.1f}%")
    return "\n".join(lines) + "\n"
