"""`pixsim scene ...`: build scenes from assets and check them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import field_mask_pb2
from rich.table import Table

from pixsim.scene.v1 import scene_service_pb2 as pb
from pixsim_cli.assets import save_content
from pixsim_cli.connection import CliError, Exit
from pixsim_cli.output import console
from pixsim_cli.state import session

app = typer.Typer(help="Scenes: graphs of assets.", no_args_is_help=True)


def scene_name(value: str) -> str:
    return value if value.startswith("scenes/") else f"scenes/{value}"


VARIABLE_TYPES = {
    "bool": pb.SceneVariable.TYPE_BOOL,
    "number": pb.SceneVariable.TYPE_NUMBER,
    "string": pb.SceneVariable.TYPE_STRING,
}


def parse_value(text: str) -> pb.SceneValue:
    """`true`/`false` a bool, a number a number, `"..."` or anything else a string."""
    if text in ("true", "false"):
        return pb.SceneValue(bool_value=text == "true")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return pb.SceneValue(string_value=text[1:-1])
    try:
        return pb.SceneValue(number_value=float(text))
    except ValueError:
        return pb.SceneValue(string_value=text)


def parse_variable(text: str) -> pb.SceneVariable:
    """`name=type:initial`, e.g. `has_key=bool:false`, `tries=number:0`, `mood=string:calm`."""
    name, _, rest = text.partition("=")
    kind, colon, initial = rest.partition(":")
    if not name or not colon or kind not in VARIABLE_TYPES:
        raise CliError(
            f"{text!r} is not name=type:initial (type: bool, number or string)", Exit.INVALID
        )
    value = pb.SceneValue(string_value=initial) if kind == "string" else parse_value(initial)
    return pb.SceneVariable(name=name, type=VARIABLE_TYPES[kind], initial=value)


def parse_effect(text: str, increment: bool) -> pb.SceneEffect:
    """`variable=value` (`--set`) or `variable=amount` (`--increment`)."""
    variable, equals, value = text.partition("=")
    if not variable or not equals:
        raise CliError(f"{text!r} is not variable=value", Exit.INVALID)
    if not increment:
        return pb.SceneEffect(variable=variable, set=parse_value(value))
    try:
        return pb.SceneEffect(variable=variable, increment=float(value))
    except ValueError:
        raise CliError(f"{value!r} is not a number to increment by", Exit.INVALID) from None


def describe_effect(effect: pb.SceneEffect) -> str:
    if effect.WhichOneof("op") == "increment":
        return f"{effect.variable} += {effect.increment:g}"
    value = effect.set
    shown = {
        "bool_value": str(value.bool_value).lower(),
        "number_value": f"{value.number_value:g}",
        "string_value": f'"{value.string_value}"',
    }.get(value.WhichOneof("kind") or "", "")
    return f"{effect.variable} = {shown}"


def scenes_table(scenes: list[pb.Scene]) -> Table:
    table = Table("scene", "name", "tags", "template", "etag", box=None)
    for scene in scenes:
        table.add_row(
            scene.name, scene.display_name, ",".join(scene.tags), str(scene.is_template), scene.etag
        )
    return table


def show_graph(graph: pb.SceneGraph) -> None:
    console.print(scenes_table([graph.scene]))
    nodes = Table("scene asset", "asset", "order", "x", "y", "detached", box=None)
    for node in graph.assets:
        nodes.add_row(
            node.name,
            node.asset,
            str(node.order),
            f"{node.position.x:g}",
            f"{node.position.y:g}",
            "yes" if node.detached else "",
        )
    console.print(nodes)
    edges = Table("connection", "from", "to", "type", "label", "if", "then", box=None)
    for edge in graph.connections:
        edges.add_row(
            edge.name.rsplit("/", 1)[-1],
            edge.from_scene_asset.rsplit("/", 1)[-1],
            edge.to_scene_asset.rsplit("/", 1)[-1],
            pb.SceneConnection.Type.Name(edge.type).removeprefix("TYPE_").lower(),
            edge.label,
            edge.condition,
            "; ".join(describe_effect(effect) for effect in edge.effects),
        )
    console.print(edges)


@app.command()
def create(
    name: Annotated[str, typer.Option(help="Its display name.")],
    description: Annotated[str, typer.Option()] = "",
    tag: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    template: Annotated[bool, typer.Option(help="Others may clone it.")] = False,
    variable: Annotated[
        list[str] | None,
        typer.Option(help="name=type:initial, e.g. has_key=bool:false (repeatable)."),
    ] = None,
) -> None:
    """Create an empty scene."""
    connection, out = session()
    scene = connection.call(
        connection.scenes.CreateScene,
        pb.CreateSceneRequest(
            scene=pb.Scene(
                display_name=name,
                description=description,
                tags=tag or [],
                is_template=template,
                variables=[parse_variable(v) for v in variable or []],
            )
        ),
    )
    out.show(scene, lambda: console.print(scenes_table([scene])))


@app.command()
def get(name: str) -> None:
    """Show a scene."""
    connection, out = session()
    scene = connection.call(connection.scenes.GetScene, pb.GetSceneRequest(name=scene_name(name)))
    out.show(scene, lambda: console.print(scenes_table([scene])))


@app.command()
def graph(name: str) -> None:
    """Show a scene with its assets and connections."""
    connection, out = session()
    answer = connection.call(
        connection.scenes.GetSceneGraph, pb.GetSceneGraphRequest(name=scene_name(name))
    )
    out.show(answer, lambda: show_graph(answer))


@app.command()
def validate(name: str) -> None:
    """List a scene's problems (exit 1 when there is an error among them)."""
    connection, out = session()
    answer = connection.call(
        connection.scenes.ValidateScene, pb.ValidateSceneRequest(name=scene_name(name))
    )

    def human() -> None:
        if not answer.problems:
            console.print("no problems")
            return
        table = Table("severity", "problem", "subject", "message", box=None)
        for problem in answer.problems:
            table.add_row(
                pb.SceneProblem.Severity.Name(problem.severity).removeprefix("SEVERITY_"),
                problem.code,
                problem.subject,
                problem.message,
            )
        console.print(table)

    out.show(answer, human)
    if any(p.severity == pb.SceneProblem.SEVERITY_ERROR for p in answer.problems):
        raise typer.Exit(Exit.FAILED)


