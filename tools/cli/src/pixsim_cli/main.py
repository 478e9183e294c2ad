"""pixsim: the command-line client of PixSim7."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.exceptions import TyperException

from pixsim_cli import accounts, assets, jobs, play, providers, scenes, usage
from pixsim_cli.connection import DEFAULT_KEY, CliError
from pixsim_cli.output import errors
from pixsim_cli.state import OPTIONS, close_all
from pixsim_common.auth import ADMIN_ROLE, issue_token

typer_app = typer.Typer(
    help="The PixSim7 command-line client. Exit codes: 0 ok, 1 the job or scene failed, "
    "2 invalid, 3 not found, 4 denied, 5 conflict, 6 unavailable, 7 error.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
typer_app.add_typer(jobs.app, name="job")
typer_app.add_typer(assets.app, name="asset")
typer_app.add_typer(scenes.app, name="scene")
typer_app.add_typer(accounts.app, name="account")
typer_app.add_typer(providers.app, name="provider")
typer_app.command()(play.play)
typer_app.command()(usage.usage)
typer_app.add_typer(usage.budget_app, name="budget")


@typer_app.callback()
def main(
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    token: Annotated[
        str | None, typer.Option(help="Bearer token; default $PIXSIM_TOKEN.", envvar=None)
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(help="Without a token: sign one for this user with the local key."),
    ] = None,
) -> None:
    """Talk to a running PixSim7 (`make run` starts one locally)."""
    OPTIONS.json, OPTIONS.token, OPTIONS.user = json, token, user


@typer_app.command()
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


def app() -> None:
    """The `pixsim` entry point: a failed call is a message on stderr and its exit code."""
    try:
        code = typer_app(standalone_mode=False)
    except CliError as error:
        errors.print(f"[red]error[/] {error}", highlight=False, soft_wrap=True)
        for line in error.details:
            if line not in str(error):
                errors.print(f"  {line}", highlight=False, soft_wrap=True)
        code = error.exit_code
    except (click.ClickException, TyperException) as error:  # usage: typer's message, exit 2
        # Typer 0.2x parses with its own copy of click, whose errors are TyperExceptions.
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            errors.print(f"[red]error[/] {error.format_message()}", highlight=False)
        code = error.exit_code
    except (click.exceptions.Abort, typer.Abort):
        code = 130
    finally:
        close_all()
    sys.exit(code if isinstance(code, int) else 0)
