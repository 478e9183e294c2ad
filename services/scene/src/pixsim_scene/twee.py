"""Scenes as Twee 3 in SugarCube 2's dialect, without I/O (docs/scenes.md, "Twee 3").

Writing: each node is a passage named by its key. Its text says in SugarCube what the
connections do (`[[label|Target][$x to 1]]` links for choices, an `<<if>>` chain of `<<goto>>`
for branches, a `Continue` link for next), its header's metadata holds the exact node and
connections under `pixsim`, and `StoryInit` sets the variables. Reading a passage that has
`pixsim` metadata takes that, so an export read back is the same scene and writes the same
bytes. Any other passage (a story written in Twine) is read from its text: links become
choices, `<<goto>>` branches, the `<<if>>` around either its condition, a `<<set>>` an effect
of the way in, and the variables are declared by their first `<<set>>`.

Every document becomes a manifest (`interchange`), which checks it the one way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pixsim_scene import conditions, interchange
from pixsim_scene.conditions import ConditionSyntaxError, VariableType
from pixsim_scene.interchange import FORMAT, ManifestError, SceneData

STORY_FORMAT = "SugarCube"
STORY_FORMAT_VERSION = "2.37.3"
# Passages with a meaning to the story format rather than the story.
SPECIAL = frozenset(
    {
        "StoryTitle",
        "StoryData",
        "StoryInit",
        "StoryCaption",
        "StoryMenu",
        "StoryBanner",
        "StorySubtitle",
        "StoryAuthor",
        "StoryDisplayTitle",
        "StoryInterface",
        "StoryShare",
        "PassageReady",
        "PassageDone",
        "PassageHeader",
        "PassageFooter",
    }
)
CODE_TAGS = frozenset({"script", "stylesheet", "widget", "Twine.private"})


@dataclass
class Passage:
    name: str
    tags: list[str]
    metadata: dict[str, Any] | None  # None: none, or not JSON (discarded, as the spec says)
    text: str
    line: int


# ---- the notation -------------------------------------------------------------------


def _escape(name: str) -> str:
    return re.sub(r"([\[\]{}\\])", r"\\\1", name)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _header(line: str, number: int) -> Passage:
    """A passage header, read in one pass (a pattern would backtrack on a hostile line):
    `:: Name [tags] {metadata}`, with `\\` escaping in the name and the tags."""
    rest, index = line[2:], 0

    def escaped_until(stops: str) -> str:
        nonlocal index
        chars = []
        while index < len(rest) and rest[index] not in stops:
            if rest[index] == "\\" and index + 1 < len(rest):
                index += 1
            chars.append(rest[index])
            index += 1
        return "".join(chars)

    name = escaped_until("[{").strip()
    if not name:
        raise ManifestError(f"line {number}", "a passage header needs a name")
    tags: list[str] = []
    if index < len(rest) and rest[index] == "[":
        index += 1
        tags = escaped_until("]").split()
        if index == len(rest):
            raise ManifestError(f"line {number}", "a tag block is not closed")
        index += 1
    tail = rest[index:].strip()
    if tail and not tail.startswith("{"):
        raise ManifestError(f"line {number}", f"unexpected {tail[:20]!r} after the passage name")
    metadata = None
    if tail:
        try:
            metadata = interchange.load_json(tail)
        except ManifestError:
            metadata = None  # the spec: warn, discard, and go on
        if not isinstance(metadata, dict):
            metadata = None
    return Passage(name, tags, metadata, "", number)


def passages(text: str) -> list[Passage]:
    """The passages of a Twee 3 document, in order."""
    found: list[Passage] = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.startswith("::"):
            if found:
                body.append(line)
            continue
        if found:
            found[-1].text = _trimmed(body)
        body = []
        found.append(_header(line, number))
    if found:
        found[-1].text = _trimmed(body)
    return found


def _trimmed(lines: list[str]) -> str:
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[:end])


# ---- writing ------------------------------------------------------------------------


def _literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def sugarcube_condition(condition: str) -> str:
    """A condition in SugarCube's TwineScript: its variables become `$name`; the rest of the
    grammar (comparisons, and, or, not) is TwineScript already."""
    expr = conditions.parse(condition)
    text = condition
    for name in sorted(conditions.names_in(expr), key=lambda n: n.position, reverse=True):
        text = text[: name.position] + "$" + text[name.position :]
    return text.strip()


def _setters(effects: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"${e['variable']} += {_literal(e['value'])}"
        if e["op"] == "INCREMENT"
        else f"${e['variable']} to {_literal(e['value'])}"
        for e in effects
    )


def _body(connections: list[dict[str, Any]]) -> list[str]:
    """What a node's connections do, in SugarCube, for people and SugarCube itself (the exact
    data is in the passage's metadata)."""
    lines = []
    chain = ""
    for edge in (c for c in connections if c["type"] == "BRANCH"):
        sets = "".join(f"<<set {s}>>" for s in [_setters(edge["effects"])] if s)
        go = f"{sets}<<goto [[{edge['to']}]]>>"
        if not edge["condition"].strip():
            chain = f"{chain}<<else>>{go}<</if>>" if chain else go
            break
        clause = "<<if" if not chain else "<<elseif"
        chain += f"{clause} {sugarcube_condition(edge['condition'])}>>{go}"
    else:
        chain += "<</if>>" if chain else ""
    if chain:
        lines.append(chain)
    for edge in connections:
        if edge["type"] == "BRANCH":
            continue
        label = edge["label"] if edge["type"] == "CHOICE" else "Continue"
        setter = _setters(edge["effects"])
        link = f"[[{label}|{edge['to']}" + (f"][{setter}]]" if setter else "]]")
        if edge["condition"].strip():
            link = f"<<if {sugarcube_condition(edge['condition'])}>>{link}<</if>>"
        lines.append(link)
    return lines


