"""How a scene plays, without I/O: what is offered after a node, what a step does, and how a
step sent again is told apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pixsim_scene.conditions import Effect, EffectOp, Variable, VariableType, effect_from_json
from pixsim_scene.domain import Edge, EdgeType, Problem, Severity
from pixsim_scene.play import StepKind, initial_values, judge_step, offered, take, unplayable

pytestmark = pytest.mark.unit
CASES: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent / "cases" / "play.json").read_text()
)


def _edge(data: dict[str, Any]) -> Edge:
    effects = tuple(effect_from_json(e) for e in data.get("effects", []))
    return Edge(
        data["id"],
        "here",
        f"to-{data['id']}",
        EdgeType(data["type"]),
        order=data["order"],
        condition=data["condition"],
        effects=effects,
    )


@pytest.mark.parametrize("case", CASES["offered"], ids=lambda case: case["name"])
def test_the_shared_cases_of_what_is_offered_hold(case: dict[str, Any]) -> None:
    leaving = [_edge(e) for e in case["leaving"]]
    assert [e.id for e in offered(leaving, case["values"])] == case["offered"]


@pytest.mark.parametrize("case", CASES["effects"], ids=lambda case: case["name"])
def test_the_shared_cases_of_effects_hold(case: dict[str, Any]) -> None:
    along = _edge(
        {"id": "e", "type": "NEXT", "order": 0, "condition": "", "effects": case["effects"]}
    )
    assert take(along, case["values"]) == case["after"]


def edge(edge_id: str, kind: EdgeType, condition: str = "", order: int = 0) -> Edge:
    return Edge(edge_id, "here", f"to-{edge_id}", kind, condition=condition, order=order)


def test_the_first_branch_that_holds_is_offered_alone_before_any_choice() -> None:
    leaving = [
        edge("pick", EdgeType.CHOICE),
        edge("late", EdgeType.BRANCH, order=2),
        edge("keyed", EdgeType.BRANCH, "has_key", order=1),
        edge("after", EdgeType.NEXT),
    ]
    assert [e.id for e in offered(leaving, {"has_key": True})] == ["keyed"]
    assert [e.id for e in offered(leaving, {"has_key": False})] == ["late"]


def test_choices_that_hold_are_offered_in_order_else_the_next_else_nothing() -> None:
    leaving = [
        edge("b", EdgeType.CHOICE, order=1),
        edge("a", EdgeType.CHOICE, "tries < 3", order=1),
        edge("first", EdgeType.CHOICE, order=0),
        edge("never", EdgeType.BRANCH, "tries > 10"),
        edge("on", EdgeType.NEXT),
    ]
    assert [e.id for e in offered(leaving, {"tries": 1.0})] == ["first", "a", "b"]
    assert [e.id for e in offered(leaving, {"tries": 5.0})] == ["first", "b"]
    gated = [edge("a", EdgeType.CHOICE, "tries < 3"), edge("on", EdgeType.NEXT)]
    assert [e.id for e in offered(gated, {"tries": 5.0})] == ["on"]
    assert offered([edge("a", EdgeType.CHOICE, "tries < 3")], {"tries": 5.0}) == []
    assert offered([], {}) == []


def test_a_step_applies_its_effects_in_order_and_leaves_the_rest() -> None:
    variables = [
        Variable("has_key", VariableType.BOOL, False),
        Variable("tries", VariableType.NUMBER, 1.0),
        Variable("mood", VariableType.STRING, "calm"),
    ]
    along = Edge(
        "e",
        "a",
        "b",
        EdgeType.CHOICE,
        effects=(
            Effect("tries", EffectOp.INCREMENT, 2.0),
            Effect("has_key", EffectOp.SET, True),
            Effect("tries", EffectOp.INCREMENT, -0.5),
        ),
    )
    before = initial_values(variables)
    assert take(along, before) == {"has_key": True, "tries": 2.5, "mood": "calm"}
    assert before == {"has_key": False, "tries": 1.0, "mood": "calm"}


@pytest.mark.parametrize(
    ("requested", "taken", "recorded", "kind"),
    [
        (1, 0, None, StepKind.NEW),
        (4, 3, None, StepKind.NEW),
        (3, 3, "c", StepKind.REPEATED),
        (1, 3, "c", StepKind.REPEATED),
        (3, 3, "other", StepKind.TAKEN),
        (5, 3, None, StepKind.AHEAD),
    ],
)
def test_a_step_is_new_repeated_taken_by_another_choice_or_ahead(
    requested: int, taken: int, recorded: str | None, kind: StepKind
) -> None:
    assert judge_step(requested, taken, recorded, "c") is kind


def test_only_problems_that_leave_a_condition_without_meaning_make_a_scene_unplayable() -> None:
    found = [
        Problem("DEAD_END", "n", Severity.WARNING, ""),
        Problem("UNREACHABLE_NODE", "n", Severity.ERROR, ""),
        Problem("UNDEFINED_VARIABLE", "e", Severity.ERROR, "", "connections"),
        Problem("TYPE_MISMATCH", "e", Severity.ERROR, "", "connections"),
    ]
    assert [p.code for p in unplayable(found)] == ["UNDEFINED_VARIABLE", "TYPE_MISMATCH"]
