"""The JAX engine on an accelerator: its epoch loop against a bare jitted step, and a
ticket search and transfer end to end. Needs keras and JAX only (no TensorFlow, no
network).

  python tools/gpu_check.py --data_dir=../shared/data [--output=outputs/gpu_check]
  python tools/gpu_check.py --tiny      # the same checks at CPU size (minutes)

1. Throughput, at each --batch_sizes: masked ResNet-50 (80% of the prunable
   weights masked) at 224 px, bfloat16 mixed precision, on a synthetic uint8
   dataset of --train_images images held on the device (256 px, as the paper's
   images are stored).
     engine loop  the JAX engine's real epoch loop (EpochLoop.train_epoch: the
                  plan uploaded once per epoch, on-device gather, crop, normalise,
                  the jitted step, metrics read once per epoch), median epoch.
     bare step    a jax.jit stateless train step (forward, cross-entropy,
                  backward, SGD with Nesterov) on one random batch already on the
                  device, median of 3 x 30 steps: what the model alone costs.
   loop / bare is the share of the bare step's speed that the loop keeps
   (target >= 0.95 at batch 128).
2. find_tickets end to end on histology_nuclei (--data_dir): the same model and
   size, levels 0 and 1, one epoch each, bfloat16; then transfer of level 1 back
   onto it. Both run as a user runs them (python -m ...) with KERAS_BACKEND=jax, and
   their artifacts are checked: masks exactly 0/1, exactly round(0.8 N)
   survivors, pruned weights exactly 0, the transfer's mask the ticket's.

Prints one table and writes gpu_check.json and gpu_check.md to --output.
"""

import json
import os
import statistics
import subprocess
import sys
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "jax")
# JAX takes 75% of a GPU's memory when it starts; this process and the binaries it runs
# share one GPU, so each may take 40% (ResNet-50 at batch 128 in bfloat16 needs ~20 GB).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.4")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from tools import fixtures  # noqa: E402

flags.DEFINE_string("data_dir", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), os.pardir, "shared", "data"),
    "Directory holding histology_nuclei/{train,val,test}/<class>/*.png.")
flags.DEFINE_string("output", "outputs/gpu_check", "Directory for gpu_check.json / .md.")
flags.DEFINE_bool("tiny", False, "CPU-size check: ResNet-20 at 32 px, small data, few steps.")
flags.DEFINE_string("model", "resnet50", "Model of both parts.")
flags.DEFINE_integer("image_size", 224, "Crop size.")
flags.DEFINE_list("batch_sizes", ["128", "64"],
                  "Global batch sizes of the throughput part, in the order run (the first "
                  "before the end-to-end part, so that a run cut short keeps it).")
flags.DEFINE_integer("train_images", 4096, "Synthetic device-resident training images.")
flags.DEFINE_integer("epochs", 3, "Timed epochs of the engine loop (after one warm-up epoch).")
flags.DEFINE_integer("bare_steps", 30, "Steps of each of the 3 timed blocks of the bare step.")
flags.DEFINE_bool("mixed_precision", True, "bfloat16 compute.")
flags.DEFINE_bool("end_to_end", True, "Run find_tickets and transfer on histology_nuclei.")
flags.DEFINE_integer("binary_timeout", 300, "Seconds each binary of the end-to-end part may take.")

FLAGS = flags.FLAGS
LOOP_TARGET = 0.95


def _precision():
    return "bfloat16" if FLAGS.mixed_precision else "off"


def _apply_tiny():
    if FLAGS.tiny:
        for name, value in (("model", "resnet20"), ("image_size", 32), ("batch_sizes", ["32", "16"]),
                            ("train_images", 256), ("epochs", 2), ("bare_steps", 5)):
            if not FLAGS[name].present:
                FLAGS[name].value = value


def bare_step_seconds(model, optimizer, batch):
    """Median seconds of a bare jitted stateless train step on a device-resident batch."""
    import jax
    import keras

    def step(trainable, non_trainable, optimizer_values, x, y):
        def loss_fn(trainable):
            logits, new_non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                             training=True)
            losses = keras.losses.sparse_categorical_crossentropy(
                y, logits.astype("float32"), from_logits=True)
            return losses.mean(), new_non_trainable
        grads, new_non_trainable = jax.grad(loss_fn, has_aux=True)(trainable)
        new_trainable, new_optimizer = optimizer.stateless_apply(optimizer_values, grads,
                                                                 trainable)
        return new_trainable, new_non_trainable, new_optimizer

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, FLAGS.image_size, FLAGS.image_size, 3))
    y = jax.random.randint(key, (batch,), 0, 10)
    # Copies: the step donates its state, and the model's variables must stay valid.
    state = tuple([jax.numpy.array(v.value, copy=True) for v in variables]
                  for variables in (model.trainable_variables, model.non_trainable_variables,
                                    optimizer.variables))
    start = time.perf_counter()
    state = step(*state, x, y)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    blocks = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(FLAGS.bare_steps):
            state = step(*state, x, y)
        jax.block_until_ready(state)
        blocks.append((time.perf_counter() - start) / FLAGS.bare_steps)
    return statistics.median(blocks), compile_s


