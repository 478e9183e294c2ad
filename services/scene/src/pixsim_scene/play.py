"""How a scene plays, without I/O: what is offered after a node's clip, what going along a
connection does to a player's state, and how a step sent again is told from a new one.

At a node (docs/scenes.md, "How a scene plays"): the first branch whose condition holds is
taken without asking; else the choices whose conditions hold are offered; else the next
connection is followed; else the story ends. A playthrough offers a branch or a next
connection alone, so every step, asked or not, is one `Choose` of an offered connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

from pixsim_scene import conditions
from pixsim_scene.conditions import Value, Variable
from pixsim_scene.domain import Edge, EdgeType, Problem, Severity

# Problems that leave a condition or an effect without a meaning: a scene with one cannot be
# played. The rest (a dead end, an unreachable node) make a poor story, not an undefined one.
UNPLAYABLE_CODES = frozenset({"CONDITION_SYNTAX", "UNDEFINED_VARIABLE", "TYPE_MISMATCH"})


class PlayState(StrEnum):
    ACTIVE = "ACTIVE"
    ENDED = "ENDED"
    FAILED = "FAILED"


class StepKind(StrEnum):
    NEW = "NEW"  # the next step: take it
    REPEATED = "REPEATED"  # taken already with this choice: answer as it is
    TAKEN = "TAKEN"  # taken already with another choice
    AHEAD = "AHEAD"  # past the next step: the caller skipped one


def unplayable(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.code in UNPLAYABLE_CODES and p.severity is Severity.ERROR]


def initial_values(variables: Sequence[Variable]) -> dict[str, Value]:
    return {v.name: v.initial for v in variables}


def offered(outgoing: Iterable[Edge], values: Mapping[str, Value]) -> list[Edge]:
    """What may follow a node's clip, given a player's values; empty at an ending."""
    ordered = sorted(outgoing, key=lambda e: (e.order, e.id))
    for edge in ordered:
        if edge.type is EdgeType.BRANCH and conditions.holds(edge.condition, values):
            return [edge]
    choices = [
        e for e in ordered if e.type is EdgeType.CHOICE and conditions.holds(e.condition, values)
    ]
    if choices:
        return choices
    return [e for e in ordered if e.type is EdgeType.NEXT][:1]


def take(edge: Edge, values: Mapping[str, Value]) -> dict[str, Value]:
    """A player's values after going along `edge`."""
    return conditions.apply(edge.effects, values)


def judge_step(requested: int, taken: int, recorded: str | None, choice: str) -> StepKind:
    """What step `requested` choosing `choice` is, for a playthrough that took `taken` steps,
    step `requested` having been taken with `recorded` (None when it was not)."""
    if requested == taken + 1:
        return StepKind.NEW
    if requested > taken + 1:
        return StepKind.AHEAD
    return StepKind.REPEATED if recorded == choice else StepKind.TAKEN
