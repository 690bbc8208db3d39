"""Boolean switches typed on the command line mean what they say."""

import pytest

from bundle.workflow.options import flag


@pytest.mark.parametrize("value", [True, 1, "true", "True", "yes", "on", "1"])
def test_true_words(value):
    assert flag(value) is True


@pytest.mark.parametrize("value", [False, 0, None, "false", "False", "no", "off", "0", ""])
def test_false_words(value):
    assert flag(value) is False


def test_other_words_are_refused():
    with pytest.raises(ValueError, match="boolean"):
        flag("maybe")