def throughput(runtime, dataset, model, batch):
    """One batch size's row: the engine's epoch loop against the bare step."""
    from lth_keras import settings, training
    from lth_keras.datasets import InputPlan

    plan = InputPlan(dataset, image_size=FLAGS.image_size, batch_size=batch, seed=0)
    trainer = training.Trainer(model, plan, settings.Training(), runtime,
                               verbose=False)
    start = time.perf_counter()
    trainer.loop.train_epoch(0)  # compiles; uploads the dataset once
    first_s = time.perf_counter() - start
    epochs = []
    for epoch in range(1, FLAGS.epochs + 1):
        start = time.perf_counter()
        trainer.loop.train_epoch(epoch)
        epochs.append(time.perf_counter() - start)
    step_s = statistics.median(epochs) / plan.steps_per_epoch
    bare_s, bare_compile_s = bare_step_seconds(model, trainer.optimizer, batch)
    row = {"batch": batch, "steps_per_epoch": plan.steps_per_epoch,
           "loop_step_s": step_s, "loop_images_per_s": batch / step_s,
           "loop_first_epoch_s": first_s, "bare_step_s": bare_s,
           "bare_images_per_s": batch / bare_s, "bare_compile_s": bare_compile_s,
           "loop_over_bare": bare_s / step_s}
    print(f"[gpu_check] batch {batch}: loop {batch / step_s:,.0f} img/s, bare "
          f"{batch / bare_s:,.0f} img/s", file=sys.stderr, flush=True)
    return row


def _run(module, *args):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=FLAGS.binary_timeout, env={**os.environ, "KERAS_BACKEND": "jax"},
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return proc, time.perf_counter() - start


def end_to_end(work):
    """find_tickets (levels 0, 1) and transfer (level 1) on histology_nuclei, checked."""
    import numpy as np

    from lth_keras import pruning
    from lth_keras.lottery import TicketRun, TransferRun

    target = os.path.join(FLAGS.data_dir, "histology_nuclei")
    if not os.path.isdir(target):
        return {"error": f"{target} not found (--data_dir)"}
    common = [f"--model={FLAGS.model}", f"--image_size={FLAGS.image_size}", "--max_epochs=1",
              "--batch_size=64", f"--mixed_precision={_precision()}"]
    tickets = os.path.join(work, "tickets")
    proc, tickets_s = _run("lth_keras.find_tickets", f"--source={target}", "--rounds=1",
                           "--rewind_epoch=0", f"--output_dir={tickets}", *common)
    result = {"find_tickets_s": tickets_s, "find_tickets_exit": proc.returncode}
    if proc.returncode != 0:
        return {**result, "error": " / ".join(proc.stderr.strip().splitlines()[-3:])}
    run = TicketRun(tickets)
    masks0, masks1, theta_i = run.mask(0), run.mask(1), run.theta_i(1)
    alive0 = sum(int(m.sum()) for m in masks0.values())
    alive1 = sum(int(m.sum()) for m in masks1.values())
    binary = all(set(np.unique(m)) <= {0.0, 1.0} for m in masks1.values())
    zeros = all(np.all(theta_i[k][m == 0] == 0) for k, m in masks1.items())
    result.update(levels=run.finished_levels(), survivors=alive1,
                  survivors_expected=pruning.survivors(alive0, 0.2),
                  masks_binary=binary, pruned_weights_zero=zeros,
                  level_test_accuracy=[run.metrics(level)["test"]["accuracy"]
                                       for level in run.finished_levels()],
                  # Training images per second of each level's epochs, as metrics.json
                  # records them (one epoch each, so compilation is in level 0's).
                  level_images_per_s=[run.metrics(level)["cost"]["images"]
                                      / run.metrics(level)["cost"]["seconds"]
                                      for level in run.finished_levels()])
    out = os.path.join(work, "transfer")
    proc, transfer_s = _run("lth_keras.transfer", f"--tickets={tickets}", f"--target={target}",
                            "--levels=1", f"--output_dir={out}", *common[2:])
    result.update(transfer_s=transfer_s, transfer_exit=proc.returncode)
    if proc.returncode != 0:
        return {**result, "error": " / ".join(proc.stderr.strip().splitlines()[-3:])}
    tuned = TransferRun(out).weights(1)
    result["transfer_mask_is_ticket"] = all(
        np.array_equal(tuned[k.rsplit("/", 1)[0] + "/mask"], m) for k, m in masks1.items())
    result["transfer_test_accuracy"] = TransferRun(out).metrics(1)["test"]["accuracy"]
    return result


