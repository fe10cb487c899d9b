"""Fine-tunes the tickets of a find_tickets run on a target dataset, or trains a control.

  python -m lth_keras.transfer --tickets=outputs/tickets/RUN --target=histology_nuclei
  python -m lth_keras.transfer --tickets=outputs/tickets/RUN --target=artist1 --reinit
  python -m lth_keras.transfer --tickets=outputs/tickets/RUN --target=artist1 --init=final
  python -m lth_keras.transfer --tickets=outputs/tickets/RUN --target=artist1 --scratch

The model and input size are the ticket's. Re-running the same command skips
finished levels and resumes an interrupted one from its last epoch.
"""

import os

from absl import flags, logging

from lth_keras import cli

flags.DEFINE_string("tickets", None, "A find_tickets run directory (optional with --scratch).")
flags.DEFINE_string("target", None,
                    "Dataset to fine-tune on: a paper target under --data_dir (human_lba, ...), "
                    "an image folder path, or a source (fashion_mnist, cifar10, cifar100).")
flags.DEFINE_string("levels", "all", "'all' or a comma list of the ticket run's levels.")
flags.DEFINE_enum("init", "rewind", ["rewind", "final"],
                  "Start from m_L ⊙ θ_k (rewind) or from m_L ⊙ θ_i(L) (final).")
flags.DEFINE_bool("reinit", False,
                  "Control: keep the mask, draw fresh weights from the initialiser (another seed).")
flags.DEFINE_bool("scratch", False, "Baseline: the dense model from θ_0, trained on the target.")

FLAGS = flags.FLAGS

# The flags that define the result (see find_tickets.RESULT_FLAGS); the ticket
# run and the condition are added to the hash.
RESULT_FLAGS = ("target", "model", "image_size", "train_fraction", "val_fraction", "split",
                "bn_momentum", "seed", "batch_size", "learning_rate", "momentum",
                "weight_decay", "lr_decay", "lr_boundaries", "max_epochs", "patience",
                "mixed_precision")


def _condition():
    cli.check(FLAGS.target, "--target is required")
    cli.check(not (FLAGS.scratch and FLAGS.reinit), "--scratch and --reinit exclude each other")
    if FLAGS.scratch:
        cli.check(not FLAGS["levels"].present and not FLAGS["init"].present,
                  "--scratch trains the one dense model: --levels and --init do not apply")
        return "scratch"
    cli.check(FLAGS.tickets, "--tickets is required: a find_tickets run directory "
                             "(only --scratch can do without)")
    if FLAGS.reinit:
        cli.check(not FLAGS["init"].present,
                  "--reinit draws fresh weights: it cannot be combined with --init")
        return "reinit"
    return FLAGS.init


def _parse_levels(text, available, where):
    if text.strip() == "all":
        return list(available)
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise cli.UserError(f"--levels must be 'all' or a comma list of integers, got {text!r}")
    outside = [level for level in levels if level not in available]
    cli.check(levels, "--levels names no level")
    cli.check(not outside, f"--levels {','.join(map(str, outside))} not in {where}, which has "
                           f"finished levels {available[0]}..{available[-1]}")
    return levels