def to_twee(data: SceneData) -> bytes:
    document = interchange.to_manifest(data)
    scene = document["scene"]
    story = {
        "format": STORY_FORMAT,
        "format-version": STORY_FORMAT_VERSION,
        "ifid": scene["ifid"],
        "pixsim": {
            "description": scene["description"],
            "format": FORMAT,
            "tags": scene["tags"],
            "variables": document["variables"],
        },
    }
    if scene["start"] is not None:
        story["start"] = scene["start"]
    out = [
        ":: StoryTitle",
        scene["display_name"],
        "",
        ":: StoryData",
        json.dumps(story, indent=2, sort_keys=True, ensure_ascii=False),
        "",
        ":: StoryInit",
        *(f"<<set ${v['name']} to {_literal(v['initial'])}>>" for v in document["variables"]),
        "",
    ]
    leaving: dict[str, list[dict[str, Any]]] = {n["key"]: [] for n in document["nodes"]}
    for connection in document["connections"]:
        leaving[connection["from"]].append({k: v for k, v in connection.items() if k != "from"})
    for node in document["nodes"]:
        x, y = node["position"]
        exact = {k: v for k, v in node.items() if k != "key"}
        exact["connections"] = leaving[node["key"]]
        metadata = {"pixsim": exact, "position": f"{round(x)},{round(y)}"}
        header = f":: {_escape(node['key'])} " + json.dumps(
            metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        out += [header, *_body(leaving[node["key"]]), ""]
    return "\n".join(out).encode()


# ---- reading ------------------------------------------------------------------------


# SugarCube's links: [[Target]], [[Text|Target]], [[Text->Target]], [[Target<-Text]], each
# with an optional setter before the closing brackets: [[Text|Target][$x to 1]].
MAX_SETS = 32  # each becomes an effect of the ways in, and a connection has at most 32
MAX_IF_DEPTH = 32  # <<if>> inside <<if>>: deeper is no story, and would cost without bound
_MACRO_NAME = re.compile(r"(/?[A-Za-z]+)(.*)", re.DOTALL)


@dataclass(frozen=True)
class _Token:
    kind: str  # link | macro
    name: str  # a macro's name; a link's text (`Text|Target`)
    args: str  # a macro's arguments; a link's setter


def _tokens(text: str) -> Iterator[_Token]:
    """SugarCube's links (`[[Text|Target][$x to 1]]`) and macros (`<<name args>>`), in order,
    in one pass: each is found by its opener and ends at its closer, each opener is looked
    for again only once passed, and a text with no closer left has no more of them."""
    link, macro = text.find("[["), text.find("<<")
    while link >= 0 or macro >= 0:
        if macro < 0 or 0 <= link < macro:
            end = text.find("]]", link + 2)
            if end < 0:
                return
            target, _, setter = text[link + 2 : end].partition("][")
            yield _Token("link", target, setter)
        else:
            end = text.find(">>", macro + 2)
            if end < 0:
                return
            match = _MACRO_NAME.match(text, macro + 2, end)
            if match is not None:
                yield _Token("macro", match.group(1), match.group(2))
        position = end + 2
        if 0 <= link < position:
            link = text.find("[[", position)
        if 0 <= macro < position:
            macro = text.find("<<", position)


_ASSIGN = re.compile(
    r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>\bto\b|\+=|-=|=(?!=))\s*"
    r"(?P<value>true|false|-?\d+(?:\.\d+)?|\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
)


