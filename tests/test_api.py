"""The Python API: the README's notebook example, and transfers that keep apart."""

import os
import re
import subprocess
import sys

import pytest

from conftest import (HISTOLOGY, REPO, TINY_TICKETS, find_tiny_tickets_here, in_process,
                      needs_histology)
from lth_keras import lottery


def readme_example():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    match = re.search(r"<!-- notebook-example:[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no notebook example"
    return match.group(1)


# The README's code as written, with the tiny sizes of the tests put into every call.
HARNESS = """
import sys
import lth_keras.api as api

_TINY, _TRANSFER_TINY, _TARGET = {tiny!r}, {transfer_tiny!r}, {target!r}
_find_tickets, _transfer = api.find_tickets, api.transfer
api.find_tickets = lambda **kw: _find_tickets(**{{**kw, **_TINY}})
api.transfer = lambda **kw: _transfer(**{{**kw, **_TRANSFER_TINY, "target": _TARGET}})
exec(compile(open(sys.argv[1]).read(), "README.md", "exec"), {{"__name__": "__main__"}})
"""


@pytest.mark.slow
@needs_histology
def test_the_readme_notebook_example_runs(tiny_fashion_dir, tmp_path):
    example = tmp_path / "example.py"
    example.write_text(readme_example())
    common = {"data_dir": tiny_fashion_dir, "image_size": 16, "batch_size": 32,
              "checkpoint_every": 0, "deterministic": True, "verbose": False}
    tiny = {**common, "model": "lenet_300_100", "rounds": 2, "max_epochs": 2,
            "rewind_epoch": 1, "learning_rate": 0.01, "train_fraction": 1.0,
            "val_fraction": 0.1}
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS.format(tiny=tiny, target=HISTOLOGY,
                                      transfer_tiny={**common, "max_epochs": 1}))
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, str(harness), str(example)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "fig3.png").stat().st_size > 0
    tickets = tmp_path / "outputs" / "tickets" / "fashion_mnist-lenet_300_100-16px-seed0"
    assert (tickets / "levels" / "level_02" / "metrics.json").exists()
    transfers = sorted(p.name for p in (tmp_path / "outputs" / "transfer").glob("*/*"))
    assert transfers == ["histology_nuclei-reinit-seed0", "histology_nuclei-rewind-seed0"]
    assert "'level': 2" in proc.stdout  # the summary row it printed


@pytest.mark.slow
def test_two_ticket_runs_of_the_same_name_transfer_to_two_directories(tiny_tickets,
                                                                     tiny_fashion_dir,
                                                                     tmp_path, monkeypatch):
    # Two different ticket runs, both called "tickets", each transferred with the default
    # run directory: before, the second resumed (and so skipped) the first one's.
    other = tmp_path / "b" / "tickets"
    find_tiny_tickets_here(tiny_fashion_dir, str(other), "--seed=4", "--rounds=0",
                           "--max_epochs=1", "--rewind_epoch=0")
    made = []
    monkeypatch.chdir(tmp_path)  # the default run directory is under ./outputs
    for ticket_dir in (tiny_tickets.path, str(other)):
        made.append(in_process("transfer", f"--tickets={ticket_dir}", "--target=fashion_mnist",
                               f"--data_dir={tiny_fashion_dir}", "--levels=0", "--max_epochs=1",
                               "--batch_size=32", "--checkpoint_every=0", "--deterministic"))
    assert made[0].path != made[1].path
    for run, ticket_dir in zip(made, (tiny_tickets.path, str(other))):
        assert os.path.realpath(run.path).startswith(os.path.realpath(tmp_path / "outputs"))
        assert run.config()["tickets"]["path"] == os.path.abspath(ticket_dir)
        assert run.finished_levels() == [0]


