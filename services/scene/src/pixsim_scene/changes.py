"""A scene write's changes as the service reads them from requests: resource names parsed
(a name in another scene is refused), update masks, the elements built from messages, and
`referenced`, which says what part of the graph a batch needs loaded. Pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import field_mask_pb2, json_format

from pixsim.scene.v1 import scene_service_pb2 as pb
from pixsim_common.errors import FieldViolation, InvalidArgument
from pixsim_scene.conditions import (
    ConditionSyntaxError,
    Effect,
    EffectOp,
    Value,
    Variable,
    VariableType,
    parse,
    type_of_value,
)
from pixsim_scene.domain import Edge, EdgeType, Node, Rejected
from pixsim_scene.repository import Refs

UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ELEMENT_NAME = re.compile(rf"^scenes/({UUID})/(assets|connections)/({UUID})$")
SCENE_NAME = re.compile(rf"^scenes/({UUID})$")

SCENE_FIELDS = (
    "display_name",
    "description",
    "tags",
    "is_template",
    "start_scene_asset",
    "variables",
)
NODE_FIELDS = ("asset", "order", "position", "metadata")
EDGE_FIELDS = (
    "from_scene_asset",
    "to_scene_asset",
    "type",
    "label",
    "metadata",
    "order",
    "condition",
    "effects",
)
VARIABLE_TYPES = {
    VariableType.BOOL: pb.SceneVariable.TYPE_BOOL,
    VariableType.NUMBER: pb.SceneVariable.TYPE_NUMBER,
    VariableType.STRING: pb.SceneVariable.TYPE_STRING,
}


@dataclass(frozen=True)
class Change:
    """One change of a write, and where its fields sit in the request (for errors)."""

    kind: str  # a `SceneChange.change` oneof name
    value: Any  # SceneAsset, SceneConnection, or an element name for deletes
    path: str
    mask: field_mask_pb2.FieldMask | None = None


def node_name(scene_id: str, node_id: str) -> str:
    return f"scenes/{scene_id}/assets/{node_id}" if node_id else ""


def edge_name(scene_id: str, edge_id: str) -> str:
    return f"scenes/{scene_id}/connections/{edge_id}"


def node_to_proto(scene_id: str, node: Node) -> pb.SceneAsset:
    message = pb.SceneAsset(
        name=node_name(scene_id, node.id),
        asset=f"assets/{node.asset_id}" if node.asset_id else "",
        order=node.order,
        position=pb.CanvasPosition(x=node.x, y=node.y),
        detached=node.detached,
    )
    message.metadata.update(node.metadata)
    return message


def edge_type_to_proto(kind: EdgeType) -> pb.SceneConnection.Type.ValueType:
    return pb.SceneConnection.Type.Value(f"TYPE_{kind.value}")


def edge_to_proto(scene_id: str, edge: Edge) -> pb.SceneConnection:
    message = pb.SceneConnection(
        name=edge_name(scene_id, edge.id),
        from_scene_asset=node_name(scene_id, edge.from_id),
        to_scene_asset=node_name(scene_id, edge.to_id),
        type=edge_type_to_proto(edge.type),
        label=edge.label,
        order=edge.order,
        condition=edge.condition,
        effects=[effect_to_proto(effect) for effect in edge.effects],
    )
    message.metadata.update(edge.metadata)
    return message


def value_to_proto(value: Value) -> pb.SceneValue:
    if isinstance(value, bool):
        return pb.SceneValue(bool_value=value)
    if isinstance(value, float | int):
        return pb.SceneValue(number_value=float(value))
    return pb.SceneValue(string_value=value)


def value_from_proto(message: pb.SceneValue) -> Value:
    kind = message.WhichOneof("kind")
    assert kind is not None  # protovalidate requires the oneof
    value: Value = getattr(message, kind)
    return value


def variable_to_proto(variable: Variable) -> pb.SceneVariable:
    return pb.SceneVariable(
        name=variable.name,
        type=VARIABLE_TYPES[variable.type],
        initial=value_to_proto(variable.initial),
    )


def effect_to_proto(effect: Effect) -> pb.SceneEffect:
    if effect.op is EffectOp.INCREMENT:
        return pb.SceneEffect(variable=effect.variable, increment=float(effect.value))
    return pb.SceneEffect(variable=effect.variable, set=value_to_proto(effect.value))


def variables_from(messages: Sequence[pb.SceneVariable], path: str) -> list[Variable]:
    """The scene's variables; names are unique, and each starts with a value of its type."""
    variables: list[Variable] = []
    seen: set[str] = set()
    for index, message in enumerate(messages):
        where = f"{path}[{index}]"
        if message.name in seen:
            raise invalid(f"{where}.name", f"{message.name} is declared twice", "DUPLICATE")
        seen.add(message.name)
        kind = next(k for k, v in VARIABLE_TYPES.items() if v == message.type)
        initial = value_from_proto(message.initial)
        if type_of_value(initial) is not kind:
            why = f"a {kind.lower()} variable starts with a {kind.lower()}"
            raise invalid(f"{where}.initial", why, "TYPE_MISMATCH")
        variables.append(Variable(message.name, kind, initial))
    return variables


