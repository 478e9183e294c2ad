"""Money as the services carry it: whole millionths ("micros") of one currency, USD, in
integers (docs/costs.md); `google.type.Money` on the wire."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from google.type import money_pb2

CURRENCY = "USD"
MICROS = 1_000_000
_NANOS_PER_MICRO = 1_000
# The most one attempt may cost: 4 billion credits, and at most $67 a credit
# (`MAX_CREDIT_PRICE_MICROS`), so any plausible sum of costs stays within an int64 of micros.
MAX_CREDITS = 2**32
MAX_CREDIT_PRICE_MICROS = 2**26
MAX_COST_MICROS = MAX_CREDITS * MAX_CREDIT_PRICE_MICROS


def money(micros: int) -> Any:
    """`micros` millionths of a dollar as `google.type.Money` (units and nanos share a sign)."""
    units = abs(micros) // MICROS
    nanos = (abs(micros) % MICROS) * _NANOS_PER_MICRO
    sign = -1 if micros < 0 else 1
    return money_pb2.Money(currency_code=CURRENCY, units=sign * units, nanos=sign * nanos)


def dollars(micros: int) -> str:
    """`micros` as a dollar amount: to the cent, or finer where it is finer ("$0.18")."""
    amount = Decimal(micros) / MICROS
    shown = f"{amount:.2f}" if amount == round(amount, 2) else f"{amount.normalize():f}"
    return f"${shown}"


def micros_of(amount: Any) -> int:
    """Millionths of a dollar in `amount` (a decimal, or a `google.type.Money`), rounded
    toward zero."""
    if isinstance(amount, money_pb2.Money):
        return int(amount.units) * MICROS + int(amount.nanos) // _NANOS_PER_MICRO
    return int(Decimal(amount) * MICROS)
