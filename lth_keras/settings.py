"""Every option of lth_keras, written once: dataclasses that the flags are made from.

The groups follow the paper: Data, Model, Training, Pruning (the ticket search),
Transfer, and Run (devices and bookkeeping, which never change a result). Each
field carries its help text and whether it defines the result. From these:

- `define_flags` makes the absl flags of a binary (so a flag cannot drift from
  the field it sets), and `from_flags` reads them back into settings objects;
- `parse` reads command-line arguments or a flagfile into settings without
  touching the global flags (presets in the Python API, the grid's presets);
- `identity` is what names a run: the result-defining fields that differ from
  their defaults, plus the data fingerprint. A new option with a default thus
  leaves every existing run's hash alone (open_lth's rule), and a dataset
  spelled as a relative or an absolute path is the same data.
"""

import dataclasses
import hashlib
import json
import os

from lth_keras.errors import SettingsError

# What a run's hash covers, as a version: a change to `identity` must change it.
IDENTITY_VERSION = 2


def option(default, help, *, result=True, choices=None, item=None, per_run=False):
    """A settings field: its default, help text, whether it defines the result, the
    allowed values (an enum flag), for tuple fields the item type (a list flag), and
    whether the grid sets it for each run itself (it is then not forwarded)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "result": result, "choices": choices, "item": item,
        "per_run": per_run})


def parse_levels(text, flag):
    """The levels a "'all' or comma list" setting names: None for all, else a sorted list
    of distinct levels; SettingsError naming `flag` otherwise. The one reader of that
    format (transfer and stability --levels, the grid's levels, --overlap_levels)."""
    if text is None or str(text).strip() == "all":
        return None
    try:
        levels = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise SettingsError(f"{flag} must be 'all' or a comma list of integers, "
                            f"got {text!r}") from None
    if not levels:
        raise SettingsError(f"{flag} names no level")
    if levels[0] < 0:
        raise SettingsError(f"{flag} must name levels >= 0, got {text!r}")
    return levels


def _check(condition, message):
    if not condition:
        raise SettingsError(message)


def _check_choices(obj):
    """Each enum field of `obj` holds one of its choices: the flags are enums, but the
    Python API's options and settings objects are not."""
    for f in dataclasses.fields(obj):
        choices, value = f.metadata["choices"], getattr(obj, f.name)
        if choices:
            _check(value in choices, f"--{f.name} must be one of {', '.join(choices)}, "
                                     f"got {value!r}")


# The choices other modules check against, spelled once.
MODELS = ("resnet50", "resnet20", "resnet8", "lenet_300_100", "conv4")  # models.BUILDERS
CROPS = ("random", "none")  # datasets/epoch_plan.py
PRUNING_MODES = ("global", "layerwise")  # pruning.py


@dataclasses.dataclass(frozen=True)
class Data:
    """The data a run reads and how its images reach the model (datasets/)."""
    data_dir: str = option(None, "Directory with the original dataset files (archives or "
                                 "image folders).", result=False)
    train_fraction: float = option(1.0, "Seeded stratified fraction of the training split to "
                                        "use, in (0, 1].", per_run=True)
    val_fraction: float = option(0.1, "Fraction of the training split carved out for "
                                      "validation when the dataset has no validation split.")
    split: tuple = option(None, "For an image folder without val/ or test/: seeded stratified "
                                "train,val,test fractions to carve, e.g. 0.7,0.1,0.2.",
                          item=float)
    # How images reach the model (datasets/epoch_plan.py); a transfer takes both from its tickets.
    crop: str = option("random", "random: resize to image_size·256/224 and crop image_size, "
                                 "at random for training and in the centre for evaluation (the "
                                 "paper's); none: the stored pixels as they are, no resize and "
                                 "no crop (--image_size is then the data's own size; image "
                                 "folders are stored at it).", choices=CROPS)
    channels: str = option("3", "3: grayscale images are replicated to 3 channels (the "
                                "paper's, so tickets fit RGB targets); own: each dataset's own "
                                "channel count (1 for Fashion-MNIST, so LeNet's first layer has "
                                "a third of the weights).", choices=("3", "own"))
    # The data fingerprint covers what these two change.
    skip_bad_images: bool = option(False, "Skip (and count) unreadable images in image folders "
                                          "instead of failing.", result=False)
    cache_dir: str = option(None, "Where image folders are kept decoded at their storage size, "
                                  "memory-mapped by every run (default: $LTH_KERAS_CACHE, else "
                                  "~/.cache/lth_keras/images); '' keeps them in memory only.",
                            result=False)

    def check(self):
        _check(0.0 < self.train_fraction <= 1.0, "--train_fraction must be in (0, 1]")
        _check(0.0 < self.val_fraction < 1.0, "--val_fraction must be in (0, 1)")


# The architectures of models.py (a test keeps the two lists equal), named here so that a
# wrong --model is reported before Keras is imported.


@dataclasses.dataclass(frozen=True)
class Model:
    """The network (models.py) and its input size."""
    # The grid takes both from the tickets preset (a transfer, from its tickets).
    model: str = option("resnet20", "Architecture: resnet50, resnet20, resnet8, "
                                    "lenet_300_100, conv4.", per_run=True)
    image_size: int = option(32, "Side of the (random / centre) crop fed to the model.",
                             per_run=True)
    bn_momentum: float = option(0.9, "BatchNorm moving-average momentum (Keras default 0.99 "
                                     "breaks early stopping on small targets: docs/protocol.md "
                                     "\"Decisions the paper left open\").")

    def check(self):
        _check(self.model in MODELS, f"--model={self.model} is not one of {', '.join(MODELS)}")
        _check(self.image_size >= 8, "--image_size must be >= 8")
        _check(0.0 <= self.bn_momentum < 1.0, "--bn_momentum must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class Training:
    """The training recipe every stage shares (training.py): a transfer or stability run takes it from its tickets unless named."""
    seed: int = option(0, "Fixes θ_0, the validation carve, the data order and the crops.",
                       per_run=True)
    batch_size: int = option(64, "Global batch size (summed over replicas).")
    learning_rate: float = option(0.1, "Initial SGD learning rate.")
    momentum: float = option(0.9, "Nesterov momentum.")
    weight_decay: float = option(1e-5, "L2 weight decay on conv and dense kernels.")
    lr_decay: float = option(0.0, "Keras-2 style inverse-time LR decay per step: lr / (1 + "
                                  "decay * step). Off by default; the paper's 'decay factor' "
                                  "may have meant this.")
    lr_boundaries: tuple = option((50, 60, 75), "Epochs at which the learning rate is "
                                                "multiplied by 0.1.", item=int)
    max_epochs: int = option(100, "Upper bound on the epochs of one training run.")
    patience: int = option(5, "Early-stopping patience on the validation loss.")
    mixed_precision: str = option(
        "off", "Mixed-precision compute (GPUs): bfloat16 (Ampere and later; no loss scaling) "
               "or float16 (with loss scaling; TensorFlow engine only). Variables and masks "
               "stay float32.", choices=("off", "bfloat16", "float16"))
    precise_bn: int = option(0, "Precise BN: before each validation, re-estimate every "
                                "BatchNormalization's moving mean and variance as the average "
                                "of this many training batches' statistics at the current "
                                "weights (the epoch's first batches, its crops). 0: the "
                                "moving averages as trained (the paper's). Against early "
                                "stops on a lagging validation loss: docs/protocol.md "
                                "\"Decisions the paper left open\").")

    def check(self):
        _check(self.batch_size >= 1, "--batch_size must be >= 1")
        _check(self.learning_rate > 0, "--learning_rate must be > 0")
        _check(self.max_epochs >= 1, "--max_epochs must be >= 1")
        _check(self.patience >= 1, "--patience must be >= 1")
        _check(self.weight_decay >= 0 and self.lr_decay >= 0,
               "--weight_decay and --lr_decay must be >= 0")
        _check(self.precise_bn >= 0, "--precise_bn must be >= 0 (training batches)")
        _check_choices(self)


@dataclasses.dataclass(frozen=True)
class Pruning:
    """Iterative magnitude pruning with late resetting (find_tickets; lottery/tickets.py)."""
    source: str = option("fashion_mnist", "Dataset to find tickets on: fashion_mnist, cifar10, "
                                          "cifar100, a paper target under --data_dir "
                                          "(human_lba, ...), or an image folder path.",
                         result=False)  # the data fingerprint names the data
    # Not part of the result: adding rounds to a finished run continues it.
    rounds: int = option(31, "Pruning rounds R: levels 0..R are trained.", result=False)
    prune_rate: float = option(0.2, "Fraction of the remaining weights pruned per round.")
    rewind_epoch: int = option(2, "Late-resetting epoch k (0 = rewind to θ_0).")
    pruning: str = option("global", "One magnitude threshold over all prunable kernels, or one "
                                    "per layer.", choices=PRUNING_MODES)
    # Not part of the result: the snapshots change no weight of the run.
    save_epochs: tuple = option((), "Epochs of level 0 whose weights are kept besides θ_0 and "
                                    "θ_k (theta_epoch_EE.npz), the rewind points that "
                                    "`stability` can try, e.g. 1,4.", item=int, result=False)
    save_steps: tuple = option((), "Steps of level 0 whose weights are kept "
                                   "(theta_step_SSSSSS.npz): rewind points inside an epoch "
                                   "for `stability`, e.g. 40 (--rewind_points=40it).",
                               item=int, result=False)

    def check(self, training):
        _check(self.rounds >= 0, "--rounds must be >= 0")
        _check(0.0 < self.prune_rate < 1.0, "--prune_rate must be in (0, 1)")
        _check(0 <= self.rewind_epoch < training.max_epochs,
               f"--rewind_epoch must be in [0, --max_epochs={training.max_epochs})")
        _check(all(0 <= e < training.max_epochs for e in self.save_epochs),
               f"--save_epochs must be in [0, --max_epochs={training.max_epochs})")
        _check(all(s > 0 for s in self.save_steps), "--save_steps must be > 0 (steps)")


@dataclasses.dataclass(frozen=True)
class Transfer:
    """Fine-tuning tickets on a target, and its controls (transfer; lottery/fine_tuning.py)."""
    tickets: str = option(None, "A find_tickets run directory (optional with --scratch).",
                          result=False)  # the ticket run's own hash stands for it
    target: str = option(None, "Dataset to fine-tune on: a paper target under --data_dir "
                               "(human_lba, ...), an image folder path, or a source "
                               "(fashion_mnist, cifar10, cifar100).", result=False)
    levels: str = option("all", "'all' or a comma list of the ticket run's levels.",
                         result=False)
    init: str = option("rewind", "Start from m_L ⊙ θ_k (rewind) or from m_L ⊙ θ_i(L) (final).",
                       choices=("rewind", "final"))
    reinit: bool = option(False, "Control: keep the mask, draw fresh weights from the "
                                 "initialiser (another seed).")
    scratch: bool = option(False, "Baseline: the dense model from θ_0, trained on the target.")
    random_mask: bool = option(False, "Control: random pruning, a random mask with the "
                                      "ticket's count of alive weights in every layer, from "
                                      "θ_k (with --reinit: from fresh weights).")

    @property
    def condition(self):
        if self.scratch:
            return "scratch"
        if self.random_mask:
            return "random_reinit" if self.reinit else "random"
        return "reinit" if self.reinit else self.init

    def check(self):
        _check(self.target, "--target is required")
        _check(not (self.scratch and self.reinit), "--scratch and --reinit exclude each other")
        _check(self.scratch or self.tickets, "--tickets is required: a find_tickets run "
                                             "directory (only --scratch can do without)")
        _check(not (self.scratch and (self.levels.strip() != "all" or self.init != "rewind")),
               "--scratch trains the one dense model: --levels and --init do not apply")
        _check(not (self.reinit and self.init != "rewind"),
               "--reinit draws fresh weights: it cannot be combined with --init")
        _check(not (self.scratch and self.random_mask),
               "--scratch and --random_mask exclude each other")
        _check(not (self.random_mask and self.init != "rewind"),
               "--random_mask starts from θ_k (or, with --reinit, fresh weights): it cannot "
               "be combined with --init")


BN_AT_INTERPOLATION = ("reestimate", "interpolate")


@dataclasses.dataclass(frozen=True)
class Stability:
    """Instability analysis (Frankle et al. 2020) of a ticket run (lottery/instability.py)."""
    tickets: str = option(None, "A find_tickets run directory.", result=False)
    levels: str = option("all", "'all' or a comma list of the ticket run's levels.",
                         result=False)
    rewind_points: tuple = option((), "Rewind points k to try: epochs of level 0 (2 or 2ep; 0: "
                                      "θ_0) or steps (40it). Default: every one the ticket "
                                      "run holds (0, its rewind epoch, its --save_epochs and "
                                      "--save_steps).", item=str, result=False)
    budget: str = option("", "T, the steps every copy trains to, from its rewind point k "
                             "(T - k steps, the schedule continued from k, no early "
                             "stopping, the final weights kept): epochs (10 or 10ep) or "
                             "steps (1260it). Default: the steps level 0 of the ticket run "
                             "trained.", result=False)  # the identity holds T as resolved
    pairs: int = option(3, "Independent pairs of copies per level and k, each pair on two "
                           "data orders of its own (Frankle et al. average 3).",
                        result=False)  # more pairs add copies to the same analysis
    data_orders: tuple = option((), "The copies' data-order seeds (their batch order and "
                                    "crops), two per pair (one seed twice: the negative "
                                    "control, a barrier of exactly 0). Default: the ticket "
                                    "run's seed + 0, 1, ..., 2·pairs - 1, all distinct.",
                                item=int,
                                result=False)  # the identity holds the seeds as resolved
    mask_runs: tuple = option((), "Masks per rewind point: K:RUN pairs, RUN a find_tickets "
                                  "run rewound to epoch K (--rewind_epoch=K, else the ticket "
                                  "run's settings); at k = K the copies start from RUN's "
                                  "m_L ⊙ θ_K. Default: the ticket run's masks at every k.",
                              item=str, result=False)  # the identity holds the runs' hashes
    points: int = option(11, "Points on the linear path between the two copies, ends "
                             "included.")
    bn: str = option("reestimate", "BatchNormalization statistics at every point of the path, "
                                   "ends included: re-estimated on training batches at its "
                                   "weights (reestimate), or interpolated like the weights "
                                   "(interpolate; the ends keep the copies' own).",
                     choices=BN_AT_INTERPOLATION)
    bn_batches: int = option(20, "Training batches the statistics are re-estimated on.")
    threshold: float = option(0.02, "The error barrier (a fraction) below which a copy pair "
                                    "counts as stable (Frankle et al.: 2%).", result=False)

    def check(self):
        from lth_keras import steps

        _check(self.tickets, "--tickets is required: a find_tickets run directory")
        _check(self.pairs >= 1, "--pairs must be >= 1")
        _check(not self.data_orders or len(self.data_orders) == 2 * self.pairs,
               f"--data_orders takes the copies' seeds, two per pair: {2 * self.pairs} for "
               f"--pairs={self.pairs}")
        pairs_of = {}
        for i, seed in enumerate(self.data_orders):
            pairs_of.setdefault(seed, set()).add(i // 2)
        shared = sorted(seed for seed, pairs in pairs_of.items() if len(pairs) > 1)
        _check(not shared, f"--data_orders: seed {', '.join(map(str, shared))} is in more than "
                           "one pair: pairs must be independent (a seed may repeat only within "
                           "a pair, the negative control)")
        _check(self.points >= 3, "--points must be >= 3 (the two ends and a point between)")
        _check(self.bn_batches >= 1, "--bn_batches must be >= 1")
        _check(0 < self.threshold < 1, "--threshold must be in (0, 1)")
        try:
            steps.check(self.rewind_points)
            steps.check([self.budget] if self.budget else [])
        except ValueError as e:
            raise SettingsError(f"--rewind_points / --budget: {e}") from None
        pairs = [m.split(":", 1) for m in self.mask_runs]
        _check(all(len(p) == 2 and p[0].strip().isdigit() and p[1] for p in pairs),
               "--mask_runs takes K:RUN pairs, K an epoch, e.g. 0:outputs/tickets/run-k0")
        _check_choices(self)


@dataclasses.dataclass(frozen=True)
class Run:
    """Devices, compilation and bookkeeping: nothing here changes a result."""
    # The engine is Keras's backend: KERAS_BACKEND=tensorflow (default) or jax.
    strategy: str = option(
        "default", "Devices to train on: default (every GPU, or one CPU device), mirrored "
                   "(every device), one_device, multi_worker (several hosts: TF_CONFIG on "
                   "TensorFlow; srun or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/"
                   "JAX_PROCESS_ID on JAX).",
        result=False, choices=("default", "mirrored", "one_device", "multi_worker"))
    worker_timeout: int = option(600, "multi_worker: seconds to wait for every worker to join.",
                                 result=False)
    cpu_devices: int = option(0, "Split the CPU into this many logical devices (tests and "
                                 "benchmarks).", result=False)
    deterministic: bool = option(False, "Deterministic kernels: bit-identical runs on CPU "
                                        "(slower).", result=False)
    jit_compile: str = option("auto", "XLA for the TensorFlow engine's steps: auto is on with "
                                      "GPUs, off on CPUs (where XLA is slower). The JAX engine "
                                      "always compiles.", result=False,
                              choices=("auto", "on", "off"))
    steps_per_execution: int = option(16, "Training steps per tf.function call (TensorFlow "
                                          "engine): the host reads no result between them.",
                                      result=False)
    compilation_cache: str = option(None, "JAX engine: the persistent cache of compiled "
                                          "steps, so that a new process with the same "
                                          "shapes does not compile again (default: "
                                          "$LTH_KERAS_COMPILATION_CACHE, else "
                                          "~/.cache/lth_keras/jax); '' turns it off.",
                                    result=False)
    checkpoint_every: float = option(600.0, "Seconds between epoch checkpoints of a level in "
                                            "progress (0: after every epoch). SIGINT/SIGTERM "
                                            "always write one, even mid-epoch.", result=False)
    output_dir: str = option(None, "Run directory (default: a readable name under outputs/; "
                                   "the grid's: the root of its runs).", result=False,
                             per_run=True)

    def check(self):
        _check(self.checkpoint_every >= 0, "--checkpoint_every must be >= 0 (seconds)")
        _check(self.steps_per_execution >= 1, "--steps_per_execution must be >= 1")
        _check_choices(self)


PAPER_CONDITIONS = ("target_tickets", "rewind", "final", "reinit", "source_reinit", "scratch",
                    "related", "train_fractions")
# Random pruning and the instability analysis are not the paper's: known to the grid, not
# in its default.
GRID_CONDITIONS = PAPER_CONDITIONS + ("random", "source_random", "target_transfer", "stability")


@dataclasses.dataclass(frozen=True)
class Grid:
    """The paper's experiment grid (lth_keras/grid.py); none of it defines a run's result."""
    sources: tuple = option(("fashion_mnist", "cifar10", "cifar100"),
                            "Natural sources to find tickets on.", item=str, result=False)
    targets: tuple = option((), "Targets: paper target names under --data_dir, or folder paths.",
                            item=str, result=False)
    seeds: tuple = option((0, 1, 2, 3), "Seeds; each makes its own tickets and transfers.",
                          item=int, result=False)
    transfer_seeds: tuple = option((), "Seeds of every transfer of each ticket run (head, data "
                                       "order, θ'_0): each (seed, transfer seed) is one pair of "
                                       "runs that share their tickets, θ_0 and the target's "
                                       "batches. Default: the ticket run's own seed.",
                                   item=int, result=False)
    control_transfer_seeds: tuple = option(None, "Transfer seeds of the controls (reinit, "
                                                 "source_reinit, random, source_random, "
                                                 "target_transfer): each is paired with the "
                                                 "ticket and scratch of the same seeds. "
                                                 "Default: --transfer_seeds.",
                                           item=int, result=False)
    conditions: tuple = option(PAPER_CONDITIONS, f"Any of {', '.join(GRID_CONDITIONS)} "
                                                 "(default: the paper's, every one but "
                                                 "random, source_random, target_transfer and "
                                                 "stability).",
                               item=str, result=False)
    related: tuple = option((), "Related-source pairs SOURCE:TARGET, e.g. human_lba:mouse_lba.",
                            item=str, result=False)
    train_fractions: tuple = option((0.25, 0.5, 0.75), "Training fractions for the "
                                    "train_fractions condition.", item=float, result=False)
    transfer_levels: str = option("all", "Levels every transfer fine-tunes: 'all' or a comma "
                                         "list (e.g. 0,2,4,6).", result=False)
    reinit_levels: str = option(None, "Levels of the control transfers (reinit, source_reinit, "
                                      "random, source_random, target_transfer; default: "
                                      "--transfer_levels): a control is needed only where "
                                      "the tickets are compared.", result=False)
    mask_rewind_epochs: tuple = option((), "The stability condition with masks per rewind "
                                           "point: for each epoch K, a ticket run of the "
                                           "same settings rewound to K (tickets/<name>-kK), "
                                           "whose masks the copies use at k = K "
                                           "(stability --mask_runs).", item=int,
                                       result=False)
    primary_level: int = option(None, "The pruning level of the grid's primary result, named "
                                      "before it runs: analyze then reports ticket - scratch "
                                      "at this level (paired difference, 95% CI, p, the "
                                      "effect detectable at 80% power), beside Table 2's "
                                      "validation-picked best level.", result=False)
    domain_contrast: str = option(None, "A named exploratory contrast across two targets, "
                                        "A:B (e.g. wikiart_artists10:histology_nuclei): per "
                                        "search, (natural ticket − target ticket) on A minus "
                                        "the same on B, at the primary level; recorded in "
                                        "grid.json before the grid runs.", result=False)
    in_process: bool = option(False, "Run every run in this process through the Python API "
                                     "(one engine start-up; compiled steps reused across runs "
                                     "of the same shapes) instead of a child process each.",
                              result=False)
    tickets_dir: str = option(None, "Where the grid's find_tickets runs live (default: tickets/ "
                                    "under --output_dir): another grid's, to fine-tune the same "
                                    "tickets with another transfer preset.", result=False)
    tickets_flagfile: str = option("flags/paper.cfg", "Preset of every find_tickets run.",
                                   result=False)
    transfer_flagfile: str = option("flags/paper_transfer.cfg", "Preset of every transfer run "
                                    "('': none, every transfer takes its ticket run's recipe).",
                                    result=False)
    task_index: int = option(None, "This task's index (default $SLURM_ARRAY_TASK_ID).",
                             result=False)
    num_tasks: int = option(None, "How many tasks share the grid (default "
                                  "$SLURM_ARRAY_TASK_COUNT, else 1).", result=False)
    wait_for_inputs: int = option(0, "Seconds to wait for tickets that another task makes "
                                     "before skipping.", result=False)
    list: bool = option(False, "List the runs with their state and task, run nothing.",
                        result=False)

    def check(self):
        related = [pair.split(":") for pair in self.related]
        _check(all(len(p) == 2 and all(p) for p in related),
               "--related takes SOURCE:TARGET pairs, e.g. human_lba:mouse_lba")
        _check(all(0 < f <= 1 for f in self.train_fractions),
               "--train_fractions must be in (0, 1]")
        _check(self.seeds, "--seeds names no seed")
        _check(self.domain_contrast is None or (
            len(self.domain_contrast.split(":")) == 2 and all(self.domain_contrast.split(":"))),
            "--domain_contrast takes two target names A:B, e.g. "
            "wikiart_artists10:histology_nuclei")
        _check(self.targets or not (set(self.conditions) - {"related"}),
               "--targets is empty: name the targets (e.g. human_lba or a folder path)")
        _check(self.primary_level is None or self.primary_level >= 1,
               "--primary_level must be a pruned level (>= 1)")
        _check(len(set(self.transfer_seeds)) == len(self.transfer_seeds),
               "--transfer_seeds names a seed twice")
        _check(self.control_transfer_seeds is None
               or set(self.control_transfer_seeds) <= set(self.transfer_seeds),
               "--control_transfer_seeds must be among --transfer_seeds")
        listed = parse_levels(self.transfer_levels, "--transfer_levels")
        parse_levels(self.reinit_levels or "all", "--reinit_levels")
        _check(self.primary_level is None or listed is None or self.primary_level in listed,
               f"--primary_level={self.primary_level} is not one of "
               f"--transfer_levels={self.transfer_levels}")


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What `analyze` reads and reports (lth_keras/analysis/); it writes to --output_dir."""
    runs: tuple = option(None, "Comma list of directories searched for run directories "
                               "(find_tickets and transfer).", item=str, result=False)
    density_run: str = option(None, "A run directory for the per-layer density plot "
                                    "(default: every find_tickets run found).", result=False)
    natural_sources: tuple = option(None, "Datasets that count as natural-image sources "
                                          "(default: the sources lth_keras knows, cifar10, "
                                          "cifar100, fashion_mnist, and the --sources of the "
                                          "grids analysed); tickets from any other "
                                          "dataset are a related (non-natural) source in "
                                          "Fig. 4.", item=str, result=False)
    mask_overlap: bool = option(True, "Compute the Jaccard overlap of ticket masks (reads "
                                      "every mask.npz).", result=False)
    overlap_levels: str = option("all", "'all' or a comma list of levels at which to compare "
                                        "masks.", result=False)
    primary_level: int = option(None, "The level of the primary result (ticket - scratch, "
                                      "paired, with its CI and power). Default: the one the "
                                      "grid named before it ran (experiment --primary_level, "
                                      "in its grid.json); none, none.", result=False)

    def check(self):
        _check(self.runs, "--runs is required: directories holding run directories")
        _check(self.primary_level is None or self.primary_level >= 1,
               "--primary_level must be a pruned level (>= 1)")
        self.levels_to_overlap()

    def levels_to_overlap(self):
        """The levels of --overlap_levels as a set, None for all."""
        levels = parse_levels(self.overlap_levels, "--overlap_levels")
        return None if levels is None else set(levels)


@dataclasses.dataclass(frozen=True)
class Planning:
    """What `plan` reads and assumes (lth_keras/analysis/planning.py); it writes plan.md and
    plan.csv to --output_dir."""
    runs: tuple = option(None, "Comma list of directories holding the pilot grid's runs (at "
                               "least 3 ticket searches with 2 transfer seeds each).",
                         item=str, result=False)
    level: int = option(None, "The level of the ticket - scratch contrast (default: the "
                              "primary level the pilot's grid named).", result=False)
    effect: float = option(2.0, "The true difference to detect, in points of accuracy.",
                           result=False)
    power: float = option(0.8, "The power wanted.", result=False)
    alpha: float = option(0.05, "The two-sided test's level.", result=False)
    design: str = option("", "A design to evaluate beside the cheapest, SEARCHESxSEEDS "
                             "(e.g. 8x2): its power and the effect it detects.",
                         result=False)
    max_searches: int = option(100, "The most searches a design may have.", result=False)
    max_transfer_seeds: int = option(8, "The most transfer seeds per search a design may "
                                        "have.", result=False)
    throughput: float = option(0.0, "Images per second that hours are computed at (0: the "
                                    "pilot's own wall times).", result=False)

    def check(self):
        _check(self.runs, "--runs is required: the pilot grid's directory")
        _check(self.effect > 0, "--effect must be > 0 (points of accuracy)")
        _check(0 < self.power < 1 and 0 < self.alpha < 1, "--power and --alpha must be in (0, 1)")
        _check(self.max_searches >= 2 and self.max_transfer_seeds >= 1,
               "--max_searches must be >= 2 and --max_transfer_seeds >= 1")
        _check(self.throughput >= 0, "--throughput must be >= 0 (images per second)")
        self.design_pair()

    def design_pair(self):
        """(searches, transfer seeds) of --design, or None."""
        if not self.design:
            return None
        n, _, m = self.design.lower().partition("x")
        try:
            n, m = int(n), int(m)
        except ValueError:
            n = m = 0
        _check(n >= 2 and m >= 1, f"--design must be SEARCHESxSEEDS with at least 2 searches "
                                  f"and 1 seed (e.g. 8x2), got {self.design!r}")
        return n, m


@dataclasses.dataclass(frozen=True)
class Export:
    """What `export` converts (lth_keras/tflite_export.py); it writes to --output_dir."""
    run: str = option(None, "A transfer (or find_tickets) run directory.", result=False)
    level: int = option(None, "The finished level to export.", result=False)
    check_batch: int = option(16, "Random inputs the prediction check runs on.", result=False)
    tolerance: float = option(1e-3, "Largest |logit difference| allowed between TFLite and "
                                    "Keras, relative to max(1, max |logit|).", result=False)

    def check(self):
        _check(self.run, "--run is required: a transfer or find_tickets run directory")
        _check(self.check_batch >= 1, "--check_batch must be >= 1")
        _check(0 < self.tolerance < 1, "--tolerance must be in (0, 1)")


# The fine-tuning recipe: what a transfer takes from its ticket run unless it is given
# (the transfer seed too, so that a transfer pairs with its tickets, as in the grid).
RECIPE = ("seed", "batch_size", "learning_rate", "momentum", "weight_decay", "lr_decay",
          "lr_boundaries", "max_epochs", "patience", "mixed_precision", "bn_momentum",
          "precise_bn")
# What a transfer's input and architecture are: always the ticket run's.
ARCHITECTURE = ("model", "image_size", "crop", "channels")

# The groups every training binary shares, and each binary's own. The grid also takes
# the common groups, to forward what is given to every run.
COMMON = (Data, Model, Training, Run)
FIND_TICKETS = COMMON + (Pruning,)
TRANSFER = COMMON + (Transfer,)
STABILITY = COMMON + (Stability,)
EXPERIMENT = COMMON + (Grid,)
ANALYZE = (Analysis, Run)
ALL_GROUPS = (Data, Model, Training, Pruning, Transfer, Stability, Run, Grid, Analysis, Planning,
              Export)
PLAN = (Planning, Run)
EXPORT = (Export, Run)


# --- flags -------------------------------------------------------------------------

def _default_text(f):
    """The field's default as absl takes it."""
    if f.metadata["item"] is not None and f.default is not None:
        return [str(v) for v in f.default]
    return f.default


def define_flags(groups, flag_values=None):
    """Defines one absl flag per field of `groups` (in `flag_values`, default the global
    FLAGS); a flag defined already (by another binary's import) is left alone."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    for group in groups:
        for f in dataclasses.fields(group):
            if f.name in flag_values:
                continue
            meta, default = f.metadata, _default_text(f)
            kwargs = dict(flag_values=flag_values, module_name="lth_keras.settings")
            if meta["choices"]:
                flags.DEFINE_enum(f.name, default, list(meta["choices"]), meta["help"],
                                  **kwargs)
            elif meta["item"] is not None:
                flags.DEFINE_list(f.name, default, meta["help"], **kwargs)
            elif f.type is bool:
                flags.DEFINE_bool(f.name, default, meta["help"], **kwargs)
            elif f.type is int:
                flags.DEFINE_integer(f.name, default, meta["help"], **kwargs)
            elif f.type is float:
                flags.DEFINE_float(f.name, default, meta["help"], **kwargs)
            else:
                flags.DEFINE_string(f.name, default, meta["help"], **kwargs)


def _typed(f, value):
    """A flag's value as the field's type (lists of strings become tuples of items)."""
    item = f.metadata["item"]
    if item is None or value is None:
        return value
    try:
        return tuple(item(v) for v in value)
    except ValueError:
        raise SettingsError(f"--{f.name} must be a comma list of {item.__name__} values, got "
                            f"{','.join(map(str, value))}")


def _from_text(f, text):
    """A number or boolean option given as text (as on a command line)."""
    try:
        if f.type is bool:
            return {"true": True, "1": True, "false": False, "0": False}[text.lower()]
        return f.type(text)
    except (KeyError, ValueError):
        raise SettingsError(f"--{f.name} must be {f.type.__name__}, got {text!r}") from None


def _from_flag_values(groups, flag_values):
    """({group: settings object}, the names of the fields set explicitly) of parsed flags."""
    chosen = {group: group(**{f.name: _typed(f, flag_values[f.name].value)
                              for f in dataclasses.fields(group)}) for group in groups}
    named = {f.name for group in groups for f in dataclasses.fields(group)
             if flag_values[f.name].present}
    return chosen, named


def from_command_line(groups):
    """({group: settings object}, the names given) of this process's command line, as
    absl parsed it into the global flags (a binary's main)."""
    from absl import flags

    return _from_flag_values(groups, flags.FLAGS)


def from_arguments(groups, args=()):
    """({group: settings object}, the names given) of command-line arguments such as
    ["--flagfile=flags/quick.cfg", "--seed=1"], without touching the global flags. Flags
    that no group defines are an error."""
    from absl import flags

    flag_values = flags.FlagValues()
    define_flags(groups, flag_values)
    try:
        flag_values(["lth_keras", *args], known_only=False)
    except flags.Error as e:
        raise SettingsError(str(e).splitlines()[0]) from None
    return _from_flag_values(groups, flag_values)


def replaced(chosen, values):
    """`chosen` ({group: object}) with `values` ({field name: value}) applied, each to the
    group that has the field, typed as the field is (text as on a command line, lists or
    comma strings for list fields); an unknown name is an error."""
    chosen = dict(chosen)
    owners = {f.name: group for group in chosen for f in dataclasses.fields(group)}
    unknown = sorted(set(values) - set(owners))
    if unknown:
        raise SettingsError(f"unknown option(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(owners))}")
    for name, value in values.items():
        group = owners[name]
        f = next(f for f in dataclasses.fields(group) if f.name == name)
        if f.metadata["item"] is not None and isinstance(value, str):
            value = value.split(",")
        if f.metadata["item"] is not None and value is not None:
            value = _typed(f, value)
        elif isinstance(value, str) and f.type in (int, float, bool):
            value = _from_text(f, value)
        chosen[group] = dataclasses.replace(chosen[group], **{name: value})
    return chosen


# --- presets and the Python API ------------------------------------------------------

# The presets: flagfiles in the project's flags/ ("quick" is flags/quick.cfg).
FLAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")


def preset_path(preset):
    """A flagfile path, or the name of a preset in the project's flags/ ("quick")."""
    if os.path.isfile(preset):
        return preset
    named = os.path.join(FLAGS_DIR, f"{preset}.cfg")
    if os.sep not in preset and os.path.isfile(named):
        return named
    raise SettingsError(f"preset {preset!r} is neither a flagfile nor one of "
                        f"{', '.join(sorted(n[:-4] for n in os.listdir(FLAGS_DIR)))}"
                        if os.path.isdir(FLAGS_DIR) else f"no such flagfile: {preset}")


def resolve(groups, objects=(), preset=None, options=None):
    """({group: settings object}, the names of the fields given): defaults, then the
    preset, then `objects`, then `options` ({field name: value}): the Python API's. A
    field counts as given when the preset or an option names it, even at its default,
    and every field of an object passed counts as given."""
    resolved, named = from_arguments(groups, [f"--flagfile={preset_path(preset)}"] if preset
                                     else [])
    for obj in objects:
        if type(obj) not in resolved:
            raise SettingsError(f"{type(obj).__name__} settings do not apply here (it takes "
                                f"{', '.join(g.__name__ for g in groups)})")
        resolved[type(obj)] = obj
        named |= {f.name for f in dataclasses.fields(obj)}
    options = options or {}
    return replaced(resolved, options), named | set(options)


def flag_text(name, value):
    """An option as a command-line flag ("--seeds=0,1"), as the grid forwards it."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        value = str(value).lower()
    return f"--{name}={value}"


def check(chosen):
    """Every setting's own check ({group: object}), before anything is loaded or written."""
    for group, obj in chosen.items():
        if group is Pruning:
            obj.check(chosen[Training])
        elif hasattr(obj, "check"):
            obj.check()


# --- records and identity -------------------------------------------------------------

def json_value(value):
    return list(value) if isinstance(value, tuple) else value


def record(settings):
    """Every field of every group, as JSON: {group name: {field: value}}."""
    return {group.__name__.lower(): {k: json_value(v)
                                     for k, v in dataclasses.asdict(obj).items()}
            for group, obj in settings.items()}


def result_values(settings):
    """{field: value} of every result-defining field (what a run's record lists)."""
    return {f.name: json_value(getattr(obj, f.name))
            for obj in settings.values() for f in dataclasses.fields(obj)
            if f.metadata["result"]}


def from_record(sections):
    """{group: settings object} of a run record's "settings" ({group name: {field: value}},
    as `record` writes it): lists typed as the fields' items; a field the record lacks (an
    earlier version's record) has its default, one it has that this version lacks is
    left out."""
    out = {}
    for group in ALL_GROUPS:
        values = sections.get(group.__name__.lower())
        if not isinstance(values, dict):
            continue
        fields = {f.name: f for f in dataclasses.fields(group)}
        given = {}
        for name, value in values.items():
            f = fields.get(name)
            if f is None:
                continue
            item = f.metadata["item"]
            given[name] = tuple(item(v) for v in value) if item and value is not None else value
        out[group] = group(**given)
    return out


def changed(settings):
    """{field: value} of the result-defining fields that differ from their defaults."""
    return {f.name: json_value(getattr(obj, f.name))
            for obj in settings.values() for f in dataclasses.fields(obj)
            if f.metadata["result"] and getattr(obj, f.name) != f.default}


def identity(settings, fingerprint, **extra):
    """What names a run: the result-defining fields that differ from their defaults, the
    data fingerprint and `extra` (a transfer's condition and ticket run)."""
    return {"version": IDENTITY_VERSION, "changed": changed(settings),
            "fingerprint": fingerprint, **extra}


def identity_hash(ident):
    """A short, stable hash of an identity."""
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
