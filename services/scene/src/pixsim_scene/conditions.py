"""A scene's state language, without I/O: typed variables, the conditions over them (parsed
into a tree, never evaluated as code) and the effects that change them. The grammar is in
docs/scenes.md; any other implementation (a player exported with a scene) is held to the same
cases (services/scene/tests/cases/conditions.json).

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=") operand)?
    operand    := NUMBER | STRING | "true" | "false" | NAME | "(" or ")"
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

MAX_CONDITION_LENGTH = 1000
MAX_DEPTH = 32  # nesting of parentheses and `not`: a hostile condition cannot exhaust the stack
VARIABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")

Value: TypeAlias = bool | float | str


class VariableType(StrEnum):
    BOOL = "BOOL"
    NUMBER = "NUMBER"
    STRING = "STRING"


def type_of_value(value: Value) -> VariableType:
    if isinstance(value, bool):
        return VariableType.BOOL
    if isinstance(value, float | int):
        return VariableType.NUMBER
    return VariableType.STRING


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    type: VariableType
    initial: Value


class EffectOp(StrEnum):
    SET = "SET"
    INCREMENT = "INCREMENT"


@dataclass(frozen=True, slots=True)
class Effect:
    """`variable = value`, or `variable += value` (numbers only)."""

    variable: str
    op: EffectOp
    value: Value


# The tree. Comparisons and boolean operators only: there is no call, attribute or index.
@dataclass(frozen=True, slots=True)
class Literal:
    value: Value


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    position: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@dataclass(frozen=True, slots=True)
class Logical:
    op: str  # "and" | "or"
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != < <= > >=
    left: Expr
    right: Expr
    position: int


Expr: TypeAlias = Literal | Name | Not | Logical | Compare


class ConditionSyntaxError(ValueError):
    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at character {position + 1}")
        self.position = position


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d+)?)
      | (?P<string>"(?:[^"\\]|\\["\\])*")
      | (?P<op>==|!=|<=|>=|<|>|\(|\))
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not", "true", "false"}
COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number, string, op, word, end
    text: str
    position: int


def _tokens(text: str) -> Iterator[_Token]:
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            yield _Token("end", "", position)
            return
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise ConditionSyntaxError(f"unexpected {text[position]!r}", position)
        start = match.start(match.lastgroup)
        yield _Token(match.lastgroup, match.group(match.lastgroup), start)
        position = match.end()


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = list(_tokens(text))
        self.index = 0
        self.depth = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at_word(self, word: str) -> bool:
        return self.current.kind == "word" and self.current.text == word

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionSyntaxError(f"nested deeper than {MAX_DEPTH}", self.current.position)

    def parse(self) -> Expr:
        expr = self.or_()
        if self.current.kind != "end":
            raise ConditionSyntaxError(f"unexpected {self.current.text!r}", self.current.position)
        return expr

    def or_(self) -> Expr:
        expr = self.and_()
        while self.at_word("or"):
            self.take()
            expr = Logical("or", expr, self.and_())
        return expr

    def and_(self) -> Expr:
        expr = self.not_()
        while self.at_word("and"):
            self.take()
            expr = Logical("and", expr, self.not_())
        return expr

    def not_(self) -> Expr:
        if self.at_word("not"):
            self.take()
            self.nested()
            operand = self.not_()
            self.depth -= 1
            return Not(operand)
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.operand()
        if self.current.kind == "op" and self.current.text in COMPARISONS:
            op = self.take()
            return Compare(op.text, left, self.operand(), op.position)
        return left

    def operand(self) -> Expr:
        token = self.take()
        if token.kind == "number":
            return Literal(float(token.text))
        if token.kind == "string":
            return Literal(re.sub(r"\\([\"\\])", r"\1", token.text[1:-1]))
        if token.kind == "word" and token.text in ("true", "false"):
            return Literal(token.text == "true")
        if token.kind == "word" and token.text not in KEYWORDS:
            return Name(token.text, token.position)
        if token.kind == "op" and token.text == "(":
            self.nested()
            expr = self.or_()
            self.depth -= 1
            if self.take().text != ")":
                raise ConditionSyntaxError("a '(' is not closed", token.position)
            return expr
        what = "the end" if token.kind == "end" else repr(token.text)
        raise ConditionSyntaxError(f"expected a value or a variable, found {what}", token.position)


def parse(text: str) -> Expr:
    """The condition's tree; ConditionSyntaxError says what is wrong and where."""
    if len(text) > MAX_CONDITION_LENGTH:
        raise ConditionSyntaxError(f"longer than {MAX_CONDITION_LENGTH} characters", 0)
    return _Parser(text).parse()


def names_in(expr: Expr) -> Iterator[Name]:
    if isinstance(expr, Name):
        yield expr
    elif isinstance(expr, Not):
        yield from names_in(expr.operand)
    elif isinstance(expr, Logical | Compare):
        yield from names_in(expr.left)
        yield from names_in(expr.right)


@dataclass(frozen=True, slots=True)
class TypeProblem:
    code: str  # UNDEFINED_VARIABLE | TYPE_MISMATCH
    message: str


def _undefined(name: str) -> TypeProblem:
    return TypeProblem("UNDEFINED_VARIABLE", f"{name!r} is not a variable of the scene")


def _mismatch(message: str) -> TypeProblem:
    return TypeProblem("TYPE_MISMATCH", message)


