"""The documentation against the code and the files it quotes: the generated reference is
what tools/reference_docs.py writes now."""

import os
import sys

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import reference_docs  # noqa: E402


def test_the_generated_reference_is_up_to_date():
    for name, text in reference_docs.generated().items():
        path = os.path.join(REPO, "docs", "reference", name)
        assert os.path.exists(path), f"docs/reference/{name} is missing: run " \
                                     "python tools/reference_docs.py"
        with open(path) as f:
            assert f.read() == text, f"docs/reference/{name} is stale: run " \
                                     "python tools/reference_docs.py"


def test_the_reference_names_every_flag_and_preset():
    from lth_keras import settings

    text = reference_docs.flags_md()
    names = [f.name for group in settings.ALL_GROUPS for f in settings.dataclasses.fields(group)]
    assert names and all(f"`--{name}`" in text for name in names)
    presets = [n for n in os.listdir(os.path.join(REPO, "flags")) if n.endswith(".cfg")]
    assert presets and all(f"`flags/{n}`" in reference_docs.presets_md() for n in presets)