@app.command()
def clone(
    name: str, new_name: Annotated[str, typer.Option("--name", help="The copy's name.")] = ""
) -> None:
    """Copy a template (or a scene of yours) into a new scene."""
    connection, out = session()
    answer = connection.call(
        connection.scenes.CloneScene,
        pb.CloneSceneRequest(name=scene_name(name), display_name=new_name),
    )
    out.show(answer, lambda: show_graph(answer))


@app.command("add-asset")
def add_asset(
    scene: str,
    asset: str,
    order: Annotated[int, typer.Option(min=0)] = 0,
    x: Annotated[float, typer.Option()] = 0.0,
    y: Annotated[float, typer.Option()] = 0.0,
    title: Annotated[
        str, typer.Option(help="Its name in play and in exports (a Twine passage's).")
    ] = "",
    ending: Annotated[bool, typer.Option(help="The story may end here.")] = False,
    etag: Annotated[str, typer.Option(help="Refuse the write if the scene changed since.")] = "",
) -> None:
    """Place one of your assets in a scene."""
    connection, out = session()
    placed = pb.SceneAsset(
        asset=asset if asset.startswith("assets/") else f"assets/{asset}",
        order=order,
        position=pb.CanvasPosition(x=x, y=y),
    )
    if title:
        placed.metadata["title"] = title
    if ending:
        placed.metadata["ending"] = True
    node = connection.call(
        connection.scenes.CreateSceneAsset,
        pb.CreateSceneAssetRequest(parent=scene_name(scene), etag=etag, scene_asset=placed),
    )
    out.show(node, lambda: console.print(node.name, soft_wrap=True))


@app.command()
def connect(
    scene: str,
    from_: Annotated[str, typer.Argument(metavar="FROM", help="A scene asset (name or id).")],
    to: Annotated[str, typer.Argument(help="A scene asset (name or id).")],
    kind: Annotated[str, typer.Option("--type", help="next, choice or branch.")] = "next",
    label: Annotated[str, typer.Option(help="What a viewer sees for a choice.")] = "",
    order: Annotated[
        int, typer.Option(min=0, help="Among its node's branches or choices, lower first.")
    ] = 0,
    condition: Annotated[
        str, typer.Option(help='Taken or offered only while it holds, e.g. "has_key".')
    ] = "",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="variable=value, applied (repeatable).")
    ] = None,
    increment: Annotated[
        list[str] | None, typer.Option(help="variable=amount, added after the sets (repeatable).")
    ] = None,
    etag: Annotated[str, typer.Option()] = "",
) -> None:
    """Join two scene assets with an edge."""
    connection, out = session()
    parent = scene_name(scene)

    def node(value: str) -> str:
        return value if value.startswith("scenes/") else f"{parent}/assets/{value}"

    type_key = f"TYPE_{kind.upper()}"
    if type_key not in pb.SceneConnection.Type.keys()[1:]:
        raise CliError(f"{kind!r} is not next, choice or branch", Exit.INVALID)
    edge = connection.call(
        connection.scenes.CreateSceneConnection,
        pb.CreateSceneConnectionRequest(
            parent=parent,
            etag=etag,
            connection=pb.SceneConnection(
                from_scene_asset=node(from_),
                to_scene_asset=node(to),
                type=pb.SceneConnection.Type.Value(type_key),
                label=label,
                order=order,
                condition=condition,
                effects=[parse_effect(e, increment=False) for e in set_ or []]
                + [parse_effect(e, increment=True) for e in increment or []],
            ),
        ),
    )
    out.show(edge, lambda: console.print(edge.name, soft_wrap=True))


