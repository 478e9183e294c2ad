"""Scenes in and out as documents, without I/O: the JSON manifest (docs/scenes.md,
"Interchange"), and the playable HTML folder built on it.

A manifest names nodes by key, not by id: a node's `title` (metadata) when every node has a
distinct one, else `n1`, `n2`, ... in order. Orders are written as positions (a node's among
all, a connection's among those leaving its node, ties broken by id as play breaks them), so
an import gives them without ties and the next export writes the same bytes.
"""

from __future__ import annotations

import html
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticError

from pixsim_common.validation import text_problem
from pixsim_scene import conditions, domain
from pixsim_scene.conditions import Effect, EffectOp, Variable, VariableType
from pixsim_scene.domain import Edge, EdgeType, Graph, Node, Rejected

FORMAT = "pixsim-scene/1"
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
# A manifest is 4 deep to a node's metadata, and metadata at most 4 more (the write path's
# bound); deeper JSON is refused before anything recurses through it.
MAX_JSON_DEPTH = 12
# A node's key: a passage name Twine and Twee agree on (no link or header metacharacters, no
# control characters, no space at either end).
KEY = r"^(?=\S)[^\x00-\x1f\x7f\[\]{}|\\<>]{1,100}(?<=\S)$"
ASSET = r"^assets/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
IFID = r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})?$"
_KEY = re.compile(KEY)
# A scene that never had an IFID gets one from its id: the same at every export.
IFID_NAMESPACE = uuid.UUID("6f1d3c52-7b0e-4a8e-9a55-3c1f0e2d9b47")


def ifid_of(scene_id: str, stored: str) -> str:
    """The story's IFID: the one it came with, else one made from the scene's id, shaped as
    the upper-case UUID v4 that Twine makes and Twee compilers check for."""
    if stored:
        return stored.upper()
    made = uuid.UUID(bytes=uuid.uuid5(IFID_NAMESPACE, scene_id).bytes, version=4)
    return str(made).upper()


class ManifestError(ValueError):
    """What is wrong with a document, and where (a path into it)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class SceneData:
    """A scene as a document holds it: everything but ids, owner and times."""

    display_name: str
    description: str
    tags: list[str]
    variables: list[Variable]
    graph: Graph
    keys: dict[str, str]  # node id -> its key in the document
    ifid: str = ""  # the story's IFID (upper-case UUID); "" when the document had none


@dataclass(frozen=True)
class ExportedFile:
    """A file of an export: its bytes, or the asset (`assets/{id}`) whose bytes go there."""

    path: str
    mime_type: str
    content: bytes = b""
    asset: str = ""


# ---- writing ------------------------------------------------------------------------


def node_keys(graph: Graph) -> dict[str, str]:
    """Each node's key: its title when all titles are there and distinct, else n1, n2..."""
    ordered = sorted(graph.nodes.values(), key=lambda n: (n.order, n.id))
    titles = [n.metadata.get("title") for n in ordered]
    usable = all(isinstance(t, str) and _KEY.match(t) for t in titles)
    if usable and len(set(titles)) == len(titles):
        return {n.id: str(t) for n, t in zip(ordered, titles, strict=True)}
    return {n.id: f"n{i}" for i, n in enumerate(ordered, 1)}


def to_manifest(data: SceneData) -> dict[str, Any]:
    graph, keys = data.graph, data.keys
    ordered = sorted(graph.nodes.values(), key=lambda n: (n.order, n.id))
    leaving: dict[str, list[Edge]] = {n.id: [] for n in ordered}
    for edge in graph.edges.values():
        leaving[edge.from_id].append(edge)
    connections = []
    for node in ordered:
        for position, edge in enumerate(sorted(leaving[node.id], key=lambda e: (e.order, e.id))):
            connections.append(
                {
                    "from": keys[edge.from_id],
                    "to": keys[edge.to_id],
                    "type": edge.type.value,
                    "label": edge.label,
                    "order": position,
                    "condition": edge.condition,
                    "effects": [conditions.effect_to_json(e) for e in edge.effects],
                    "metadata": edge.metadata,
                }
            )
    return {
        "format": FORMAT,
        "scene": {
            "display_name": data.display_name,
            "ifid": data.ifid,
            "description": data.description,
            "tags": data.tags,
            "start": keys.get(graph.start_id) if graph.start_id else None,
        },
        "variables": [conditions.variable_to_json(v) for v in data.variables],
        "nodes": [
            {
                "key": keys[node.id],
                "asset": f"assets/{node.asset_id}" if node.asset_id else None,
                "order": position,
                "position": [float(node.x), float(node.y)],
                "metadata": node.metadata,
            }
            for position, node in enumerate(ordered)
        ],
        "connections": connections,
    }


