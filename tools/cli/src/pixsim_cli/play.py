"""`pixsim play SCENE`: play a scene in the terminal. Each clip is shown by its URL (or the
command that downloads it), the choices offered when it ends are numbered, and a lone branch
or next connection is taken without asking, as a player would when the clip ends."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from pixsim.scene.v1 import scene_service_pb2 as pb
from pixsim_cli.connection import CliError, Connection, Exit
from pixsim_cli.output import console, short
from pixsim_cli.scenes import scene_name
from pixsim_cli.state import session

ASKED = pb.SceneConnection.TYPE_CHOICE
RETRIES = 3  # a step sent again is answered, never taken twice: retrying is safe


def describe_value(value: pb.SceneValue) -> str:
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "number_value":
        return f"{value.number_value:g}"
    return repr(value.string_value)


def titles(connection: Connection, scene: str) -> dict[str, str]:
    """Each scene asset's title (its metadata's), for showing where the player is."""
    found: dict[str, str] = {}
    token = ""
    while True:
        page = connection.call(
            connection.scenes.GetSceneGraph,
            pb.GetSceneGraphRequest(name=scene, page_token=token),
        )
        for node in page.assets:
            title = node.metadata.fields.get("title")
            if title is not None and title.string_value:
                found[node.name] = title.string_value
        token = page.next_page_token
        if not token:
            return found


def show(at: pb.Playthrough, named: dict[str, str]) -> None:
    clip = at.clip
    where = clip.url or (f"pixsim asset download {clip.asset}" if clip.asset else "no clip")
    here = named.get(at.current_scene_asset, short(at.current_scene_asset))
    console.print(f"[bold]▶ {here}[/]  {clip.asset}  {where}", soft_wrap=True)
    if at.variables:
        console.print(
            "  " + "  ".join(f"{v.name}={describe_value(v.value)}" for v in at.variables),
            highlight=False,
        )


def choose(connection: Connection, at: pb.Playthrough, choice: str) -> pb.Playthrough:
    request = pb.ChooseRequest(name=at.name, step=at.step + 1, choice=choice)
    for attempt in range(RETRIES):
        try:
            return connection.call(connection.scenes.Choose, request)
        except CliError as error:
            if error.exit_code != Exit.UNAVAILABLE or attempt == RETRIES - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def pick(
    at: pb.Playthrough, picks: list[int] | None, named: dict[str, str]
) -> pb.PlaythroughChoice | None:
    """The choice to take now: a lone unasked one; else the next of `picks` when scripted, or
    the viewer's answer. None when the viewer quits or the script ran out."""
    choices = list(at.choices)
    if len(choices) == 1 and choices[0].type != ASKED:
        kind = pb.SceneConnection.Type.Name(choices[0].type).removeprefix("TYPE_").lower()
        there = named.get(choices[0].to_scene_asset, short(choices[0].to_scene_asset))
        console.print(f"  → {kind} to {there}", highlight=False)
        return choices[0]
    for number, choice in enumerate(choices, 1):
        console.print(f"  {number}) {choice.label}", highlight=False)
    if picks is not None:
        if not picks:
            return None
        number = picks.pop(0)
    else:
        answer = typer.prompt(f"choose [1-{len(choices)}, q]", default="q", show_default=False)
        if answer.strip().lower() in ("q", "quit"):
            return None
        number = int(answer) if answer.strip().isdigit() else 0
    if not 1 <= number <= len(choices):
        raise CliError(f"no choice {number}: pick 1 to {len(choices)}", Exit.INVALID)
    console.print(f"  → {choices[number - 1].label}", highlight=False)
    return choices[number - 1]


def play(
    scene: Annotated[str, typer.Argument(help="The scene to play (its name or id).")] = "",
    picks: Annotated[
        list[int] | None,
        typer.Option(
            "--choose",
            help="Pick choice N (1-based) at the next asked step, without a prompt; repeat "
            "for each. Play stops where they run out.",
        ),
    ] = None,
    resume: Annotated[
        str, typer.Option(help="Go on with this playthrough instead of starting one.")
    ] = "",
) -> None:
    """Play a scene in the terminal (exit 1 when the playthrough failed)."""
    if not scene and not resume:
        raise CliError("name a scene to play, or --resume a playthrough", Exit.INVALID)
    connection, out = session()
    if resume:
        name = resume if resume.startswith("playthroughs/") else f"playthroughs/{resume}"
        at = connection.call(connection.scenes.GetPlaythrough, pb.GetPlaythroughRequest(name=name))
    else:
        at = connection.call(
            connection.scenes.StartPlaythrough,
            pb.StartPlaythroughRequest(scene=scene_name(scene)),
        )
    steps = [at]
    scripted = list(picks) if picks is not None else None
    console.quiet = out.json  # --json prints the steps alone
    console.print(f"[dim]{at.name} of {at.scene}[/]")
    named = titles(connection, at.scene)
    while at.state == pb.Playthrough.STATE_ACTIVE:
        show(at, named)
        choice = pick(at, scripted, named)
        if choice is None:
            console.print(
                f"stopped at step {at.step}; go on with `pixsim play --resume {short(at.name)}`"
            )
            break
        at = choose(connection, at, choice.connection)
        steps.append(at)
    if at.state == pb.Playthrough.STATE_ENDED:
        show(at, named)
        console.print(f"■ the end, after {at.step} step(s)")
    console.quiet = False
    out.show({"steps": steps}, lambda: None)
    if at.state == pb.Playthrough.STATE_FAILED:
        raise CliError(f"the playthrough failed: {at.failure_reason}", Exit.FAILED)
