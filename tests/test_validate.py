"""prunec.validate: the plain argument checks every room shares. Each refusal is an
InvalidArgumentError (also TypeError and ValueError) naming the place and the argument; each
acceptance returns the normalised value. The public API's use of them is in test_bad_input.py."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from prunec.errors import InvalidArgumentError
from prunec.validate import (
    check_choice, check_positive, check_ratio, check_round_to, check_save_path, is_real,
    is_user_error, user_items,
)


def test_is_real_takes_numbers_and_refuses_booleans_and_strings():
    assert all(is_real(v) for v in (0, 1.5, np.float32(0.5), Fraction(1, 3), math.nan))
    assert not any(is_real(v) for v in (True, False, "0.5", None, 1j))


@pytest.mark.parametrize("ratio, expected", [(0, 0.0), (0.5, 0.5), (np.float64(0.25), 0.25),
                                             (Fraction(1, 4), 0.25), (0.999, 0.999)])
def test_check_ratio_returns_a_float(ratio, expected):
    value = check_ratio(ratio, "Pass")
    assert type(value) is float and value == expected


@pytest.mark.parametrize("ratio", [1, 1.0, -0.1, math.nan, math.inf, True, "0.5", None])
def test_check_ratio_refuses_naming_place_and_argument(ratio):
    with pytest.raises(InvalidArgumentError, match=r"^Where: keep_ratio must"):
        check_ratio(ratio, "Where", argument="keep_ratio")


def test_invalid_argument_is_a_type_and_a_value_error():
    for call in (lambda: check_ratio("x", "w"), lambda: check_ratio(2.0, "w")):
        with pytest.raises(TypeError):
            call()
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("round_to, expected", [(1, 1), (8, 8), (8.0, 8), (np.int64(4), 4)])
def test_check_round_to_accepts_integral_values(round_to, expected):
    value = check_round_to(round_to, "P")
    assert type(value) is int and value == expected


@pytest.mark.parametrize("round_to, says", [(0, ">= 1"), (-8, ">= 1"), (3.5, "positive integer"),
                                            (True, "positive integer"), (None, "NoneType")])
def test_check_round_to_refuses(round_to, says):
    with pytest.raises(InvalidArgumentError, match=rf"P: round_to .*{says}"):
        check_round_to(round_to, "P")


def test_check_choice_suggests_the_closest_and_lists_all():
    assert check_choice("global", ["global", "local"], "P", "scope") == "global"
    with pytest.raises(InvalidArgumentError, match=r"P: scope must be one of 'global', 'local', "
                                                   r"got 'globl'\. Did you mean 'global'\?"):
        check_choice("globl", ["global", "local"], "P", "scope")
    with pytest.raises(InvalidArgumentError) as info:
        check_choice(3, ["global", "local"], "P", "scope")
    assert "Did you mean" not in str(info.value)


def test_check_positive_bounds_and_types():
    assert check_positive(2, "f", "lr") == 2.0 and type(check_positive(2, "f", "lr")) is float
    assert check_positive(3, "f", "epochs", integer=True) == 3
    assert check_positive(0, "f", "epochs", integer=True, allow_zero=True) == 0
    for value, kwargs, says in [(0, {}, "> 0"), (-1.0, {}, "> 0"), (math.inf, {}, "finite"),
                                (2.5, {"integer": True}, "integer"), (True, {}, "bool"),
                                (-1, {"allow_zero": True}, ">= 0")]:
        with pytest.raises(InvalidArgumentError, match=rf"^f: lr must .*{says}"):
            check_positive(value, "f", "lr", **kwargs)


def test_user_items_yields_everything_and_tags_only_the_callers_errors():
    assert list(user_items(iter([1, 2, 3]))) == [1, 2, 3]

    def loader():
        yield 1
        raise KeyError("their bug")

    items = user_items(loader())
    assert next(items) == 1
    with pytest.raises(KeyError) as info:
        next(items)
    assert is_user_error(info.value)
    with pytest.raises(TypeError) as info:  # not iterable: also the caller's
        list(user_items(5))
    assert is_user_error(info.value)
    assert not is_user_error(KeyError("prunec's own"))


def test_check_save_path(tmp_path):
    assert check_save_path(str(tmp_path / "m.pt2")) == tmp_path / "m.pt2"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        check_save_path(tmp_path / "missing" / "m.pt2")
    assert info.value.filename == str(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError):
        check_save_path(tmp_path / "file" / "m.pt2")
    with pytest.raises(InvalidArgumentError, match="save: path must be a string or pathlib.Path, got int"):
        check_save_path(3)