def dumps(document: Mapping[str, Any]) -> bytes:
    """The one way a document is written: sorted keys, two-space indent, UTF-8, a newline."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


# ---- reading ------------------------------------------------------------------------


class _Strict(BaseModel):
    # Python's engine: the key pattern looks around, which Rust's regex crate does not.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, regex_engine="python-re")


Number = StrictInt | StrictFloat
Json = Any


class _Variable(_Strict):
    name: Annotated[str, Field(pattern=conditions.VARIABLE_NAME.pattern)]
    type: Literal["BOOL", "NUMBER", "STRING"]
    initial: StrictBool | Number | Annotated[StrictStr, Field(max_length=200)]


class _Effect(_Strict):
    variable: Annotated[str, Field(pattern=conditions.VARIABLE_NAME.pattern)]
    op: Literal["SET", "INCREMENT"]
    value: StrictBool | Number | Annotated[StrictStr, Field(max_length=200)]


class _Node(_Strict):
    key: Annotated[str, Field(pattern=KEY)]
    asset: Annotated[str, Field(pattern=ASSET)] | None = None
    order: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    position: Annotated[list[Number], Field(min_length=2, max_length=2)] = [0, 0]
    metadata: dict[str, Json] = {}


class _Connection(_Strict):
    from_: Annotated[str, Field(alias="from", pattern=KEY)]
    to: Annotated[str, Field(pattern=KEY)]
    type: Literal["NEXT", "CHOICE", "BRANCH"]
    label: Annotated[str, Field(max_length=200)] = ""
    order: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    condition: Annotated[str, Field(max_length=conditions.MAX_CONDITION_LENGTH)] = ""
    effects: Annotated[list[_Effect], Field(max_length=32)] = []
    metadata: dict[str, Json] = {}


class _Scene(_Strict):
    display_name: Annotated[str, Field(min_length=1, max_length=200)]
    ifid: Annotated[str, Field(pattern=IFID)] = ""
    description: Annotated[str, Field(max_length=4000)] = ""
    tags: Annotated[
        list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]], Field(max_length=32)
    ] = []
    start: Annotated[str, Field(pattern=KEY)] | None = None


class _Manifest(_Strict):
    format: Literal["pixsim-scene/1"]
    scene: _Scene
    variables: Annotated[list[_Variable], Field(max_length=64)] = []
    nodes: Annotated[list[_Node], Field(max_length=domain.MAX_NODES)]
    connections: Annotated[list[_Connection], Field(max_length=domain.MAX_EDGES)] = []


def _path(location: Sequence[int | str]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def load_json(text: str) -> Any:
    """JSON as a document may hold it: finite numbers, integers a double holds exactly,
    and no deeper than `MAX_JSON_DEPTH`; ManifestError otherwise."""
    try:
        loaded = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite, parse_int=_exact_int
        )
    except (json.JSONDecodeError, RecursionError, ValueError) as error:
        raise ManifestError("", f"not JSON: {str(error)[:200]}") from None
    _check_depth(loaded, 0)
    return loaded


def _check_depth(value: Any, depth: int) -> None:
    """Not too deep, and only text PostgreSQL can store (JSON's escapes can say a NUL or a
    lone surrogate, which no later step may meet)."""
    if depth > MAX_JSON_DEPTH:
        raise ManifestError("", f"JSON nests deeper than {MAX_JSON_DEPTH}")
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise ManifestError("", f"a string {problem}")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _check_depth(key, depth)
            _check_depth(inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            _check_depth(inner, depth + 1)


def _exact_int(text: str) -> int:
    if len(text.lstrip("-")) > 16 or abs(int(text)) > 2**53:
        raise ManifestError("", f"{text[:40]} is too large an integer")
    return int(text)


def parse_json(content: bytes) -> dict[str, Any]:
    if len(content) > MAX_DOCUMENT_BYTES:
        raise ManifestError("", f"a document is at most {MAX_DOCUMENT_BYTES} bytes")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError("", f"not UTF-8: {error}") from None
    document = load_json(text)
    if not isinstance(document, dict):
        raise ManifestError("", "a manifest is a JSON object")
    return document


def _no_constant(name: str) -> None:
    raise ManifestError("", f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ManifestError("", f"{text[:40]} is too large a number")
    return value


def from_manifest(document: Mapping[str, Any], new_id: Callable[[], str]) -> SceneData:
    """The scene a manifest describes, under new ids; ManifestError says what does not fit."""
    try:
        manifest = _Manifest.model_validate(document)
    except PydanticError as error:
        first = error.errors()[0]
        raise ManifestError(_path(first["loc"]), first["msg"]) from None
    variables: list[Variable] = []
    for index, declared in enumerate(manifest.variables):
        kind = VariableType(declared.type)
        if conditions.type_of_value(declared.initial) is not kind:
            raise ManifestError(
                f"variables[{index}].initial", f"a {kind.lower()} variable starts with one"
            )
        if declared.name in {v.name for v in variables}:
            raise ManifestError(f"variables[{index}].name", f"{declared.name} is declared twice")
        variables.append(Variable(declared.name, kind, conditions.as_type(kind, declared.initial)))
    graph = Graph()
    ids: dict[str, str] = {}
    for index, node in enumerate(manifest.nodes):
        if node.key in ids:
            raise ManifestError(f"nodes[{index}].key", f"{node.key!r} names two nodes")
        ids[node.key] = new_id()
        x, y = (float(v) for v in node.position)
        domain.add_node(
            graph,
            Node(
                ids[node.key],
                node.asset.removeprefix("assets/") if node.asset else "",
                order=node.order,
                x=x,
                y=y,
                metadata=dict(node.metadata),
            ),
        )
    for index, connection in enumerate(manifest.connections):
        where = f"connections[{index}]"
        for end, key in (("from", connection.from_), ("to", connection.to)):
            if key not in ids:
                raise ManifestError(f"{where}.{end}", f"no node has the key {key!r}")
        try:
            if connection.condition.strip():
                conditions.parse(connection.condition)
            domain.add_edge(
                graph,
                Edge(
                    new_id(),
                    ids[connection.from_],
                    ids[connection.to],
                    EdgeType(connection.type),
                    label=connection.label,
                    metadata=dict(connection.metadata),
                    order=connection.order,
                    condition=connection.condition,
                    effects=tuple(
                        _effect(f"{where}.effects[{i}]", e)
                        for i, e in enumerate(connection.effects)
                    ),
                ),
            )
        except conditions.ConditionSyntaxError as error:
            raise ManifestError(f"{where}.condition", str(error)) from None
        except Rejected as error:
            raise ManifestError(where, str(error)) from None
    start = manifest.scene.start
    if start is not None:
        if start not in ids:
            raise ManifestError("scene.start", f"no node has the key {start!r}")
        graph.start_id = ids[start]
    return SceneData(
        manifest.scene.display_name,
        manifest.scene.description,
        list(manifest.scene.tags),
        variables,
        graph,
        {node_id: key for key, node_id in ids.items()},
        manifest.scene.ifid.upper(),
    )


def _effect(where: str, effect: _Effect) -> Effect:
    op = EffectOp(effect.op)
    value = conditions.from_json(effect.value)
    if op is EffectOp.INCREMENT and not isinstance(value, float):
        raise ManifestError(f"{where}.value", "an increment is a number")
    return Effect(effect.variable, op, value)


# ---- the playable folder ------------------------------------------------------------


def clip_path(asset_id: str, mime_type: str) -> str:
    extension = {
        "video/mp4": "mp4",
        "video/webm": "webm",
        "video/quicktime": "mov",
        "image/png": "png",
        "image/jpeg": "jpg",
        "image/webp": "webp",
        "image/gif": "gif",
    }.get(mime_type, "bin")
    return f"clips/{asset_id}.{extension}"


def player_html(manifest: Mapping[str, Any], clips: Mapping[str, Mapping[str, str]]) -> bytes:
    """index.html: the player with the manifest and the clips' paths inside it, so it opens
    from disk (a page read from file:// may not fetch its neighbours)."""
    package = resources.files("pixsim_scene") / "player"
    data = json.dumps({"manifest": manifest, "clips": clips}, sort_keys=True, ensure_ascii=True)
    # No `<`, `>` or `&` at all: nothing a label says can end or change the script element.
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = html.escape(str(manifest["scene"]["display_name"]))
    parts = {
        "title": title,
        "style": (package / "player.css").read_text(),
        "script": (package / "player.js").read_text(),
        "data": data,
    }
    page = (package / "index.html").read_text()
    # One pass: nothing substituted is read for placeholders again.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], page).encode()
