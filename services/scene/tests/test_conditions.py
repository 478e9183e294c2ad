"""The scene state language without I/O: parsing (never evaluating code), types, values,
constants and effects, on the cases the exported player is held to as well."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixsim_scene.conditions import (
    MAX_DEPTH,
    ConditionSyntaxError,
    Effect,
    EffectOp,
    Variable,
    VariableType,
    apply,
    check,
    check_effect,
    constant,
    effect_from_json,
    effect_to_json,
    evaluate,
    holds,
    parse,
    variable_from_json,
    variable_to_json,
)

pytestmark = pytest.mark.unit

CASES = Path(__file__).resolve().parent / "cases" / "conditions.json"
TYPES = {
    "has_key": VariableType.BOOL,
    "score": VariableType.NUMBER,
    "name": VariableType.STRING,
}


def shared_cases() -> list[dict[str, object]]:
    cases: list[dict[str, object]] = json.loads(CASES.read_text())["cases"]
    return cases


@pytest.mark.parametrize("case", shared_cases(), ids=lambda case: str(case["condition"]))
def test_the_shared_cases_hold_as_written(case: dict[str, object]) -> None:
    values = case["values"]
    assert isinstance(values, dict)
    assert holds(str(case["condition"]), values) is case["holds"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("score >", 7),
        ("(has_key", 0),
        ("has_key and", 11),
        ("score = 3", 6),
        ("__import__('os')", 11),
        ('name == "unclosed', 8),
        ("a < b < c", 6),
        ("not", 3),
    ],
)
def test_what_does_not_parse_says_where(text: str, where: int) -> None:
    with pytest.raises(ConditionSyntaxError) as refused:
        parse(text)
    assert refused.value.position == where


def test_nesting_and_length_are_bounded() -> None:
    assert evaluate(parse("(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH), {}) is True
    with pytest.raises(ConditionSyntaxError, match="nested deeper"):
        parse("(" * (MAX_DEPTH + 1) + "true" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ConditionSyntaxError, match="nested deeper"):
        parse("not " * (MAX_DEPTH + 1) + "true")
    with pytest.raises(ConditionSyntaxError, match="longer than"):
        parse("true or " * 200 + "true")


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("has_key and score >= 3", []),
        ('name == "fox" or not has_key', []),
        ("lives > 0", ["UNDEFINED_VARIABLE"]),
        ("score", ["TYPE_MISMATCH"]),
        ("has_key > 1", ["TYPE_MISMATCH"]),
        ('score == "3"', ["TYPE_MISMATCH"]),
        ("not score", ["TYPE_MISMATCH"]),
        ("name and has_key", ["TYPE_MISMATCH"]),
        ("ghost == 1 and lives", ["UNDEFINED_VARIABLE", "UNDEFINED_VARIABLE"]),
    ],
)
def test_types_are_checked(text: str, codes: list[str]) -> None:
    assert [problem.code for problem in check(parse(text), TYPES)] == codes


def test_a_condition_over_variables_nothing_changes_is_a_constant() -> None:
    fixed = {"has_key": False, "score": 0.0}
    assert constant(parse("has_key"), fixed) is False
    assert constant(parse("1 < 2"), {}) is True
    assert constant(parse("score >= 0 and not has_key"), fixed) is True
    assert constant(parse('name == "fox"'), fixed) is None  # name changes


def test_effects_set_and_increment_in_order() -> None:
    effects = (
        Effect("score", EffectOp.INCREMENT, 2.0),
        Effect("has_key", EffectOp.SET, True),
        Effect("score", EffectOp.INCREMENT, -0.5),
    )
    after = apply(effects, {"score": 1.0, "has_key": False, "name": "x"})
    assert after == {"score": 2.5, "has_key": True, "name": "x"}
    assert check_effect(Effect("name", EffectOp.INCREMENT, 1.0), TYPES) is not None
    assert check_effect(Effect("has_key", EffectOp.SET, "yes"), TYPES) is not None
    assert check_effect(Effect("ghost", EffectOp.SET, True), TYPES) is not None
    assert check_effect(Effect("score", EffectOp.SET, 4.0), TYPES) is None


def test_variables_and_effects_round_trip_through_json() -> None:
    variable = Variable("score", VariableType.NUMBER, 3.0)
    stored = json.loads(json.dumps(variable_to_json(variable)))
    assert variable_from_json(stored) == variable
    effect = Effect("score", EffectOp.INCREMENT, 1.0)
    assert effect_from_json(json.loads(json.dumps(effect_to_json(effect)))) == effect


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_never_anything_else(text: str) -> None:
    try:
        parsed = parse(text)
    except ConditionSyntaxError:
        return
    check(parsed, TYPES)  # and its types are checked without raising
