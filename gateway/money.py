"""Exact money: Decimal end to end, minor units by ISO-4217 exponent.

>>> to_minor(Decimal("12.5"), "EUR"), from_minor(1250, "EUR"), to_minor(Decimal("5"), "JPY")
(1250, Decimal('12.50'), 5)
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from gateway.errors import IgspError

# ISO-4217 currencies whose exponent is not 2 (everything else defaults to 2).
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}


#: No wallet amount reaches a quadrillion; bounding it keeps Decimal arithmetic exact.
MAX_AMOUNT = Decimal(10) ** 15


def exponent(currency: str, overrides: dict[str, int] | None = None) -> int:
    """Number of decimals of ``currency`` (config ``currencies:`` overrides, e.g. BTC: 8)."""
    if overrides and currency in overrides:
        return overrides[currency]
    return _EXPONENTS.get(currency, 2)


def parse_amount(value: object, field: str = "amount") -> Decimal:
    """A finite, non-negative Decimal from a JSON-decoded value (never via float maths)."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        raise IgspError("invalid_amount", f"{field} must be a number")
    try:
        amount = Decimal(value)
    except (InvalidOperation, ValueError):
        raise IgspError("invalid_amount", f"{field} must be a number") from None
    if not amount.is_finite() or amount < 0:
        raise IgspError("invalid_amount", f"{field} must be a finite number >= 0")
    return amount


def check_precision(amount: Decimal, currency: str, overrides: dict[str, int] | None = None) -> Decimal:
    """Refuse amounts finer than the currency allows (12.345 EUR is not money) or absurdly large."""
    if amount >= MAX_AMOUNT:
        raise IgspError("invalid_amount", "amount is too large")
    exp = exponent(currency, overrides)
    if amount != amount.quantize(Decimal(1).scaleb(-exp)):
        raise IgspError("invalid_amount", f"amount has more than {exp} decimals for {currency}")
    return amount


def to_minor(amount: Decimal, currency: str, overrides: dict[str, int] | None = None) -> int:
    """Integer minor units; raises when ``amount`` is finer than the currency allows."""
    return to_scaled(amount, 10 ** exponent(currency, overrides))


def from_minor(units: int | str | Decimal, currency: str, overrides: dict[str, int] | None = None) -> Decimal:
    exp = exponent(currency, overrides)
    return from_scaled(units, 10**exp).quantize(Decimal(1).scaleb(-exp))


def to_scaled(amount: Decimal, scale: int) -> int:
    """``amount * scale`` as an int, exactly (``scale`` = 100 for cents, 100000 for Hub88)."""
    scaled = Decimal(amount) * scale
    if scaled != scaled.to_integral_value():
        raise IgspError("invalid_amount", f"amount {amount} is finer than 1/{scale} of a unit")
    return int(scaled)


def from_scaled(units: int | str | Decimal, scale: int) -> Decimal:
    """Decimal value of an integer amount given in 1/``scale`` units."""
    if isinstance(units, bool) or isinstance(units, float):
        # Legacy JSON numbers arrive as Decimal when parsed by the gateway; a float here
        # is a programming error, not input to round.
        raise TypeError("from_scaled needs int, str or Decimal, not float")
    value = Decimal(units)
    if value != value.to_integral_value():
        raise IgspError("upstream_bad_response", f"expected whole units, got {units}")
    return value / scale


def to_json_number(amount: Decimal) -> float | int:
    """Render a Decimal for a JSON number field.

    Used only at the serialisation boundary: amounts with at most 15 significant digits
    survive the float round-trip exactly (``repr`` prints the shortest form).
    """
    if amount == amount.to_integral_value() and abs(amount) < 2**53:
        return int(amount)
    return float(amount)
