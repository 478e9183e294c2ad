"""`pixsim provider ...`: the providers, whether their jobs are sent, and (admin) pausing
and resuming them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from pixsim.provider.v1 import provider_gateway_service_pb2 as pb
from pixsim_cli.output import console
from pixsim_cli.state import session

app = typer.Typer(help="Video providers: their state and circuit.", no_args_is_help=True)


def providers_table(providers: list[pb.Provider]) -> Table:
    table = Table("provider", "state", "circuit", "failures in a row", "why paused", box=None)
    for provider in providers:
        table.add_row(
            provider.name,
            pb.Provider.State.Name(provider.state).removeprefix("STATE_"),
            pb.Provider.Circuit.Name(provider.circuit).removeprefix("CIRCUIT_"),
            str(provider.consecutive_failures),
            provider.pause_reason,
        )
    return table


def _name(provider: str) -> str:
    return provider if provider.startswith("providers/") else f"providers/{provider}"


@app.command("list")
def list_() -> None:
    """Every provider, paused or active, and its circuit."""
    connection, out = session()
    answer = connection.call(connection.gateway.ListProviders, pb.ListProvidersRequest())
    out.show(answer, lambda: console.print(providers_table(list(answer.providers))))


def _changed(rpc: Callable[[Any], Any], request: Any) -> None:
    """Call the gateway's provider-changing `rpc` (admin) and show the provider it answers."""
    connection, out = session(admin=True)
    provider = connection.call(rpc(connection.gateway), request)
    out.show(provider, lambda: console.print(providers_table([provider])))


@app.command()
def pause(
    provider: str,
    reason: Annotated[str, typer.Option(help="Why, for the other operators.")] = "",
) -> None:
    """Stop sending the provider's jobs (admin): they wait in their places."""
    _changed(
        lambda gateway: gateway.PauseProvider,
        pb.PauseProviderRequest(name=_name(provider), reason=reason),
    )


@app.command()
def resume(provider: str) -> None:
    """Send the provider's jobs again (admin)."""
    _changed(lambda gateway: gateway.ResumeProvider, pb.ResumeProviderRequest(name=_name(provider)))
