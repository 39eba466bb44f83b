"""errors.first_line: how every foreign error is cut to the one line a user reads."""

import pytest

from lepton_lab.errors import first_line


def test_the_first_line_of_a_long_message():
    e = ValueError("\n  shapes (3,4) and (5,) do not align  \nTraceback (most recent call last):\n  ...")
    assert first_line(e) == "shapes (3,4) and (5,) do not align"
    assert first_line(e, named=True) == "ValueError: shapes (3,4) and (5,) do not align"


@pytest.mark.parametrize("error", [RuntimeError(), RuntimeError(""), RuntimeError("  \n \n")])
def test_a_message_that_says_nothing_gives_the_type(error):
    assert first_line(error) == "RuntimeError"
    assert first_line(error, named=True) == "RuntimeError"


def test_cut_to_the_limit():
    assert first_line(OSError("x" * 500)) == "x" * 200
    assert first_line(OSError("x" * 500), named=True, limit=10) == "OSError: " + "x" * 10


def test_an_error_whose_text_is_not_a_string_argument():
    assert first_line(KeyError("tls://127.0.0.1:1")) == "'tls://127.0.0.1:1'"