def variable_name(name: str) -> str:
    """A SugarCube name as a scene variable's: `isDog` becomes `is_dog`."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _value(text: str) -> bool | float | str:
    if text in ("true", "false"):
        return text == "true"
    if text[0] in "\"'":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return float(text)


def _assignments(text: str) -> Iterator[dict[str, Any]]:
    for match in _ASSIGN.finditer(text):
        value = _value(match.group("value"))
        op = match.group("op")
        if op in ("+=", "-="):
            if not isinstance(value, float):
                continue
            yield {
                "variable": variable_name(match.group("name")),
                "op": "INCREMENT",
                "value": value if op == "+=" else -value,
            }
        else:
            yield {"variable": variable_name(match.group("name")), "op": "SET", "value": value}


_SUGARCUBE_WORDS = [
    (r"\bis\s+not\b|\bisnot\b|\bneq\b|!==", "!="),
    (r"\bis\b|\beq\b|===", "=="),
    (r"\bgte\b", ">="),
    (r"\blte\b", "<="),
    (r"\bgt\b", ">"),
    (r"\blt\b", "<"),
    (r"&&", " and "),
    (r"\|\|", " or "),
    (r"!(?!=)", " not "),
]


def our_condition(sugarcube: str) -> str | None:
    """A TwineScript condition in the scene grammar, or None when it says more than the
    grammar can (arithmetic, calls, temporary variables)."""
    text = re.sub(r"'((?:[^'\\]|\\.)*)'", lambda m: json.dumps(_value(m.group(0))), sugarcube)
    for pattern, replacement in _SUGARCUBE_WORDS:
        text = re.sub(pattern, replacement, text)
    text = re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", lambda m: variable_name(m.group(1)), text)
    text = " ".join(text.split())
    try:
        conditions.parse(text)
    except ConditionSyntaxError:
        return None
    return text


def _target(link: str) -> tuple[str, str]:
    """(label, passage) of a link's text: `Text|Target`, `Text->Target`, `Target<-Text`, or
    `Target`."""
    if "|" in link:
        label, target = link.rsplit("|", 1)
    elif "->" in link:
        label, target = link.rsplit("->", 1)
    elif "<-" in link:
        target, label = link.split("<-", 1)
    else:
        label = target = link
    return label.strip(), target.strip()


@dataclass
class _Read:
    """A passage's text as connections and sets."""

    connections: list[dict[str, Any]] = field(default_factory=list)
    sets: list[dict[str, Any]] = field(default_factory=list)