def _ticket_run(condition):
    """(TicketRun or None, levels, model config) for the condition."""
    from lth_keras import lottery

    if not FLAGS.tickets:  # scratch without tickets: the flags name the model
        return None, [0], {"model": FLAGS.model, "image_size": FLAGS.image_size,
                           "source_classes": None, "seed": FLAGS.seed}
    cli.check(os.path.isdir(FLAGS.tickets), f"--tickets={FLAGS.tickets}: no such directory")
    run = lottery.TicketRun(FLAGS.tickets)
    config = run.config()
    cli.check(config.get("kind") == "find_tickets",
              f"{FLAGS.tickets} is a {config.get('kind')} run, not a find_tickets run")
    hparams = config["hparams"]
    for name in ("model", "image_size"):
        cli.check(not FLAGS[name].present or FLAGS[name].value == hparams[name],
                  f"--{name}={FLAGS[name].value} but the tickets in {FLAGS.tickets} are "
                  f"for {name} {hparams[name]}; leave --{name} out to use the ticket's")
        FLAGS[name].value = hparams[name]
    available = run.finished_levels()
    cli.check(available, f"{FLAGS.tickets} has no finished levels; run find_tickets first")
    levels = [0] if condition == "scratch" else _parse_levels(FLAGS.levels, available,
                                                              FLAGS.tickets)
    model_config = {"model": hparams["model"], "image_size": hparams["image_size"],
                    "source_classes": config["dataset"]["num_classes"], "seed": hparams["seed"]}
    return run, levels, model_config


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.check_common_flags()
    training_config = cli.training_config()
    condition = _condition()
    ticket_run, levels, model_config = _ticket_run(condition)

    from lth_keras import fine_tuning, runs, weights
    from lth_keras.datasets import InputPlan

    dataset = cli.load_dataset(FLAGS.target)
    runtime = cli.setup_runtime()
    plan = InputPlan(dataset, image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
                     seed=FLAGS.seed)
    model_config["bn_momentum"] = FLAGS.bn_momentum
    if model_config["source_classes"] is None:
        model_config["source_classes"] = dataset.num_classes

    with runtime.scope():
        source_model, target_model = fine_tuning.build_target_model(
            model_config, dataset.num_classes, seed=FLAGS.seed)
        fresh_init = None
        if condition == "reinit":
            fresh_config = dict(model_config, seed=fine_tuning.reinit_seed(model_config["seed"],
                                                                           FLAGS.seed))
            fresh_init = weights.snapshot(
                fine_tuning.build_target_model(fresh_config, dataset.num_classes, FLAGS.seed)[0])
    theta_0 = (ticket_run.theta("0") if ticket_run else weights.snapshot(source_model))

    def start_for_level(level):
        return fine_tuning.starting_point(condition, level, ticket_run, theta_0, fresh_init)

    # A ticket that does not fit this architecture fails here, before anything is written.
    fine_tuning.load_start(source_model, *start_for_level(levels[0]))

    name = f"{dataset.name}-{condition}"
    if FLAGS.train_fraction < 1:
        name += f"-frac{FLAGS.train_fraction:g}"
    name += f"-seed{FLAGS.seed}"
    parent = (os.path.basename(os.path.normpath(FLAGS.tickets)) if ticket_run
              else f"scratch-{FLAGS.model}-{FLAGS.image_size}px")
    output_dir = FLAGS.output_dir or runs.default_dir("transfer", os.path.join(parent, name))
    run = fine_tuning.TransferRun(runs.process_directory(output_dir, runtime))
    tickets = None
    if ticket_run:
        ticket_config = ticket_run.config()
        tickets = {"path": os.path.abspath(ticket_run.path),
                   "hparams_hash": ticket_config["hparams_hash"],
                   "source": ticket_config["dataset"]["name"],
                   "source_fingerprint": ticket_config["dataset"]["fingerprint"]}
    runs.start(run.config_path, kind="transfer", flag_names=RESULT_FLAGS,
               dataset=dataset, plan=plan, runtime=runtime,
               extra={"condition": condition, "tickets": tickets, "model": model_config,
                      "levels": levels},
               extra_hparams={"condition": condition,
                              "tickets_hash": tickets and tickets["hparams_hash"]})
    logging.info("run directory: %s (engine: %s)", output_dir, runtime.name)

    rows = fine_tuning.fine_tune(run, source_model, target_model, plan, runtime,
                                 training_config, condition=condition, levels=levels,
                                 start_for_level=start_for_level)
    print(runs.format_summary(rows), end="")
    print(f"artifacts: {output_dir}")


if __name__ == "__main__":
    cli.run(main)
