"""Transfer of tiny Fashion-MNIST tickets to a small image-folder target, and its controls
(the real histology target too, when ../shared/data is beside the repository)."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from conftest import (HISTOLOGY, TICKET_ROUNDS, expected_start_digest, in_process,
                      needs_histology, refused_in_process, run_binary)
from lth_keras import artifacts, lottery, settings, weights
from lth_keras.errors import UserError
from lth_keras.lottery import architecture, fine_tuning as protocol

pytestmark = pytest.mark.slow

RECIPE = ["--max_epochs=2", "--patience=2", "--batch_size=32", "--learning_rate=0.01",
          "--deterministic", "--seed=5"]
TARGET = None  # the generated colour folder (conftest.colour_target), set below


@pytest.fixture(scope="module", autouse=True)
def _target(colour_target):
    global TARGET
    TARGET = colour_target


def _transfer_here(tickets, output_dir, *extra, target=None):
    """_transfer in this process (conftest.in_process); returns the TransferRun."""
    return in_process("transfer", f"--tickets={tickets}", f"--target={target or TARGET}",
                      f"--output_dir={output_dir}", *RECIPE, *extra)


def _transfer(tickets, output_dir, *extra, target=None):
    args = [f"--target={target or TARGET}", f"--output_dir={output_dir}", *RECIPE, *extra]
    if tickets is not None:
        args.insert(0, f"--tickets={tickets}")
    return run_binary("lth_keras.transfer", *args)


@pytest.fixture(scope="module")
def transfers(tiny_tickets, tmp_path_factory):
    """{condition: TransferRun} for every condition, from the same tiny tickets."""
    root = tmp_path_factory.mktemp("transfer")
    runs = {}
    for condition, flag in (("rewind", []), ("final", ["--init=final"]),
                            ("reinit", ["--reinit"]), ("scratch", ["--scratch"]),
                            ("random", ["--random_mask"]),
                            ("random_reinit", ["--random_mask", "--reinit"])):
        runs[condition] = _transfer_here(tiny_tickets.path, root / condition, *flag)
    return runs


def test_every_level_is_fine_tuned_with_its_mask_bit_identical(tiny_tickets, transfers):
    run = transfers["rewind"]
    assert run.finished_levels() == list(range(TICKET_ROUNDS + 1))
    for level in run.finished_levels():
        mask, tuned = tiny_tickets.mask(level), run.weights(level)
        weights.check_arrays_hold_masks(tuned, mask)
        assert tuned["head/kernel"].shape == (100, 4)  # LeNet's last hidden layer, 4 classes
        assert tuned["head/bias"].shape == (4,)
        metrics = run.metrics(level)
        assert metrics["mask_digest"] == weights.digest(mask)
        assert metrics["density"]["fraction_pruned"] == pytest.approx(1 - 0.8 ** level, abs=1e-3)
    leftovers = [f for _, _, files in os.walk(run.path) for f in files
                 if f.endswith(".tmp") or f == "checkpoint.npz"]
    assert not leftovers


def test_rewind_starts_from_m_times_theta_k(tiny_tickets, transfers):
    run = transfers["rewind"]
    assert run.finished_levels() == list(range(TICKET_ROUNDS + 1))  # the loop checks something
    for level in run.finished_levels():
        expected = expected_start_digest(run, tiny_tickets.theta("k"),
                                   tiny_tickets.mask(level))
        assert run.metrics(level)["start_digest"] == expected, level


def test_init_final_starts_from_theta_i(tiny_tickets, transfers):
    run = transfers["final"]
    assert run.finished_levels() == list(range(TICKET_ROUNDS + 1))
    for level in run.finished_levels():
        expected = expected_start_digest(run, tiny_tickets.theta_i(level),
                                   tiny_tickets.mask(level))
        assert run.metrics(level)["start_digest"] == expected, level


def test_reinit_changes_the_weights_but_not_the_mask(tiny_tickets, transfers):
    run, rewind = transfers["reinit"], transfers["rewind"]
    record = run.record()
    fresh = architecture.build_target_model(
        dataclasses.replace(record.model, seed=protocol.reinit_seed(
            record.model.seed, record.settings[settings.Training].seed)), 4, head_seed=0)[0]
    theta_fresh = weights.snapshot(fresh)
    theta_0, theta_k = tiny_tickets.theta("0"), tiny_tickets.theta("k")
    kernel = next(iter(tiny_tickets.mask(0)))
    assert not np.array_equal(theta_fresh[kernel], theta_0[kernel])
    assert run.finished_levels() == list(range(TICKET_ROUNDS + 1))
    for level in run.finished_levels():
        mask = tiny_tickets.mask(level)
        metrics = run.metrics(level)
        assert metrics["mask_digest"] == weights.digest(mask)
        assert metrics["start_digest"] == expected_start_digest(run, theta_fresh, mask)
        for body in (theta_0, theta_k):
            assert metrics["start_digest"] != expected_start_digest(run, body, mask)
        tuned = run.weights(level)
        assert not np.array_equal(tuned[kernel], rewind.weights(level)[kernel])
        weights.check_arrays_hold_masks(tuned, mask)


def _masks_of(run, level, ticket_mask):
    tuned = run.weights(level)
    return {p: tuned[p.rsplit("/", 1)[0] + "/mask"] for p in ticket_mask}


def test_random_pruning_keeps_each_layers_count_and_starts_from_theta_k(tiny_tickets,
                                                                        transfers):
    run, seed = transfers["random"], int(RECIPE[-1].split("=")[1])
    theta_k = tiny_tickets.theta("k")
    assert run.finished_levels() == list(range(TICKET_ROUNDS + 1))
    for level in run.finished_levels():
        ticket = tiny_tickets.mask(level)
        assert ticket
        drawn = _masks_of(run, level, ticket)
        tuned = run.weights(level)
        for path, m in ticket.items():
            assert drawn[path].sum() == m.sum(), (level, path)
            assert np.all(tuned[path][drawn[path] == 0] == 0)
        if level > 0:  # level 0 is dense: its only "random" mask is all ones
            assert all(not np.array_equal(drawn[p], ticket[p]) for p in ticket)
            other_seed = protocol.condition_mask("random", level, tiny_tickets, seed + 1)
            assert weights.digest(other_seed) != weights.digest(drawn)
        metrics = run.metrics(level)
        assert metrics["mask_digest"] == weights.digest(drawn)
        assert metrics["ticket_mask_digest"] == weights.digest(ticket)
        # The draw is the one the seeds fix, and the start is r_L ⊙ θ_k bit for bit.
        assert weights.digest(protocol.condition_mask("random", level, tiny_tickets,
                                                      seed)) == metrics["mask_digest"]
        assert metrics["start_digest"] == expected_start_digest(run, theta_k, drawn)


def test_random_pruning_with_fresh_weights_differs_from_random_pruning_only_in_weights(
        tiny_tickets, transfers):
    run, random = transfers["random_reinit"], transfers["random"]
    record = run.record()
    fresh = weights.snapshot(architecture.build_target_model(
        dataclasses.replace(record.model, seed=protocol.reinit_seed(
            record.model.seed, record.settings[settings.Training].seed)), 4, head_seed=0)[0])
    assert run.finished_levels() == list(range(TICKET_ROUNDS + 1))
    for level in run.finished_levels():
        ticket = tiny_tickets.mask(level)
        drawn = _masks_of(run, level, ticket)
        assert run.metrics(level)["mask_digest"] == random.metrics(level)["mask_digest"]
        assert run.metrics(level)["start_digest"] == expected_start_digest(run, fresh, drawn)


def test_a_random_pruning_rerun_skips_its_finished_levels(tiny_tickets, transfers, absl_log):
    run = transfers["random"]
    before = {lvl: os.stat(run.level_file(lvl, "weights.npz")).st_mtime_ns
              for lvl in run.finished_levels()}
    _transfer_here(tiny_tickets.path, run.path, "--random_mask")
    assert "level 2 (random): finished already, skipping" in absl_log()
    assert {lvl: os.stat(run.level_file(lvl, "weights.npz")).st_mtime_ns
            for lvl in before} == before


def test_scratch_baseline_is_dense_from_theta_0(tiny_tickets, transfers):
    run = transfers["scratch"]
    assert run.finished_levels() == [0]
    metrics = run.metrics(0)
    assert metrics["condition"] == "scratch"
    assert metrics["density"]["density"] == 1.0
    tuned = run.weights(0)
    ones = {path: np.ones_like(m) for path, m in tiny_tickets.mask(0).items()}
    assert all(np.all(tuned[p.rsplit("/", 1)[0] + "/mask"] == 1) for p in ones)
    assert metrics["start_digest"] == expected_start_digest(run, tiny_tickets.theta("0"), ones)


def test_config_records_the_ticket_run_and_condition(tiny_tickets, transfers):
    configs = {c: r.config() for c, r in transfers.items()}
    assert {c: cfg["condition"] for c, cfg in configs.items()} == {c: c for c in configs}
    assert len({cfg["hparams_hash"] for cfg in configs.values()}) == 6
    for cfg in configs.values():
        assert cfg["kind"] == "transfer"
        assert cfg["tickets"]["hparams_hash"] == tiny_tickets.config()["hparams_hash"]
        assert cfg["tickets"]["source"] == "fashion_mnist"
        assert cfg["dataset"]["num_classes"] == 4
        assert cfg["hparams"]["model"] == "lenet_300_100"  # taken from the ticket
        assert cfg["hparams"]["image_size"] == 16


def test_rerun_skips_finished_levels(tiny_tickets, transfers, absl_log):
    run = transfers["rewind"]
    before = {lvl: os.stat(run.level_file(lvl, "weights.npz")).st_mtime_ns
              for lvl in run.finished_levels()}
    _transfer_here(tiny_tickets.path, run.path)
    assert "level 2 (rewind): finished already, skipping" in absl_log()
    after = {lvl: os.stat(run.level_file(lvl, "weights.npz")).st_mtime_ns for lvl in before}
    assert after == before


def test_levels_subset(tiny_tickets, tmp_path):
    run = _transfer_here(tiny_tickets.path, tmp_path / "subset", "--levels=2", "--max_epochs=1")
    assert run.finished_levels() == [2]


def test_a_source_dataset_is_a_target_too(tiny_tickets, tiny_fashion_dir, tmp_path):
    run = _transfer_here(tiny_tickets.path, tmp_path / "fm", "--levels=1", "--max_epochs=1",
                         "--train_fraction=1", f"--data_dir={tiny_fashion_dir}",
                         target="fashion_mnist")
    assert run.weights(1)["head/kernel"].shape == (100, 10)


# ---- bad input: one line, exit status 1, nothing written ------------------------------

def _refused(proc, out, *needles):
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("transfer: error:"), last
    for needle in needles:
        assert needle in last, last
    assert not os.path.exists(out)


def _copy_run(run, destination):
    shutil.copytree(run.path, destination)
    return str(destination)


def test_ticket_of_another_model_is_refused(tiny_tickets, tmp_path):
    out = str(tmp_path / "never")
    _refused(_transfer(tiny_tickets.path, out, "--model=conv4"), out, "--model=conv4",
             "lenet_300_100")
    _refused(_transfer(tiny_tickets.path, out, "--image_size=24"), out, "image_size")


def test_ticket_whose_weights_do_not_fit_is_refused(tiny_tickets, tmp_path):
    # A run directory whose arrays were made at another input size than its config says.
    copy = _copy_run(tiny_tickets, tmp_path / "tampered")
    config_path = os.path.join(copy, "config.json")
    config = json.load(open(config_path))
    config["settings"]["model"]["image_size"] = 24
    artifacts.write_json(config_path, config)
    out = str(tmp_path / "never")
    assert "shape" in refused_in_process("transfer", out, f"--tickets={copy}",
                                         f"--target={TARGET}", *RECIPE)


def test_ticket_directory_without_levels_is_refused(tiny_tickets, tmp_path):
    empty = tmp_path / "no_levels"
    empty.mkdir()
    shutil.copy(tiny_tickets.config_path, empty / "config.json")
    out = str(tmp_path / "never")
    _refused(_transfer(str(empty), out), out, "no finished levels")
    _refused(_transfer(str(tmp_path / "absent"), out), out, "no such directory")
    _refused(_transfer(str(tmp_path), out), out, "no config.json")


@pytest.mark.parametrize("levels,needle", [("0,7", "7"), ("-1", "-1"), ("x", "integers")])
def test_levels_outside_the_run_are_refused(tiny_tickets, tmp_path, levels, needle):
    out = str(tmp_path / "never")
    _refused(_transfer(tiny_tickets.path, out, f"--levels={levels}"), out, needle)


@pytest.mark.parametrize("flags,needle", [(["--reinit", "--init=final"], "--reinit"),
                                          (["--scratch", "--reinit"], "--scratch"),
                                          (["--scratch", "--levels=1"], "--levels")])
def test_contradictory_flags_are_refused(tiny_tickets, tmp_path, flags, needle):
    out = str(tmp_path / "never")
    _refused(_transfer(tiny_tickets.path, out, *flags), out, needle)


def test_missing_tickets_flag_is_refused(tmp_path):
    out = str(tmp_path / "never")
    _refused(_transfer(None, out), out, "--tickets")


@needs_histology
def test_corrupt_target_image_is_refused_by_name(tiny_tickets, tmp_path):
    target = tmp_path / "target"
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            source = os.path.join(HISTOLOGY, split, "muscle" if cls == "a" else "immune_leukocyte")
            os.makedirs(target / split / cls)
            for name in sorted(os.listdir(source))[:6]:
                shutil.copy(os.path.join(source, name), target / split / cls / name)
    (target / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = str(tmp_path / "never")
    _refused(_transfer(tiny_tickets.path, out, "--train_fraction=1", target=str(target)), out,
             "broken.png")


@needs_histology
def test_transfer_to_the_real_histology_target(tiny_tickets, tmp_path):
    run = _transfer_here(tiny_tickets.path, tmp_path / "histology", "--levels=1",
                         "--max_epochs=1", "--train_fraction=0.1", target=HISTOLOGY)
    assert run.finished_levels() == [1]
    assert run.weights(1)["head/kernel"].shape == (100, 4)
    np.testing.assert_array_equal(run.weights(1)["fc1/mask"], tiny_tickets.mask(1)["fc1/kernel"])


# ---- the fine-tuning recipe is the ticket run's unless given -------------------------

def _bare_flags(tickets, output_dir, target=None):
    """A transfer naming no recipe setting (only --deterministic, which is not one)."""
    return [f"--tickets={tickets}", f"--target={target or TARGET}", f"--output_dir={output_dir}",
            "--levels=1", "--deterministic"]


def _bare_transfer(tickets, output_dir, *extra, target=None):
    """A transfer naming no recipe setting, in this process (conftest.in_process)."""
    return in_process("transfer", *_bare_flags(tickets, output_dir, target), *extra)


def test_a_transfer_trains_with_the_ticket_runs_recipe_by_default(tiny_tickets, tmp_path,
                                                                  absl_log):
    out = str(tmp_path / "inherited")
    _bare_transfer(tiny_tickets.path, out)
    assert "differs from the ticket run's" not in absl_log()
    config, ticket = lottery.TransferRun(out).config(), tiny_tickets.config()
    for name in ("batch_size", "learning_rate", "max_epochs", "patience", "seed",
                 "weight_decay", "momentum", "lr_boundaries", "bn_momentum"):
        assert config["hparams"][name] == ticket["hparams"][name], name
    # The tiny tickets' recipe is not the defaults': it was taken, not defaulted.
    assert (config["hparams"]["learning_rate"], config["hparams"]["seed"],
            config["hparams"]["batch_size"]) == (0.01, 3, 32)
    assert config["recipe_overrides"] == {}
    assert lottery.TransferRun(out).metrics(1)["epochs"] <= 3  # the ticket's max_epochs


def test_a_recipe_setting_given_wins_is_recorded_and_announced(tiny_tickets, tmp_path,
                                                               absl_log):
    out = str(tmp_path / "overridden")
    _bare_transfer(tiny_tickets.path, out, "--learning_rate=0.02", "--max_epochs=1")
    notice = [line for line in absl_log().splitlines()
              if "differs from the ticket run's" in line]
    assert len(notice) == 1
    assert "learning_rate 0.02 (tickets: 0.01)" in notice[0]
    assert "max_epochs 1 (tickets: 3)" in notice[0]
    config = lottery.TransferRun(out).config()
    assert config["recipe_overrides"] == {"learning_rate": {"tickets": 0.01, "transfer": 0.02},
                                          "max_epochs": {"tickets": 3, "transfer": 1}}
    assert config["hparams"]["learning_rate"] == 0.02
    assert config["hparams"]["batch_size"] == 32  # not given: still the ticket's
    assert lottery.TransferRun(out).metrics(1)["epochs"] == 1


def test_tickets_recorded_before_0_4_are_refused_in_one_line(tiny_tickets, tmp_path):
    # A record written by lth_keras 0.3 (its transfers drew their heads from θ_0's stream):
    # refused, saying which version wrote it and what to do; nothing written.
    old = tmp_path / "tickets_0.3"
    shutil.copytree(tiny_tickets.path, old)
    config = json.loads((old / "config.json").read_text())
    config["environment"]["lth_keras"] = "0.3.1"
    (old / "config.json").write_text(json.dumps(config))
    out = str(tmp_path / "never")
    message = refused_in_process("transfer", out, *_bare_flags(str(old), out))
    assert message == (f"{old} was written by lth_keras 0.3.1; this version reads runs of 0.4 "
                       "and later: move it away or run again into another --output_dir")


# ---- tickets of another input pipeline ------------------------------------------------

@pytest.fixture(scope="module")
def gray_tickets(tiny_fashion_dir, tmp_path_factory):
    """Tiny tickets on the stored 28 px, 1-channel pixels (no crop)."""
    from conftest import find_tiny_tickets_here

    return find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path_factory.mktemp("gray") / "tickets"),
                                  "--image_size=28", "--crop=none", "--channels=own",
                                  "--rounds=1", "--max_epochs=2")


def test_one_channel_tickets_transfer_to_grayscale_and_refuse_colour(gray_tickets,
                                                                     tiny_fashion_dir, tmp_path):
    assert gray_tickets.theta("0")["fc1/kernel"].shape[0] == 28 * 28  # not 3 * 28 * 28
    config = in_process("transfer", *_bare_flags(gray_tickets.path, tmp_path / "gray",
                                                 target="fashion_mnist"),
                        f"--data_dir={tiny_fashion_dir}").config()
    assert config["input"]["channels"] == 1 and config["input"]["crop"] == "none"
    assert config["hparams"]["crop"] == "none" and config["hparams"]["channels"] == "own"
    never = str(tmp_path / "colour")
    assert "3-channel images but the model takes 1" in refused_in_process(
        "transfer", never, f"--tickets={gray_tickets.path}", f"--target={TARGET}", "--levels=1",
        "--deterministic")
    _refused(run_binary("lth_keras.transfer", *_bare_flags(gray_tickets.path, never),
                        "--crop=random"), never, "--crop=random but the tickets",
             "are for crop none")


def test_a_transfer_of_the_old_head_rule_is_not_resumed(tiny_tickets, transfers, tmp_path):
    from lth_keras import settings

    old = _copy_run(transfers["rewind"], tmp_path / "old")
    config = artifacts.read_json(os.path.join(old, "config.json"))
    for record in (config["identity"], config["hparams"]):
        del record["head"]  # as lth_keras <= 0.3 wrote it
    config["hparams_hash"] = settings.identity_hash(config["identity"])
    artifacts.write_json(os.path.join(old, "config.json"), config)
    before = sorted(os.listdir(os.path.join(old, "levels")))
    with pytest.raises(UserError, match="a head drawn by an earlier rule"):
        _transfer_here(tiny_tickets.path, old)
    assert sorted(os.listdir(os.path.join(old, "levels"))) == before