def _read_text(text: str) -> _Read:
    read = _Read()
    # Per <<if>> around the current point, innermost last: its clauses so far, each as
    # (the condition in the scene grammar or None when it cannot be said there, as written).
    stack: list[list[tuple[str | None, str]]] = []

    def around() -> tuple[str, str]:
        """The condition at this point ("" when none), and what could not be translated of
        it, as written ("" when all was)."""
        parts: list[str] = []
        lost: list[str] = []
        for clauses in stack:
            *before, (current, written) = clauses
            if current is None or any(c is None for c, _ in before):
                lost.append(written)
                continue
            parts += [f"not ({c})" for c, _ in before]
            if current != "true":
                parts.append(f"({current})")
        return " and ".join(parts), " / ".join(lost)

    def connection(kind: str, label: str, target: str, setter: str) -> None:
        condition, lost = around()
        read.connections.append(
            {
                "to": target,
                "type": kind,
                "label": label,
                "condition": condition,
                "effects": list(_assignments(setter)),
                "metadata": {"twee_condition": lost} if lost else {},
            }
        )

    for token in _tokens(text):
        if token.kind == "link":
            label, target = _target(token.name)
            connection("CHOICE", label, target, token.args)
            continue
        name, args = token.name, token.args.strip()
        if name == "if":
            if len(stack) == MAX_IF_DEPTH:
                raise ManifestError("", f"<<if>> nests deeper than {MAX_IF_DEPTH}")
            stack.append([(our_condition(args), args)])
        elif name == "elseif" and stack:
            stack[-1].append((our_condition(args), args))
        elif name == "else" and stack:
            stack[-1].append(("true", "else"))
        elif name == "/if" and stack:
            stack.pop()
        elif name == "set":
            read.sets += list(_assignments(args))
            if len(read.sets) > MAX_SETS:
                raise ManifestError("", f"a passage sets at most {MAX_SETS} variables")
        elif name == "goto":
            quoted = re.fullmatch(r"\s*(?:\"(.*)\"|'(.*)'|\[\[(.*)\]\])\s*", args)
            if quoted:
                target = next(g for g in quoted.groups() if g is not None)
                connection("BRANCH", "", target, "")
    return read


def _exact(passage: Passage) -> dict[str, Any] | None:
    if passage.metadata is None:
        return None
    exact = passage.metadata.get("pixsim")
    return exact if isinstance(exact, dict) else None


def _zero(kind: str) -> bool | float | str:
    zeros: dict[str, bool | float | str] = {"BOOL": False, "NUMBER": 0.0, "STRING": ""}
    return zeros[kind]


def to_document(content: bytes) -> dict[str, Any]:
    """The manifest a Twee 3 document describes (checked by `interchange.from_manifest`)."""
    if len(content) > interchange.MAX_DOCUMENT_BYTES:
        raise ManifestError("", f"a document is at most {interchange.MAX_DOCUMENT_BYTES} bytes")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError("", f"not UTF-8: {error}") from None
    found = passages(text)
    by_name: dict[str, Passage] = {}
    for passage in found:
        by_name.setdefault(passage.name, passage)
    title = by_name.get("StoryTitle")
    story: dict[str, Any] = {}
    if "StoryData" in by_name:
        try:
            loaded = interchange.load_json(by_name["StoryData"].text)
        except ManifestError:
            loaded = {}  # the spec: warn, discard, and go on
        story = loaded if isinstance(loaded, dict) else {}
    ours = story.get("pixsim") if isinstance(story.get("pixsim"), dict) else None
    stories = [
        p
        for p in found
        if p.name not in SPECIAL and not CODE_TAGS.intersection(p.tags) and p is by_name[p.name]
    ]
    if not stories:
        raise ManifestError("", "no story passage: a scene needs one node")
    start = story.get("start") if isinstance(story.get("start"), str) else None
    if ours is None and start is None:  # Twee's rule; our own exports say when one is marked
        start = "Start" if "Start" in by_name else stories[0].name
    variables, nodes, connections = [], [], []
    read = {p.name: _read_text(p.text) for p in stories if _exact(p) is None}
    if ours is not None:
        variables = ours.get("variables", [])
    else:
        variables = _declared(by_name.get("StoryInit"), by_name.get(start or ""), read)
    into: dict[str, list[dict[str, Any]]] = {p.name: [] for p in stories}
    for index, passage in enumerate(stories):
        exact = _exact(passage)
        if exact is not None:
            nodes.append(
                {"key": passage.name, **{k: v for k, v in exact.items() if k != "connections"}}
            )
            leaving = exact.get("connections", [])
            if not isinstance(leaving, list):
                raise ManifestError(f"passage {passage.name!r}", "pixsim.connections is a list")
            connections += [
                {"from": passage.name, **c} if isinstance(c, dict) else c for c in leaving
            ]
            continue
        nodes.append(_node(passage, index))
        seen: set[tuple[str, str]] = set()
        for edge in read[passage.name].connections:
            if edge["to"] not in into:
                raise ManifestError(
                    f"passage {passage.name!r}", f"links to {edge['to']!r}, which is no passage"
                )
            if (edge["to"], edge["type"]) in seen:
                continue  # one connection of a type between two nodes; the first is kept
            seen.add((edge["to"], edge["type"]))
            made = {"from": passage.name, **edge, "order": len(seen) - 1}
            connections.append(made)
            into[edge["to"]].append(made)
    # A <<set>> in a story's text happens when a reader reaches it: an effect of every way in.
    for name, passage_read in read.items():
        if name == start and ours is None and "StoryInit" not in by_name:
            continue  # the start's sets declared the variables
        for edge in into[name]:
            edge["effects"] = edge["effects"] + passage_read.sets
    scene: dict[str, Any] = {
        "display_name": (title.text.strip() if title else "") or "untitled story",
        "description": "",
        "tags": [],
        "start": start,
    }
    ifid = story.get("ifid")
    if isinstance(ifid, str):
        scene["ifid"] = ifid
    if ours is not None:
        scene["description"] = ours.get("description", "")
        scene["tags"] = ours.get("tags", [])
    return {
        "format": FORMAT,
        "scene": scene,
        "variables": variables,
        "nodes": nodes,
        "connections": connections,
    }


