"""Run records: what a run directory was made with, and refusing to mix runs.

config.json holds every flag, the hash of the flags that define the result,
package versions, the dataset summary (with its fingerprint) and the input
normalisation. A re-run into the same directory must have the same hash and
the same data fingerprint, or it is refused.
"""

import hashlib
import json
import os
import sys

from absl import flags

from lth_keras import artifacts

FLAGS = flags.FLAGS
OUTPUT_ROOT = "outputs"


def default_dir(kind, name):
    return os.path.join(OUTPUT_ROOT, kind, name)


def hparams_hash(values):
    """A short, stable hash of {flag: value}."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def our_flags():
    """Every flag of lth_keras and of the running binary, with its value."""
    ours = {}
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        if "lth_keras" in module or module == sys.argv[0]:
            ours.update({f.name: f.value for f in module_flags})
    return dict(sorted(ours.items()))


def start(config_path, *, kind, flag_names, dataset, pipeline, strategy, extra=None):
    """Writes config.json for a new run, or checks that a re-run matches it."""
    from lth_keras.cli import UserError

    hparams = {name: FLAGS[name].value for name in flag_names}
    record = {
        "kind": kind,
        "hparams": hparams,
        "hparams_hash": hparams_hash(hparams),
        "flags": our_flags(),
        "dataset": dataset.summary(),
        "input": pipeline.describe(),
        "replicas": strategy.num_replicas_in_sync,
        "environment": artifacts.environment_record(),
        **(extra or {}),
    }
    if os.path.exists(config_path):
        stored = artifacts.read_json(config_path)
        if stored.get("hparams_hash") != record["hparams_hash"]:
            changed = sorted(k for k in hparams if stored["hparams"].get(k) != hparams[k])
            raise UserError(
                f"{os.path.dirname(config_path)} holds a run with other settings "
                f"(differs in: {', '.join(changed) or 'flag set'}); choose another --output_dir")
        if stored["dataset"]["fingerprint"] != record["dataset"]["fingerprint"]:
            raise UserError(f"{os.path.dirname(config_path)} was made from other data "
                            "(dataset fingerprint differs); choose another --output_dir")
        return stored
    artifacts.write_json(config_path, record)
    return record