def check(expr: Expr, types: Mapping[str, VariableType]) -> list[TypeProblem]:
    """What is wrong with a condition's types: it must be a bool; `and`, `or` and `not` take
    bools, `<`-like comparisons numbers, `==` and `!=` two of one type."""
    problems: list[TypeProblem] = []

    def type_of(node: Expr) -> VariableType | None:  # None: unknown (already reported)
        if isinstance(node, Literal):
            return type_of_value(node.value)
        if isinstance(node, Name):
            if node.name not in types:
                problems.append(_undefined(node.name))
                return None
            return types[node.name]
        if isinstance(node, Not):
            expect(node.operand, VariableType.BOOL, "not")
            return VariableType.BOOL
        if isinstance(node, Logical):
            expect(node.left, VariableType.BOOL, node.op)
            expect(node.right, VariableType.BOOL, node.op)
            return VariableType.BOOL
        left, right = type_of(node.left), type_of(node.right)
        if node.op in ("==", "!="):
            if left is not None and right is not None and left is not right:
                problems.append(
                    _mismatch(
                        f"{node.op} compares a {left.lower()} with a {right.lower()}",
                    )
                )
        else:
            for side in (left, right):
                if side is not None and side is not VariableType.NUMBER:
                    problems.append(_mismatch(f"{node.op} compares numbers, not a {side.lower()}"))
        return VariableType.BOOL

    def expect(node: Expr, wanted: VariableType, where: str) -> None:
        found = type_of(node)
        if found is not None and found is not wanted:
            problems.append(_mismatch(f"{where} takes a {wanted.lower()}, not a {found.lower()}"))

    expect(expr, VariableType.BOOL, "a condition")
    return problems


def evaluate(expr: Expr, values: Mapping[str, Value]) -> Value:
    """The condition's value over `values` (a condition `check` found nothing wrong with;
    `and` and `or` short-circuit)."""
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, Name):
        return values[expr.name]
    if isinstance(expr, Not):
        return not evaluate(expr.operand, values)
    if isinstance(expr, Logical):
        left = evaluate(expr.left, values)
        if expr.op == "and":
            return bool(left) and bool(evaluate(expr.right, values))
        return bool(left) or bool(evaluate(expr.right, values))
    left, right = evaluate(expr.left, values), evaluate(expr.right, values)
    match expr.op:
        case "==":
            return left == right
        case "!=":
            return left != right
        case "<":
            return float(left) < float(right)
        case "<=":
            return float(left) <= float(right)
        case ">":
            return float(left) > float(right)
        case _:
            return float(left) >= float(right)


def holds(condition: str, values: Mapping[str, Value]) -> bool:
    """Whether a condition (empty: always) holds over `values`."""
    return not condition.strip() or bool(evaluate(parse(condition), values))


def constant(expr: Expr, fixed: Mapping[str, Value]) -> bool | None:
    """The condition's value when it cannot change: it names only variables in `fixed` (no
    effect ever writes them, so they keep their initial values). None while it depends on
    one that changes."""
    if any(name.name not in fixed for name in names_in(expr)):
        return None
    return bool(evaluate(expr, fixed))


def check_effect(effect: Effect, types: Mapping[str, VariableType]) -> TypeProblem | None:
    wanted = types.get(effect.variable)
    if wanted is None:
        return _undefined(effect.variable)
    given = type_of_value(effect.value)
    if effect.op is EffectOp.INCREMENT and wanted is not VariableType.NUMBER:
        return _mismatch(f"only a number can be incremented, not a {wanted.lower()}")
    if given is not wanted:
        return _mismatch(f"{effect.variable} is a {wanted.lower()}, not a {given.lower()}")
    return None


def apply(effects: tuple[Effect, ...], values: Mapping[str, Value]) -> dict[str, Value]:
    """The variables after `effects`, in order (effects `check_effect` found fine)."""
    after = dict(values)
    for effect in effects:
        if effect.op is EffectOp.INCREMENT:
            total = float(after[effect.variable]) + float(effect.value)
            after[effect.variable] = total if math.isfinite(total) else after[effect.variable]
        else:
            after[effect.variable] = effect.value
    return after


# As stored (JSONB) and as the player reads them from a scene's manifest.
def variable_to_json(variable: Variable) -> dict[str, object]:
    return {"name": variable.name, "type": variable.type.value, "initial": variable.initial}


def variable_from_json(data: Mapping[str, object]) -> Variable:
    kind = VariableType(str(data["type"]))
    initial = data["initial"]
    assert isinstance(initial, bool | float | int | str)
    return Variable(str(data["name"]), kind, as_type(kind, initial))


def effect_to_json(effect: Effect) -> dict[str, object]:
    return {"variable": effect.variable, "op": effect.op.value, "value": effect.value}


def effect_from_json(data: Mapping[str, object]) -> Effect:
    value = data["value"]
    assert isinstance(value, bool | float | int | str)
    op = EffectOp(str(data["op"]))
    return Effect(str(data["variable"]), op, float(value) if op is EffectOp.INCREMENT else value)


def from_json(value: bool | float | str) -> Value:
    """A value as JSON gives it back: JSON keeps 3.0 as 3, and a number is a float again."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def as_type(kind: VariableType, value: bool | float | str) -> Value:
    # JSON keeps 3.0 as 3: a number variable's value is a float again.
    if kind is VariableType.NUMBER and not isinstance(value, bool):
        return float(value)
    return value
