"""selection.policy smallest-not-worse in the config schema: its knobs and the bad input it refuses up front."""

import pytest

from orchestrator.config import ConfigError
from tests.conftest import tiny_config


def test_smallest_not_worse_takes_margin_and_confidence():
    s = tiny_config("selection.policy=smallest-not-worse", "selection.margin=0.05", "selection.confidence=0.9").selection
    assert (s.policy, s.margin, s.confidence) == ("smallest-not-worse", 0.05, 0.9)


@pytest.mark.parametrize("override, field", [
    ("selection.metric=eval_perplexity", "selection.metric"),
    ("selection.confidence=1.0", "selection.confidence"),
    ("selection.margin=-0.1", "selection.margin"),
])
def test_bad_smallest_not_worse_settings_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config("selection.policy=smallest-not-worse", override)
