"""pixsim: the command-line client of PixSim7."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pixsim_common.auth import ADMIN_ROLE, issue_token

app = typer.Typer(help="The PixSim7 command-line client.", no_args_is_help=True)

DEFAULT_KEY = Path(".run") / "keys" / "signing-key.pem"


@app.callback()
def main() -> None:
    """Talk to a running PixSim7 (`make run` starts one locally)."""


@app.command()
def token(
    user: Annotated[str, typer.Option(help="The user the token speaks for.")],
    admin: Annotated[bool, typer.Option(help="Add the admin role.")] = False,
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.", min=1)] = 3600,
    key: Annotated[
        Path | None,
        typer.Option(
            help="Private signing key (PEM); default $PIXSIM_SIGNING_KEY or the "
            "local stack's .run/keys/signing-key.pem."
        ),
    ] = None,
) -> None:
    """Print a token signed with the local key, for --token, PIXSIM_TOKEN or grpcurl."""
    path = key or Path(os.environ.get("PIXSIM_SIGNING_KEY", DEFAULT_KEY))
    if not path.exists():
        typer.echo(f"no signing key at {path}; start the local stack with `make run`", err=True)
        raise typer.Exit(2)
    roles = [ADMIN_ROLE] if admin else []
    typer.echo(issue_token(path.read_text(), user_id=user, roles=roles, ttl_seconds=ttl))
