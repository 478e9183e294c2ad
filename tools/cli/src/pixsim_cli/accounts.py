"""`pixsim account ...` (admin): the provider accounts the gateway submits with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from google.protobuf import field_mask_pb2
from rich.table import Table

from pixsim.provider.v1 import provider_gateway_service_pb2 as pb
from pixsim_cli.connection import CliError, Exit
from pixsim_cli.output import console
from pixsim_cli.state import session

app = typer.Typer(help="Provider accounts (admin).", no_args_is_help=True)


def accounts_table(accounts: list[pb.Account]) -> Table:
    table = Table("account", "provider", "label", "state", "credits", "in flight", box=None)
    for account in accounts:
        table.add_row(
            account.name,
            account.provider_id,
            account.label,
            pb.Account.State.Name(account.state).removeprefix("STATE_"),
            str(account.credits),
            f"{account.in_flight}/{account.max_concurrency}",
        )
    return table


@app.command("list")
def list_(provider: Annotated[str, typer.Option()] = "") -> None:
    """List provider accounts (their credentials are never shown)."""
    connection, out = session(admin=True)
    answer = connection.call(
        connection.gateway.ListAccounts, pb.ListAccountsRequest(provider_id=provider)
    )
    out.show(answer, lambda: console.print(accounts_table(list(answer.accounts))))


@app.command()
def create(
    provider: Annotated[str, typer.Option()],
    api_key: Annotated[str, typer.Option(help="The provider's API key (stored encrypted).")],
    label: Annotated[str, typer.Option()] = "",
    credits: Annotated[int, typer.Option(min=0)] = 0,
    max_concurrency: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Add a provider account."""
    connection, out = session(admin=True)
    account = connection.call(
        connection.gateway.CreateAccount,
        pb.CreateAccountRequest(
            account=pb.Account(
                provider_id=provider,
                label=label,
                credentials={"api_key": api_key},
                credits=credits,
                max_concurrency=max_concurrency,
            )
        ),
    )
    out.show(account, lambda: console.print(accounts_table([account])))


@app.command()
def update(
    name: str,
    label: Annotated[str | None, typer.Option()] = None,
    credits: Annotated[int | None, typer.Option(min=0)] = None,
    max_concurrency: Annotated[int | None, typer.Option(min=1)] = None,
    priority: Annotated[int | None, typer.Option()] = None,
    api_key: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Change the fields given, and only those."""
    connection, out = session(admin=True)
    account = pb.Account(name=name if name.startswith("accounts/") else f"accounts/{name}")
    paths = []
    for field_name, value in (
        ("label", label),
        ("credits", credits),
        ("max_concurrency", max_concurrency),
        ("priority", priority),
    ):
        if value is not None:
            setattr(account, field_name, value)
            paths.append(field_name)
    if api_key is not None:
        account.credentials["api_key"] = api_key
        paths.append("credentials")
    if not paths:
        raise CliError("name at least one field to change", Exit.INVALID)
    updated = connection.call(
        connection.gateway.UpdateAccount,
        pb.UpdateAccountRequest(account=account, update_mask=field_mask_pb2.FieldMask(paths=paths)),
    )
    out.show(updated, lambda: console.print(accounts_table([updated])))


def _account_name(name: str) -> str:
    return name if name.startswith("accounts/") else f"accounts/{name}"


def _changed(rpc: Callable[[Any], Any], request: Any) -> None:
    """Call the gateway's account-changing `rpc` (admin) and show the account it answers."""
    connection, out = session(admin=True)
    account = connection.call(rpc(connection.gateway), request)
    out.show(account, lambda: console.print(accounts_table([account])))


@app.command()
def disable(name: str) -> None:
    """Take the account out of rotation; its running tasks finish."""
    _changed(
        lambda gateway: gateway.DisableAccount, pb.DisableAccountRequest(name=_account_name(name))
    )


@app.command()
def drain(name: str) -> None:
    """Send no new attempt to the account; the running ones finish (watch `in flight`)."""
    _changed(lambda gateway: gateway.DrainAccount, pb.DrainAccountRequest(name=_account_name(name)))


@app.command()
def enable(name: str) -> None:
    """Put a DISABLED or DRAINING account back in rotation."""
    _changed(
        lambda gateway: gateway.EnableAccount, pb.EnableAccountRequest(name=_account_name(name))
    )
