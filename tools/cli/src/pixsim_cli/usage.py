"""`pixsim usage` and `pixsim budget ...`: what a user spent, by day, provider and operation,
as costs settle; and what they may spend."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer
from google.type import date_pb2
from rich.table import Table

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim_cli.output import console, operation_of
from pixsim_cli.state import session
from pixsim_common.money import dollars, micros_of, money


def price(money: Any) -> str:
    """A `google.type.Money` as dollars."""
    return dollars(micros_of(money))


def usage_table(usage: pb.Usage) -> Table:
    table = Table("day", "provider", "operation", "jobs", "credits", "cost", box=None)
    for row in usage.rows:
        day = date(row.date.year, row.date.month, row.date.day)
        table.add_row(
            day.isoformat(),
            row.provider_id,
            operation_of(row.operation_type),
            str(row.jobs),
            str(row.cost.credits),
            price(row.cost.price),
        )
    table.add_section()
    table.add_row("total", "", "", str(usage.total_jobs), "", price(usage.total_price))
    return table


def _day(value: str | None) -> date_pb2.Date | None:
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a day (YYYY-MM-DD)") from None
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def usage(
    user: Annotated[
        str | None, typer.Option("--of", help="Another user's (needs the admin role).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="The first day (YYYY-MM-DD, UTC); default 30 days ago.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="The last day; default today.")] = None,
) -> None:
    """What was spent, by day, provider and operation (yours, or --of a user's)."""
    connection, out = session(admin=user is not None)
    request = pb.GetUsageRequest(
        user=f"users/{user}" if user else "", start_date=_day(since), end_date=_day(until)
    )
    answer = connection.call(connection.jobs.GetUsage, request)
    out.show(answer, lambda: console.print(usage_table(answer)))


budget_app = typer.Typer(help="What a user may spend a day or a month.", no_args_is_help=True)


def budget_table(budget: pb.Budget) -> Table:
    table = Table("user", "period", "limit", "spent", "held", "remaining", box=None)
    table.add_row(
        budget.name.removeprefix("users/").removesuffix("/budget"),
        pb.Budget.Period.Name(budget.period).removeprefix("PERIOD_").lower(),
        *(price(m) for m in (budget.limit, budget.spent, budget.held, budget.remaining)),
    )
    return table


def _budget_name(user: str) -> str:
    return f"users/{user}/budget"


@budget_app.command("get")
def get_budget(
    user: Annotated[str | None, typer.Argument(help="Whose; default yours.")] = None,
) -> None:
    """A budget, and what is spent and held against it this period."""
    connection, out = session(admin=user is not None)
    name = _budget_name(user or connection.user_id)
    answer = connection.call(connection.jobs.GetBudget, pb.GetBudgetRequest(name=name))
    out.show(answer, lambda: console.print(budget_table(answer)))


@budget_app.command("set")
def set_budget(
    user: str,
    limit: Annotated[str, typer.Option(help="In US dollars, e.g. 25 or 2.50.")],
    period: Annotated[str, typer.Option(help="day or month.")] = "day",
) -> None:
    """Set what a user may spend a day or a month (admin)."""
    try:
        amount = money(micros_of(limit.removeprefix("$")))
    except ArithmeticError:
        raise typer.BadParameter(f"{limit!r} is not an amount of dollars") from None
    periods = {"day": pb.Budget.PERIOD_DAY, "month": pb.Budget.PERIOD_MONTH}
    if period.lower() not in periods:
        raise typer.BadParameter("the period is day or month")
    budget = pb.Budget(name=_budget_name(user), period=periods[period.lower()], limit=amount)
    connection, out = session(admin=True)
    answer = connection.call(connection.jobs.SetBudget, pb.SetBudgetRequest(budget=budget))
    out.show(answer, lambda: console.print(budget_table(answer)))


@budget_app.command("clear")
def clear_budget(user: str) -> None:
    """Remove a user's budget (admin): nothing of theirs is refused for cost."""
    connection, out = session(admin=True)
    answer = connection.call(
        connection.jobs.DeleteBudget, pb.DeleteBudgetRequest(name=_budget_name(user))
    )
    out.show(answer, lambda: console.print(f"{user} has no budget now"))
