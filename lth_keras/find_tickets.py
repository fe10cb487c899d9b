"""Finds lottery tickets by iterative magnitude pruning with late resetting.

  python -m lth_keras.find_tickets --source=fashion_mnist --flagfile=flags/quick.cfg

Re-running the same command resumes: finished levels are skipped and an
interrupted level continues from its last epoch checkpoint.
"""

from absl import flags, logging

from lth_keras import cli
from lth_keras.pruning import PRUNING_MODES

flags.DEFINE_string("source", "fashion_mnist",
                    "Dataset to find tickets on: fashion_mnist, cifar10, cifar100, a paper target "
                    "under --data_dir (human_lba, ...), or an image folder path.")
flags.DEFINE_integer("rounds", 31, "Pruning rounds R: levels 0..R are trained.")
flags.DEFINE_float("prune_rate", 0.2, "Fraction of the remaining weights pruned per round.")
flags.DEFINE_integer("rewind_epoch", 2, "Late-resetting epoch k (0 = rewind to θ_0).")
flags.DEFINE_enum("pruning", "global", list(PRUNING_MODES),
                  "One magnitude threshold over all prunable kernels, or one per layer.")

FLAGS = flags.FLAGS

# Flags that define the run's result; the hash of their values names it. Options
# that do not change the result (rounds, output_dir, verbosity) are left out, so
# adding rounds to a finished run continues it.
RESULT_FLAGS = ("source", "model", "image_size", "train_fraction", "val_fraction", "split",
                "bn_momentum", "seed", "batch_size", "learning_rate", "momentum",
                "weight_decay", "lr_decay", "lr_boundaries", "max_epochs", "patience",
                "prune_rate", "rewind_epoch", "pruning", "mixed_precision")


def _check_flags():
    cli.check_common_flags()
    cli.check(FLAGS.rounds >= 0, "--rounds must be >= 0")
    cli.check(0.0 < FLAGS.prune_rate < 1.0, "--prune_rate must be in (0, 1)")
    cli.check(0 <= FLAGS.rewind_epoch < FLAGS.max_epochs,
              f"--rewind_epoch must be in [0, --max_epochs={FLAGS.max_epochs})")
    return cli.training_config()


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    training_config = _check_flags()

    from lth_keras import lottery, models, runs
    from lth_keras.datasets import InputPlan

    dataset = cli.load_dataset(FLAGS.source)
    runtime = cli.setup_runtime()
    plan = InputPlan(dataset, image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
                     seed=FLAGS.seed)
    output_dir = FLAGS.output_dir or runs.default_dir(
        "tickets", f"{dataset.name}-{FLAGS.model}-{FLAGS.image_size}px-seed{FLAGS.seed}")
    run = lottery.TicketRun(runs.process_directory(output_dir, runtime))
    runs.start(run.config_path, kind="find_tickets", flag_names=RESULT_FLAGS,
               dataset=dataset, plan=plan, runtime=runtime)
    logging.info("run directory: %s (engine: %s)", output_dir, runtime.name)

    with runtime.scope():
        model = models.build_model(FLAGS.model, input_shape=(FLAGS.image_size,) * 2 + (3,),
                                   num_classes=dataset.num_classes, seed=FLAGS.seed,
                                   bn_momentum=FLAGS.bn_momentum)
    rows = lottery.find_tickets(run, model, plan, runtime, training_config,
                                rounds=FLAGS.rounds, prune_rate=FLAGS.prune_rate,
                                pruning_mode=FLAGS.pruning, rewind_epoch=FLAGS.rewind_epoch)
    print(runs.format_summary(rows), end="")
    print(f"artifacts: {output_dir}")


if __name__ == "__main__":
    cli.run(main)
