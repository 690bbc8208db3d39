"""Options typed on the command line mean what they say: boolean switches, misspelled keys and
bad values (one line naming the option, never a traceback), through `monai.bundle run` and the
scripts."""

from __future__ import annotations

import pytest

from bundle.workflow.options import OptionError, flag

TRUE_WORDS = ("true", "True", "yes", "on", "1")
FALSE_WORDS = ("false", "False", "no", "off", "0")


@pytest.mark.parametrize("value", [True, 1, 1.0, *TRUE_WORDS])
def test_true_words(value):
    assert flag(value) is True


@pytest.mark.parametrize("value", [False, 0, None, *FALSE_WORDS])
def test_false_words(value):
    assert flag(value) is False


@pytest.mark.parametrize("value", ["maybe", "", 2, -1, "none", 0.5])
def test_other_values_are_refused_naming_the_option(value):
    with pytest.raises(OptionError, match="--learn_sigma must be true or false"):
        flag(value, "learn_sigma")
