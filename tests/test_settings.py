"""Settings: one definition per option, stable run identities, old records still resume."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from absl import flags

from conftest import (REPO, TINY_TICKETS, in_process, kill_find_tickets_mid_level,
                      make_colour_folder, run_binary)
from lth_keras import artifacts, lottery, settings
from lth_keras.errors import UserError
from lth_keras.settings import Pruning, Training

PRESET = {name: os.path.join(REPO, "flags", f"{name}.cfg")
          for name in ("quick", "paper", "quick_transfer", "paper_transfer")}


def _hash(groups, args, **extra):
    return settings.identity_hash(settings.identity(settings.from_arguments(groups, args)[0],
                                                    "fingerprint", **extra))


# Pinned: a change here renames every run directory's identity, so every existing run
# would be refused on resume. Change them only with IDENTITY_VERSION and a migration.
PINNED = {
    "find_tickets defaults": ((settings.FIND_TICKETS, []), {}, "4a9d50ac4dd1"),
    "quick": ((settings.FIND_TICKETS, ["--flagfile=" + PRESET["quick"]]), {}, "fd2041e0be5d"),
    "paper": ((settings.FIND_TICKETS, ["--flagfile=" + PRESET["paper"]]), {}, "ff0ae6319a2d"),
    "quick, seed 1": ((settings.FIND_TICKETS, ["--flagfile=" + PRESET["quick"], "--seed=1"]),
                      {}, "82836c448f32"),
    "paper, layer-wise": ((settings.FIND_TICKETS, ["--flagfile=" + PRESET["paper"],
                                                   "--pruning=layerwise"]), {}, "685bb80e1085"),
    "lr boundaries": ((settings.FIND_TICKETS, ["--lr_boundaries=30,40"]), {}, "a41e7ed1d185"),
    "quick_transfer, rewind": ((settings.TRANSFER, ["--flagfile=" + PRESET["quick_transfer"]]),
                               {"condition": "rewind", "tickets_hash": "tickets"},
                               "7dee4e16d32a"),
    "paper_transfer, reinit": ((settings.TRANSFER, ["--flagfile=" + PRESET["paper_transfer"]]),
                               {"condition": "reinit", "tickets_hash": "tickets"},
                               "c8799b0ee494"),
    "paper_transfer, scratch": ((settings.TRANSFER, ["--flagfile=" + PRESET["paper_transfer"]]),
                                {"condition": "scratch", "tickets_hash": None}, "dc589a491478"),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_run_hashes_are_pinned(case):
    (groups, args), extra, expected = PINNED[case]
    assert _hash(groups, args, **extra) == expected


def test_what_does_not_define_the_result_leaves_the_hash_alone():
    quick = ["--flagfile=" + PRESET["quick"]]
    base = _hash(settings.FIND_TICKETS, quick)
    for other in ("--rounds=9", "--strategy=mirrored", "--checkpoint_every=5", "--output_dir=x",
                  "--source=/somewhere/else", "--data_dir=/data", "--deterministic"):
        assert _hash(settings.FIND_TICKETS, quick + [other]) == base, other
    # Restating a default is no change either: presets hold only what differs.
    assert _hash(settings.FIND_TICKETS, quick + ["--prune_rate=0.2", "--batch_size=64"]) == base
    assert _hash(settings.FIND_TICKETS, quick + ["--prune_rate=0.3"]) != base
    assert _hash(settings.FIND_TICKETS, quick, ) != settings.identity_hash(settings.identity(
        settings.from_arguments(settings.FIND_TICKETS, quick)[0], "other data"))


def test_an_option_added_with_its_default_leaves_the_hashes_unchanged():
    Extended = dataclasses.make_dataclass(
        "Training", [("label_smoothing", float,
                      settings.option(0.0, "A new option of the recipe."))],
        bases=(Training,), frozen=True)
    for name, ((groups, args), extra, expected) in PINNED.items():
        parsed = settings.from_arguments(groups, args)[0]
        parsed[Training] = Extended(**dataclasses.asdict(parsed[Training]))
        assert settings.identity_hash(settings.identity(parsed, "fingerprint", **extra)) \
            == expected, name
        parsed[Training] = Extended(**{**dataclasses.asdict(parsed[Training]),
                                       "label_smoothing": 0.1})
        assert settings.identity_hash(settings.identity(parsed, "fingerprint", **extra)) \
            != expected, name


def test_every_flag_comes_from_one_field():
    # The flags the binaries define are exactly the settings' fields, with their defaults.
    values = flags.FlagValues()
    settings.define_flags(settings.FIND_TICKETS + (settings.Transfer, settings.Grid), values)
    fields = {f.name: f for group in settings.FIND_TICKETS + (settings.Transfer, settings.Grid)
              for f in dataclasses.fields(group)}
    assert set(values) == set(fields)
    for name, f in fields.items():
        default = values[name].default
        expected = [str(v) for v in f.default] if isinstance(f.default, tuple) else f.default
        assert default == expected, name
        assert values[name].help.endswith(f.metadata["help"])


def test_presets_hold_only_what_differs_from_the_defaults():
    for path in PRESET.values():
        with open(path) as f:
            lines = [line.strip() for line in f if line.startswith("--")]
        groups = settings.TRANSFER if "transfer" in path else settings.FIND_TICKETS
        defaults = {f.name: f.default for g in groups for f in dataclasses.fields(g)}
        for line in lines:
            name = line[2:].split("=")[0]
            parsed = settings.from_arguments(groups, [line])[0]
            value = next(getattr(obj, name) for obj in parsed.values() if hasattr(obj, name))
            assert value != defaults[name], f"{path} restates the default {line}"


def test_bad_settings_are_one_line_errors():
    with pytest.raises(settings.SettingsError, match="--lr_boundaries must be a comma list"):
        settings.from_arguments(settings.FIND_TICKETS, ["--lr_boundaries=a,b"])[0]
    with pytest.raises(settings.SettingsError, match="unknown option"):
        settings.replaced(settings.from_arguments(settings.FIND_TICKETS)[0], {"learning_rat": 0.1})
    with pytest.raises(settings.SettingsError, match="--prune_rate"):
        Pruning(prune_rate=1.5).check(Training())
    for conflict, message in (("--scratch", "--scratch and --random_mask exclude"),
                              ("--init=final", "--random_mask starts from θ_k")):
        with pytest.raises(settings.SettingsError, match=message):
            settings.check(settings.from_arguments(settings.TRANSFER, [
                "--target=x", "--tickets=t", "--random_mask", conflict])[0])


def test_the_transfer_condition_is_what_its_flags_name():
    def condition(*args):
        return settings.from_arguments(settings.TRANSFER, ["--target=x", *args])[0][settings.Transfer].condition

    assert [condition(), condition("--init=final"), condition("--reinit"),
            condition("--random_mask"), condition("--random_mask", "--reinit"),
            condition("--scratch")] == ["rewind", "final", "reinit", "random", "random_reinit",
                                        "scratch"]


# ---- run records ------------------------------------------------------------------------

def test_a_run_started_from_python_records_the_settings_it_trained_with(
        tiny_fashion_dir, tmp_path):
    import lth_keras

    out = str(tmp_path / "api")
    run = lth_keras.find_tickets(source="fashion_mnist", data_dir=tiny_fashion_dir,
                                 output_dir=out, model="lenet_300_100", image_size=16, rounds=1,
                                 max_epochs=2, rewind_epoch=1, batch_size=32,
                                 learning_rate=0.02, seed=5, checkpoint_every=0,
                                 deterministic=True, verbose=False)
    config = run.config()
    assert config["hparams"]["learning_rate"] == 0.02 and config["hparams"]["seed"] == 5
    assert config["settings"]["pruning"]["rounds"] == 1
    assert len(run.metrics(0)["history"]) <= 2 and [r["level"] for r in run.summary()] == [0, 1]
    assert config["identity"]["changed"]["learning_rate"] == 0.02
    # The same settings as command-line flags (parsed as the binary parses them) are the
    # same run: it is resumed, not refused.
    stamp = os.stat(os.path.join(out, "levels", "level_01", "mask.npz")).st_mtime_ns
    in_process("find_tickets", "--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}",
               f"--output_dir={out}", "--model=lenet_300_100", "--image_size=16", "--rounds=1",
               "--max_epochs=2", "--rewind_epoch=1", "--batch_size=32", "--learning_rate=0.02",
               "--seed=5", "--checkpoint_every=0", "--deterministic")
    assert lottery.TicketRun(out).config()["hparams_hash"] == config["hparams_hash"]
    assert os.stat(os.path.join(out, "levels", "level_01", "mask.npz")).st_mtime_ns == stamp


def test_a_run_written_before_0_4_is_refused_and_left_alone(tiny_tickets, tiny_fashion_dir,
                                                            tmp_path):
    # A record as lth_keras 0.2 wrote it (no identity, flags as spelled): refused in one
    # line naming the version and what to do, its files untouched.
    out = str(tmp_path / "old")
    shutil.copytree(tiny_tickets.path, out)
    path = os.path.join(out, "config.json")
    config = json.loads(open(path).read())
    old = {"kind": config["kind"], "hparams": config["hparams"], "hparams_hash": "0123456789ab",
           "flags": config["settings"]["pruning"], "dataset": config["dataset"],
           "environment": dict(config["environment"], lth_keras="0.2.0")}
    artifacts.write_json(path, old)
    stamp = os.stat(os.path.join(out, "levels", "level_01", "mask.npz")).st_mtime_ns
    with pytest.raises(UserError) as refused:
        in_process("find_tickets", "--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}",
                   f"--output_dir={out}", *TINY_TICKETS)
    assert str(refused.value) == (f"{out} was written by lth_keras 0.2.0; this version reads "
                                  "runs of 0.4 and later: move it away or run again into "
                                  "another --output_dir")
    assert os.stat(os.path.join(out, "levels", "level_01", "mask.npz")).st_mtime_ns == stamp
    assert artifacts.read_json(path) == old


@pytest.mark.slow
def test_resuming_with_more_rounds_updates_the_record_and_the_grid_sees_it(
        tiny_tickets, tiny_fashion_dir, tmp_path):
    # A grid whose ticket run is resumed with one round more, and stopped in that level:
    # its record says the new rounds, and `experiment --list` calls the run partial.
    root = tmp_path / "grid"
    out = str(root / "tickets" / "fashion_mnist-seed3")
    shutil.copytree(tiny_tickets.path, out)
    rounds = tiny_tickets.config()["settings"]["pruning"]["rounds"]
    preset = tmp_path / "tickets.cfg"
    preset.write_text("\n".join(TINY_TICKETS) + "\n")
    listing = ["lth_keras.experiment", "--list", "--sources=fashion_mnist", "--targets=x",
               "--seeds=3", "--conditions=rewind", f"--tickets_flagfile={preset}",
               f"--transfer_flagfile={preset}", f"--output_dir={root}"]
    before = run_binary(*listing)
    assert before.returncode == 0, before.stderr[-2000:]
    assert re.search(r"tickets/fashion_mnist-seed3\s+done", before.stdout), before.stdout

    kill_find_tickets_mid_level(["--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}",
                                 f"--output_dir={out}", *TINY_TICKETS,
                                 f"--rounds={rounds + 1}"], out, level=rounds + 1)
    config = lottery.TicketRun(out).config()
    assert config["settings"]["pruning"]["rounds"] == rounds + 1
    assert config["hparams_hash"] == tiny_tickets.config()["hparams_hash"]
    after = run_binary(*listing)
    assert after.returncode == 0, after.stderr[-2000:]
    assert re.search(r"tickets/fashion_mnist-seed3\s+partial", after.stdout), after.stdout


def test_the_same_folder_spelled_two_ways_is_the_same_run(tmp_path, monkeypatch):
    folder = make_colour_folder(tmp_path / "colours")
    out = str(tmp_path / "run")
    tiny = [a for a in TINY_TICKETS if not a.startswith("--rounds")] + ["--rounds=1"]
    monkeypatch.chdir(tmp_path)
    in_process("find_tickets", "--source=colours", f"--output_dir={out}", *tiny)
    stamp = os.stat(os.path.join(out, "levels", "level_01", "mask.npz")).st_mtime_ns
    monkeypatch.chdir(REPO)
    in_process("find_tickets", f"--source={os.path.abspath(folder)}", f"--output_dir={out}",
               *tiny)
    assert os.stat(os.path.join(out, "levels", "level_01", "mask.npz")).st_mtime_ns == stamp


def test_no_module_below_the_binaries_reads_the_global_flags():
    # A run started from Python must train with, record and hash its own settings: only
    # the binaries' shells (and the flag definitions) may touch absl's FLAGS.
    import ast

    shells = {"cli.py", "find_tickets.py", "transfer.py", "experiment.py", "analyze.py",
              "export.py"}
    package = os.path.join(REPO, "lth_keras")
    readers = []
    for folder, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py") or (folder == package and name in shells):
                continue
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr == "FLAGS" and not (
                        name == "settings.py"):
                    readers.append(f"{name}:{node.lineno}")
                if isinstance(node, ast.Name) and node.id == "FLAGS":
                    readers.append(f"{name}:{node.lineno}")
    assert not readers, readers


def test_the_model_names_of_the_settings_are_the_models():
    from lth_keras import models

    assert sorted(settings.MODELS) == sorted(models.BUILDERS)


def test_a_bad_setting_is_reported_before_any_framework_is_imported(tmp_path):
    # One line, exit 1, nothing written, and at once: not after TensorFlow's 5 s import.
    script = ("import sys, runpy\n"
              "sys.argv = ['find_tickets', '--prune_rate=1.5', '--output_dir=' + sys.argv[1]]\n"
              "try:\n"
              "    runpy.run_module('lth_keras.find_tickets', run_name='__main__')\n"
              "finally:\n"
              "    print('imported:', sorted(m for m in ('tensorflow', 'jax', 'keras')\n"
              "                             if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "never")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "find_tickets: error: --prune_rate must be in (0, 1)"
    assert "imported: []" in proc.stdout
    assert not (tmp_path / "never").exists()