def _node(passage: Passage, index: int) -> dict[str, Any]:
    x = y = 0.0
    position = (passage.metadata or {}).get("position")
    if isinstance(position, str) and re.fullmatch(r"-?\d+(\.\d+)?,-?\d+(\.\d+)?", position):
        x, y = (float(v) for v in position.split(","))
    return {
        "key": passage.name,
        "asset": None,
        "order": index,
        "position": [x, y],
        "metadata": _kept_text(passage),
    }


MAX_TEXT = 4000  # a node's metadata string may hold 4,096 characters


def _kept_text(passage: Passage) -> dict[str, Any]:
    """The passage's name and text, for its author; a long text is cut, and says so."""
    kept: dict[str, Any] = {"title": passage.name, "text": passage.text[:MAX_TEXT]}
    if len(passage.text) > MAX_TEXT:
        kept["text_cut"] = True
    return kept


def _declared(
    init: Passage | None, start: Passage | None, read: Mapping[str, _Read]
) -> list[dict[str, Any]]:
    """Each variable a story sets, with its type and first value: from StoryInit, else the
    start passage, else the zero of the type its first `<<set>>` gives it."""
    first: dict[str, dict[str, Any]] = {}
    initial_sets = (
        list(_assignments(init.text))
        if init is not None
        else (read[start.name].sets if start is not None and start.name in read else [])
    )
    for effect in initial_sets:
        if effect["op"] == "SET" and conditions.VARIABLE_NAME.match(effect["variable"]):
            first.setdefault(effect["variable"], effect)
    later = [
        e for r in read.values() for e in r.sets + [f for c in r.connections for f in c["effects"]]
    ]
    declared = []
    for name, effect in first.items():
        kind = conditions.type_of_value(effect["value"]).value
        declared.append({"name": name, "type": kind, "initial": effect["value"]})
    for effect in later:
        name = effect["variable"]
        if name in first or not conditions.VARIABLE_NAME.match(name):
            continue
        kind = (
            VariableType.NUMBER.value
            if effect["op"] == "INCREMENT"
            else conditions.type_of_value(effect["value"]).value
        )
        first[name] = effect
        declared.append({"name": name, "type": kind, "initial": _zero(kind)})
    return declared


def from_twee(content: bytes, new_id: Callable[[], str]) -> SceneData:
    return interchange.from_manifest(to_document(content), new_id)
