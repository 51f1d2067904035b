"""Hydra override grammar -> typed parameters, the encoding to model space, and bad input."""

from __future__ import annotations

import math

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from nasrun import UserError
from nasrun.bo import (
    Categorical,
    Integer,
    ParamSpace,
    ParamSpaceError,
    Real,
    parse_overrides,
    prepare_sweeper_args,
)


def one(line: str):
    space, fixed = parse_overrides([line])
    assert fixed == []
    (param,) = space.params
    return param


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("trainer.drop=interval(0.0, 0.4)", Real("trainer.drop", 0.0, 0.4, False)),
        ("a=interval(0, 1)", Real("a", 0.0, 1.0, False)),  # interval() is always float
        ("trainer.lr=tag(log, interval(1e-4, 0.3))", Real("trainer.lr", 1e-4, 0.3, True)),
        ("n=int(interval(1, 10))", Integer("n", 1, 10, 1, False)),
        ("n=tag(log, int(interval(1, 1024)))", Integer("n", 1, 1024, 1, True)),
        ("n=range(8, 64, 8)", Integer("n", 8, 56, 8, False)),  # Hydra's range excludes the stop
    ],
)
def test_numeric_kinds(line: str, expected: Real | Integer) -> None:
    assert one(line) == expected


def test_choice_keeps_values_and_spelling() -> None:
    p = one("trainer.batch_size=choice(64, 96, 128)")
    assert isinstance(p, Categorical)
    assert p.choices == (64, 96, 128)
    p = one("opt=choice(adam, 'sgd w', [1, 2])")
    assert p.choices == ("adam", "sgd w", [1, 2])
    # The literals parse back to the same values: that is how trials receive them.
    parser = OverridesParser.create()
    assert [parser.parse_override(f"k={lit}").value() for lit in p.literals] == list(p.choices)


def test_fixed_overrides_pass_through() -> None:
    space, fixed = parse_overrides(["x=interval(0, 1)", "data=digits", "trainer.epochs=2"])
    assert space.names == ["x"]
    assert fixed == ["data=digits", "trainer.epochs=2"]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("trainer.lr=interval(1, 0)", "interval(1.0, 0.0) is empty"),
        ("trainer.lr=interval(0.5, 0.5)", "is empty"),
        ("trainer.lr=tag(log, interval(0, 1))", "tag(log, ...) needs a positive range"),
        ("trainer.lr=tag(log, interval(-1, 1))", "positive range"),
        ("trainer.bs=choice()", "empty choice"),
        ("trainer.bs=choice(1, 1)", "repeats a value"),
        ("trainer.bs=shuffle(range(1, 4))", "shuffle()"),
        ("trainer.lr=range(0.1, 1.0, 0.2)", "range() takes integers"),
        ("trainer.bs=range(5, 1)", "holds no values"),
        ("trainer.lr=tag(foo, interval(0, 1))", "unknown tag"),
    ],
)
def test_bad_input_is_one_line_naming_the_parameter(line: str, needle: str) -> None:
    name = line.split("=")[0]
    with pytest.raises(ParamSpaceError) as info:
        parse_overrides([line])
    msg = str(info.value)
    assert f"'{name}'" in msg and needle in msg and "\n" not in msg
    assert isinstance(info.value, UserError)


def test_empty_space_and_duplicates() -> None:
    with pytest.raises(ParamSpaceError, match="search space is empty"):
        parse_overrides(["data=digits"])
    with pytest.raises(ParamSpaceError, match="'x' is given twice"):
        parse_overrides(["x=interval(0, 1)", "x=interval(0, 2)"])


def test_encoding_round_trip_and_snapping() -> None:
    space, _ = parse_overrides(
        [
            "lr=tag(log, interval(1e-4, 1e-2))",
            "n=range(8, 64, 8)",
            "bs=choice(64, 96, 128)",
            "d=interval(0, 0.4)",
        ]
    )
    values = {"lr": 1e-3, "n": 24, "bs": 96, "d": 0.1}
    x = space.encode(values)
    assert x[0] == pytest.approx(0.5)  # geometric midpoint on a log scale
    assert x[1] == pytest.approx(2 / 6)
    assert x[2] == 1.0  # categorical: the choice index
    assert x[3] == pytest.approx(0.25)
    back = space.decode(x)
    assert back["lr"] == pytest.approx(1e-3) and back["n"] == 24 and back["bs"] == 96
    # Off-grid points snap onto values the space can take.
    snapped = space.decode([0.51, 0.3, 1.6, 1.2])
    assert snapped["n"] == 24 and snapped["bs"] == 128 and snapped["d"] == 0.4
    assert space.upper() == [1.0, 1.0, 2.0, 1.0]
    assert space.cat_dims == {2: [0.0, 1.0, 2.0]}
    assert space.int_dims[1] == pytest.approx([i / 6 for i in range(7)])


def test_log_integers_round_geometrically() -> None:
    space = ParamSpace([Integer("n", 1, 1024, 1, True)])
    assert space.decode([0.5]) == {"n": 32}
    assert space.decode([0.0]) == {"n": 1} and space.decode([1.0]) == {"n": 1024}


def test_overrides_parse_back_to_the_same_values() -> None:
    space, _ = parse_overrides(
        ["lr=tag(log, interval(1e-6, 1e-2))", "n=int(interval(1, 5))", "o=choice(adam, sgd)"]
    )
    values = {"lr": 1.2345e-05, "n": 3, "o": "sgd"}
    lines = space.overrides(values)
    assert lines == ["lr=1.2345e-05", "n=3", "o=sgd"]
    parser = OverridesParser.create()
    parsed = {o.key_or_group: o.value() for o in parser.parse_overrides(lines)}
    assert parsed == values and isinstance(parsed["lr"], float) and isinstance(parsed["n"], int)
    assert math.isclose(space.decode(space.encode(values))["lr"], 1.2345e-05)


def test_prepare_sweeper_args_makes_command_line_spaces_legal() -> None:
    args = [
        "-m",
        "hydra.sweeper.params.trainer.lr=tag(log, interval(1e-4, 0.3))",
        'hydra.sweeper.params.o=choice("a b", c)',
        "+hydra.sweeper.params.d='interval(0, 1)'",
        "trainer.epochs=2",
    ]
    assert prepare_sweeper_args(args) == [
        "-m",
        '++hydra.sweeper.params.trainer.lr="tag(log, interval(1e-4, 0.3))"',
        "++hydra.sweeper.params.o='choice(\"a b\", c)'",
        "+hydra.sweeper.params.d='interval(0, 1)'",
        "trainer.epochs=2",
    ]
    # What the sweeper then reads is the original text, a parsable search space.
    parser = OverridesParser.create()
    value = parser.parse_override(prepare_sweeper_args(args)[2]).value()
    assert parse_overrides([f"o={value}"])[0].params[0].choices == ("a b", "c")