def test_settings_errors_reach_python_as_one_line(tmp_path):
    import lth_keras
    from lth_keras.settings import SettingsError

    with pytest.raises(SettingsError, match="--prune_rate must be in"):
        lth_keras.find_tickets(source="fashion_mnist", prune_rate=2.0,
                               output_dir=str(tmp_path / "never"))
    with pytest.raises(SettingsError, match="unknown option"):
        lth_keras.find_tickets(source="fashion_mnist", prune_rat=0.5)
    with pytest.raises(SettingsError, match="preset 'nope'"):
        lth_keras.find_tickets(preset="nope")
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_two_runs_in_one_process_equal_runs_in_fresh_processes(tiny_tickets, tiny_fashion_dir,
                                                               tmp_path):
    # A notebook calls the API again and again: the process's engine runtime is reused,
    # and its second run must be the one a fresh process makes (tiny_tickets: same θ_0
    # keys and values, same numbers), so that the command line resumes it as its own.
    tiny = {a[2:].split("=")[0]: a[2:].split("=")[1] if "=" in a else True
            for a in TINY_TICKETS}
    script = (
        "import sys, lth_keras\n"
        "common = dict(source='fashion_mnist', data_dir=sys.argv[1], verbose=False)\n"
        "lth_keras.find_tickets(**common, output_dir=sys.argv[2] + '/first', seed=0,\n"
        "                       model='lenet_300_100', image_size=16, rounds=0, max_epochs=1,\n"
        "                       rewind_epoch=0, deterministic=True)\n"
        f"lth_keras.find_tickets(**common, output_dir=sys.argv[2] + '/second', **{tiny!r})\n"
        "try:\n"
        "    lth_keras.find_tickets(**common, output_dir=sys.argv[2] + '/never',\n"
        "                           strategy='mirrored', cpu_devices=2)\n"
        "except Exception as e:\n"
        "    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", script, tiny_fashion_dir, str(tmp_path)],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: this process already trains with other devices" in proc.stdout
    assert not (tmp_path / "never").exists()

    second = lottery.TicketRun(str(tmp_path / "second"))
    assert second.config()["hparams_hash"] == tiny_tickets.config()["hparams_hash"]
    for level in tiny_tickets.finished_levels():
        assert second.metrics(level)["test"] == tiny_tickets.metrics(level)["test"]
    theta_a, theta_b = second.theta("0"), tiny_tickets.theta("0")
    assert sorted(theta_a) == sorted(theta_b)
    assert all((theta_a[k] == theta_b[k]).all() for k in theta_a)
    # Its command-line flags resume the notebook's run as their own: nothing left to train.
    last = second.level_file(second.finished_levels()[-1], "theta_i.npz")
    stamp = os.stat(last).st_mtime_ns
    find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path / "second"))
    assert os.stat(last).st_mtime_ns == stamp


def test_the_grid_lists_from_python_in_any_directory(tmp_path, monkeypatch, capsys):
    import lth_keras

    monkeypatch.chdir(tmp_path)  # a notebook's directory, not the project's
    rows = lth_keras.experiment("quick_grid", list_only=True, seeds=[0])
    assert len(rows) == 7 and {r["state"] for r in rows} == {"pending"}
    assert rows[0] == {"run": "tickets/fashion_mnist-seed0", "binary": "find_tickets",
                       "state": "pending", "task": 0, "needs": []}
    assert "7 runs: 0 done, 0 partial, 7 pending" in capsys.readouterr().out


def test_a_setting_named_at_its_default_counts_as_given(tiny_tickets, tiny_fashion_dir,
                                                        tmp_path):
    # The tickets are LeNet's; resnet20 is the default model. Named, by an option or by a
    # preset, it is refused as any other model is, before anything is loaded or written.
    import lth_keras
    from lth_keras.settings import SettingsError

    common = {"tickets": tiny_tickets, "target": "fashion_mnist", "data_dir": tiny_fashion_dir,
              "output_dir": str(tmp_path / "never")}
    message = "--model=resnet20 but the tickets in .* are for model lenet_300_100"
    with pytest.raises(SettingsError, match=message):
        lth_keras.transfer(model="resnet20", **common)
    preset = tmp_path / "preset.cfg"
    preset.write_text("--model=resnet20\n")
    with pytest.raises(SettingsError, match=message):
        lth_keras.transfer(preset=str(preset), **common)
    assert not (tmp_path / "never").exists()


def test_a_recipe_setting_named_at_its_default_is_the_transfers(tiny_tickets):
    # max_epochs defaults to 100 and the tickets trained with 3: named at 100, the transfer
    # trains with 100 (a recorded override); not named, with the ticket's 3.
    from lth_keras import settings
    from lth_keras.lottery import fine_tuning

    for options, epochs, overrides in (({"max_epochs": 100}, 100, {"max_epochs"}),
                                       ({}, 3, set())):
        groups, given = settings.resolve(settings.TRANSFER, options={
            "tickets": tiny_tickets.path, "target": "fashion_mnist", **options})
        _, _, groups, found = fine_tuning._ticket_run(groups, given)
        assert groups[settings.Training].max_epochs == epochs
        assert set(found) == overrides