def effects_from(messages: Sequence[pb.SceneEffect]) -> tuple[Effect, ...]:
    """As written; whether each fits its variable is ValidateScene's to say (the variable
    may be declared after the connection is written)."""
    effects = []
    for message in messages:
        if message.WhichOneof("op") == "increment":
            effects.append(Effect(message.variable, EffectOp.INCREMENT, message.increment))
        else:
            effects.append(Effect(message.variable, EffectOp.SET, value_from_proto(message.set)))
    return tuple(effects)


def invalid(path: str, why: str, reason: str) -> InvalidArgument:
    return InvalidArgument(why, [FieldViolation(path, why, reason)], reason=reason)


def parse_scene(name: str, field: str) -> str:
    """The id in a `scenes/{id}` that arrived inside a message (which no rule checked)."""
    match = SCENE_NAME.match(name)
    if match is None:
        raise invalid(field, f"{name[:80]!r} is not a scene name (scenes/<uuid>)", "BAD_NAME")
    return match.group(1)


def parse_element(name: str, kind: str, field: str) -> tuple[str, str]:
    """(scene id, element id) of a `scenes/{id}/{kind}/{id}`; anything else is refused."""
    match = ELEMENT_NAME.match(name)
    if match is None or match.group(2) != kind:
        why = f"{name[:80]!r} is not a scene {kind[:-1]} name (scenes/<uuid>/{kind}/<uuid>)"
        raise invalid(field, why, "BAD_NAME")
    return match.group(1), match.group(3)


def element_id(scene_id: str, name: str, kind: str, path: str) -> str:
    """The id in `scenes/{scene_id}/{kind}/{id}`; a name in another scene is refused."""
    owner, found = parse_element(name, kind, path)
    if owner != scene_id:
        raise invalid(path, f"{name} is not in scenes/{scene_id}", "NOT_IN_SCENE")
    return found


def masked(mask: field_mask_pb2.FieldMask | None, allowed: Sequence[str], path: str) -> list[str]:
    """The top-level fields an update writes: those named (an empty mask or `*` is all)."""
    if mask is None or not mask.paths or list(mask.paths) == ["*"]:
        return list(allowed)
    fields = []
    for field_path in mask.paths:
        top = field_path.split(".", 1)[0]
        if top not in allowed or (field_path != top and top != "position"):
            raise invalid(path, f"{field_path!r} cannot be updated", "INVALID_FIELD_MASK")
        fields.append(top)
    return fields


def node_from(current: Node, message: pb.SceneAsset, fields: list[str]) -> Node:
    node = current
    if "asset" in fields:
        node = replace(node, asset_id=message.asset.removeprefix("assets/"), detached=False)
    if "order" in fields:
        node = replace(node, order=message.order)
    if "position" in fields:
        node = replace(node, x=message.position.x, y=message.position.y)
    if "metadata" in fields:
        node = replace(node, metadata=json_format.MessageToDict(message.metadata))
    return node