def _inside(folder: Path, relative: str) -> Path:
    """`relative` under `folder`; a path that would leave it is refused."""
    target = (folder / relative).resolve()
    if relative.startswith("/") or not target.is_relative_to(folder.resolve()):
        raise CliError(f"the export names a path outside its folder: {relative!r}", Exit.ERROR)
    return target


@app.command()
def export(
    name: str,
    folder: Annotated[
        Path | None, typer.Option("--out", help="The folder to write; default <scene id>/.")
    ] = None,
    html: Annotated[
        bool, typer.Option("--html", help="A player that plays from disk, with the clips.")
    ] = False,
    twee: Annotated[
        bool, typer.Option("--twee", help="story.twee (Twee 3, SugarCube) for Twine.")
    ] = False,
) -> None:
    """Write a scene's manifest.json (or story.twee, or with --html its player and clips)."""
    if html and twee:
        raise CliError("--html or --twee, not both", Exit.INVALID)
    connection, out = session()
    scene = scene_name(name)
    kind = pb.SCENE_FORMAT_HTML if html else pb.SCENE_FORMAT_TWEE if twee else pb.SCENE_FORMAT_JSON
    answer = connection.call(
        connection.scenes.ExportScene, pb.ExportSceneRequest(name=scene, format=kind)
    )
    target = folder or Path(scene.removeprefix("scenes/"))
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for file in answer.files:
        path = _inside(target, file.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if file.asset:
            save_content(connection, file.asset, path)
        else:
            path.write_bytes(file.content)
        written.append(str(path))
    opened = target / "index.html"
    out.show(
        {"folder": str(target), "files": written},
        lambda: console.print(
            f"wrote {len(written)} file(s) to {target}/"
            + (f"; open {opened} in a browser" if html else ""),
            soft_wrap=True,
        ),
    )


@app.command("import")
def import_(
    document: Annotated[
        Path, typer.Argument(help="A manifest.json, or a .twee/.tw story (Twee 3).")
    ],
    new_name: Annotated[str, typer.Option("--name", help="The new scene's name.")] = "",
    attach: Annotated[
        list[str] | None,
        typer.Option(help="KEY=assets/<id>: the asset of the node (passage) KEY (repeatable)."),
    ] = None,
) -> None:
    """Make a new scene from a document; lists the scene assets still without an asset."""
    wanted = {}
    for item in attach or []:
        key, _, asset = item.partition("=")
        if not asset.startswith("assets/"):
            raise CliError(f"--attach {item!r}: write KEY=assets/<id>", Exit.INVALID)
        wanted[key] = asset
    connection, out = session()
    is_twee = document.suffix.lower() in (".twee", ".tw")
    answer = connection.call(
        connection.scenes.ImportScene,
        pb.ImportSceneRequest(
            format=pb.SCENE_FORMAT_TWEE if is_twee else pb.SCENE_FORMAT_JSON,
            content=document.read_bytes(),
            display_name=new_name,
        ),
    )
    unknown = sorted(set(wanted) - {u.key for u in answer.unattached})
    left = []
    for missing in answer.unattached:
        if missing.key not in wanted:
            left.append(missing)
            continue
        connection.call(
            connection.scenes.UpdateSceneAsset,
            pb.UpdateSceneAssetRequest(
                scene_asset=pb.SceneAsset(name=missing.scene_asset, asset=wanted[missing.key]),
                update_mask=field_mask_pb2.FieldMask(paths=["asset"]),
            ),
        )
    del answer.unattached[:]
    answer.unattached.extend(left)

    def human() -> None:
        console.print(answer.scene.name, soft_wrap=True)
        for missing in answer.unattached:
            console.print(
                f"  {missing.key}: no asset yet; attach one with --attach"
                f" '{missing.key}=assets/<id>' ({missing.scene_asset})",
                soft_wrap=True,
                highlight=False,
            )

    out.show(answer, human)
    if unknown:  # the scene is made; say what was not attached
        raise CliError(
            f"{answer.scene.name} is made, but no node without an asset has the key {unknown[0]!r}",
            Exit.INVALID,
        )
    if unknown:  # the scene is made; say what was not attached
        raise CliError(
            f"{answer.scene.name} is made, but no node without an asset has the key {unknown[0]!r}",
            Exit.INVALID,
        )