def format_table(report):
    env = report["environment"]
    lines = [f"# gpu_check: {', '.join(env['devices'])}; JAX {env['jax']}, Keras {env['keras']}",
             "", f"{report['model']} at {report['image_size']} px, "
             f"{'bfloat16' if report['mixed_precision'] else 'float32'}, "
             f"{report['train_images']:,} device-resident images, 80% of the prunable weights "
             "masked.", "",
             "| check | batch | result | bare jitted step | loop / bare | target |",
             "|---|---:|---:|---:|---:|---|"]
    for r in report["throughput"]:
        if "error" in r:
            lines.append(f"| engine epoch loop | {r['batch']} | FAILED: {r['error']} | | | |")
            continue
        verdict = ""
        if r["batch"] == 128:
            verdict = f"≥ {LOOP_TARGET}: {'ok' if r['loop_over_bare'] >= LOOP_TARGET else 'MISSED'}"
        lines.append(f"| engine epoch loop | {r['batch']} | {r['loop_images_per_s']:,.0f} img/s "
                     f"(first epoch {r['loop_first_epoch_s']:.1f} s) | "
                     f"{r['bare_images_per_s']:,.0f} img/s | {r['loop_over_bare']:.3f} | "
                     f"{verdict} |")
    e2e = report.get("end_to_end")
    if e2e:
        if "error" in e2e:
            lines.append(f"| find_tickets + transfer | 64 | FAILED: {e2e['error']} | | | |")
        else:
            ok = (e2e["levels"] == [0, 1] and e2e["survivors"] == e2e["survivors_expected"]
                  and e2e["masks_binary"] and e2e["pruned_weights_zero"])
            lines.append(f"| find_tickets, levels 0-1, 1 epoch each | 64 | "
                         f"{e2e['find_tickets_s']:.0f} s, {e2e['survivors']:,} survivors "
                         f"(expected {e2e['survivors_expected']:,}), pruned weights 0: "
                         f"{e2e['pruned_weights_zero']}; level 1 trains at "
                         f"{e2e['level_images_per_s'][-1]:,.0f} img/s | | | "
                         f"{'ok' if ok else 'FAILED'} |")
            lines.append(f"| transfer, level 1 | 64 | {e2e['transfer_s']:.0f} s, mask = "
                         f"ticket's: {e2e['transfer_mask_is_ticket']} | | | "
                         f"{'ok' if e2e['transfer_mask_is_ticket'] else 'FAILED'} |")
    lines.append(f"\nwall time {report['seconds']:.0f} s")
    return "\n".join(lines) + "\n"


def _write(report, start):
    """The report so far: a run cut short by its time limit keeps what it measured."""
    from lth_keras import artifacts

    report["seconds"] = time.time() - start
    table = format_table(report)
    artifacts.write_json(os.path.join(FLAGS.output, "gpu_check.json"), report)
    artifacts.write_bytes(os.path.join(FLAGS.output, "gpu_check.md"), table.encode())
    return table


def _guarded(part, fn):
    """fn()'s result, or its error as one line: one failing part must not lose the rest."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - reported in the table, and the exit code
        print(f"[gpu_check] {part} failed: {traceback.format_exc()}", file=sys.stderr,
              flush=True)
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _apply_tiny()
    import keras

    if keras.backend.backend() != "jax":
        raise app.UsageError("gpu_check checks the JAX engine: run it with KERAS_BACKEND=jax")
    logging.set_verbosity(logging.WARNING)
    start = time.time()
    from lth_keras import artifacts
    from lth_keras.datasets import resize_size

    report = {"model": FLAGS.model, "image_size": FLAGS.image_size,
              "mixed_precision": FLAGS.mixed_precision, "train_images": FLAGS.train_images,
              "throughput": []}
    runtime = fixtures.setup(mixed_precision=_precision())
    report["environment"] = artifacts.environment_record(runtime)
    size = resize_size(FLAGS.image_size)
    dataset = fixtures.synthetic_dataset("synthetic", (size, size, 3), 10,
                                         train=FLAGS.train_images, held_out=64)
    # A ticket-like mask: 80% of the prunable weights masked, by magnitude.
    model = fixtures.masked_model(runtime, FLAGS.model, FLAGS.image_size, dataset.num_classes)
    batches = [int(b) for b in FLAGS.batch_sizes]
    for i, batch in enumerate(batches):
        row = _guarded(f"batch {batch}", lambda: throughput(runtime, dataset, model, batch))
        report["throughput"].append({"batch": batch, **row})
        _write(report, start)
        if i == 0 and FLAGS.end_to_end:
            import tempfile

            with tempfile.TemporaryDirectory() as work:
                report["end_to_end"] = _guarded("end to end", lambda: end_to_end(work))
            print(f"[gpu_check] end to end: {json.dumps(report['end_to_end'])}",
                  file=sys.stderr, flush=True)
            _write(report, start)
    table = _write(report, start)
    print(table, end="")
    failed = [r for r in report["throughput"] if "error" in r] + [
        e for e in [report.get("end_to_end")] if e and "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