def edge_from(
    scene_id: str, current: Edge, message: pb.SceneConnection, fields: list[str], path: str
) -> Edge:
    def end(field_name: str, current_id: str) -> str:
        if field_name not in fields:
            return current_id
        name = getattr(message, field_name)
        if not name:
            raise Rejected("a connection needs both ends", field=field_name, reason="REQUIRED")
        return element_id(scene_id, name, "assets", f"{path}.{field_name}")

    edge = replace(
        current,
        from_id=end("from_scene_asset", current.from_id),
        to_id=end("to_scene_asset", current.to_id),
    )
    if "type" in fields:
        if message.type == pb.SceneConnection.TYPE_UNSPECIFIED:
            raise Rejected("a connection needs a type", field="type", reason="REQUIRED")
        edge = replace(
            edge, type=EdgeType(pb.SceneConnection.Type.Name(message.type).removeprefix("TYPE_"))
        )
    if "label" in fields:
        edge = replace(edge, label=message.label)
    if "order" in fields:
        edge = replace(edge, order=message.order)
    if "metadata" in fields:
        edge = replace(edge, metadata=json_format.MessageToDict(message.metadata))
    if "condition" in fields:
        try:
            if message.condition.strip():
                parse(message.condition)
        except ConditionSyntaxError as error:
            raise invalid(f"{path}.condition", str(error), "CONDITION_SYNTAX") from error
        edge = replace(edge, condition=message.condition)
    if "effects" in fields:
        edge = replace(edge, effects=effects_from(message.effects))
    return edge


def _id_in(scene_id: str, name: str, kind: str) -> str | None:
    """The element id of a name in this scene, or None (the change itself refuses it)."""
    match = ELEMENT_NAME.match(name)
    if match is None or match.group(1) != scene_id or match.group(2) != kind:
        return None
    return match.group(3)


def _mentioned(fields: Sequence[str], name: str, message: Any) -> bool:
    return name in fields and bool(getattr(message, name))


def referenced(scene_id: str, changes: Sequence[Change]) -> Refs:
    """Every element a batch names (ids of creates included), the nodes it deletes, and the
    ends its connections get: what `repository.load_part` loads for it."""
    refs = Refs()
    for index, change in enumerate(changes):
        value = change.value
        if change.kind == "delete_asset":
            found = _id_in(scene_id, value, "assets")
            if found:
                refs.nodes.add(found)
                refs.deleted_nodes.add(found)
        elif change.kind == "delete_connection":
            found = _id_in(scene_id, value, "connections")
            if found:
                refs.edges.add(found)
        elif change.kind in ("create_asset", "update_asset"):
            found = _id_in(scene_id, value.name, "assets")
            if found:
                refs.nodes.add(found)
        elif change.kind in ("create_connection", "update_connection"):
            fields = (
                list(EDGE_FIELDS)
                if change.kind == "create_connection"
                else _safe_mask(change.mask, EDGE_FIELDS)
            )
            ends = [
                _id_in(scene_id, value.from_scene_asset, "assets")
                if _mentioned(fields, "from_scene_asset", value)
                else None,
                _id_in(scene_id, value.to_scene_asset, "assets")
                if _mentioned(fields, "to_scene_asset", value)
                else None,
            ]
            refs.nodes.update(end for end in ends if end)
            found = _id_in(scene_id, value.name, "connections")
            if found:
                refs.edges.add(found)
            # An unnamed new connection still has ends whose duplicates must be loaded.
            refs.ends[found or f"#{index}"] = (ends[0], ends[1])
    return refs


def _safe_mask(mask: field_mask_pb2.FieldMask | None, allowed: Sequence[str]) -> list[str]:
    try:
        return masked(mask, allowed, "")
    except InvalidArgument:  # refused, with its path, when the change is applied
        return []
