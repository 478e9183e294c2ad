"""Money as the services carry it (micros of USD) and as requests may send it."""

from __future__ import annotations

from decimal import Decimal

import pytest
from google.type import money_pb2

from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim_common.money import dollars, micros_of, money
from pixsim_common.validation import violations_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("micros", [0, 1, 180_000, 1_750_000, 10**15, -250_000])
def test_micros_round_trip_through_google_type_money(micros: int) -> None:
    as_money = money(micros)
    assert as_money.currency_code == "USD"
    assert (as_money.units >= 0) == (as_money.nanos >= 0) or as_money.units == 0
    assert micros_of(as_money) == micros


def test_amounts_read_and_print_as_dollars() -> None:
    assert micros_of(Decimal("0.18")) == 180_000
    assert micros_of("2.5") == 2_500_000
    assert (dollars(180_000), dollars(2_500_000), dollars(1)) == ("$0.18", "$2.50", "$0.000001")


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        (money_pb2.Money(currency_code="US Dollars", units=1), "budget.limit.currency_code"),
        (money_pb2.Money(currency_code="USD", units=1, nanos=-5), "budget.limit.nanos"),
        (money_pb2.Money(currency_code="USD", nanos=1_000_000_000), "budget.limit.nanos"),
    ],
)
def test_a_request_s_money_must_be_an_amount(limit: money_pb2.Money, field: str) -> None:
    request = job_pb.SetBudgetRequest(
        budget=job_pb.Budget(
            name="users/alice/budget", period=job_pb.Budget.PERIOD_DAY, limit=limit
        )
    )
    assert field in [v.field for v in violations_of(request)]
