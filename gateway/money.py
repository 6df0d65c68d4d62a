"""Exact money: Decimal end to end, minor units by ISO-4217 exponent.

>>> to_minor(Decimal("12.5"), "EUR"), from_minor(1250, "EUR"), to_minor(Decimal("5"), "JPY")
(1250, Decimal('12.50'), 5)

Every amount coming in is checked here, once, before anything is recorded or sent
(``check_amount``): no finer than its currency allows, and no larger than the legacy
wallet's unit holds (``largest``):

    minor, scaled   the legacy integer fits a signed 64-bit integer (or the mapping's
                    ``amounts.max``): 92233720368547.75 EUR in Hub88's 1/100 000 units
    decimal         at most 18 significant digits with the currency's decimals (a
                    DECIMAL(18, n) column; or ``amounts.max``): 9999999999999999.99 EUR

>>> largest("EUR", unit="scaled", scale=100000), largest("JPY", unit="minor"), largest("EUR")
(Decimal('92233720368547.75'), Decimal('9223372036854775807'), Decimal('9999999999999999.99'))
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation

from gateway.errors import IgspError

# ISO-4217 currencies whose exponent is not 2 (everything else defaults to 2).
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}


#: The largest integer a ``minor`` or ``scaled`` legacy unit holds: a signed 64-bit integer
#: (what most wallet databases and JSON parsers keep exactly).
MAX_LEGACY_INTEGER = 2**63 - 1
#: Significant digits of a ``decimal`` legacy amount, the currency's decimals included.
DECIMAL_DIGITS = 18
#: Converting to legacy units never rounds: a product that does not fit is refused.
_EXACT = Context(prec=100, traps=[Inexact, InvalidOperation])


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


def largest(currency: str, overrides: dict[str, int] | None = None, *, unit: str = "decimal", scale: int = 1,
            legacy_max: int | Decimal | None = None) -> Decimal:
    """The largest amount of ``currency`` a legacy ``unit`` holds, with the currency's decimals.

    ``legacy_max`` is the mapping's ``amounts.max``: the largest value the legacy side takes,
    in its own unit (an integer for ``minor``/``scaled``), never above the defaults.
    """
    exp = exponent(currency, overrides)
    if unit == "decimal":
        quanta = 10**DECIMAL_DIGITS - 1  # counted in 10**-exp: 18 nines
        if legacy_max is not None:
            quanta = min(quanta, _floor_quanta(Decimal(legacy_max), exp))
    else:
        ceiling = MAX_LEGACY_INTEGER if legacy_max is None else min(MAX_LEGACY_INTEGER, int(legacy_max))
        per_unit = 10**exp if unit == "minor" else scale  # legacy units in one unit of the currency
        quanta = ceiling * 10**exp // per_unit
    return Decimal(f"{quanta}E-{exp}")  # exact: the constructor never rounds


def _floor_quanta(value: Decimal, exp: int) -> int:
    """How many whole 10**-exp fit in ``value`` (exactly, whatever its size)."""
    sign, digits, power = value.as_tuple()
    number = int("".join(map(str, digits)) or "0")
    shift = power + exp
    quanta = number * 10**shift if shift >= 0 else number // 10**-shift
    return -quanta if sign else quanta


def within_decimals(amount: Decimal, exp: int) -> bool:
    """Whether ``amount`` has no non-zero digit finer than 10**-exp (exactly, whatever its size)."""
    _, digits, power = amount.as_tuple()
    finer = -exp - power  # digits below 10**-exp, at the end of the coefficient
    return finer <= 0 or not any(digits[-finer:])


def trimmed(amount: Decimal, exp: int) -> Decimal:
    """``amount`` written with at most ``exp`` decimals when only zeros follow (``1.5000`` EUR ->
    ``1.50``): a decimal wallet gets no more digits than the currency has. Never rounds."""
    if amount.is_finite() and amount.as_tuple().exponent < -exp and within_decimals(amount, exp):
        return amount.quantize(Decimal(1).scaleb(-exp), context=_EXACT)
    return amount


def check_amount(amount: Decimal, currency: str, overrides: dict[str, int] | None = None, *,
                 limit: Decimal | None = None) -> Decimal:
    """The one check of an amount coming in: ``invalid_amount`` (400) when it is finer than the
    currency allows (12.345 EUR is not money) or above ``limit``, the largest the wallet's unit
    holds (``largest``; default: a decimal wallet's), which the message names."""
    top = limit if limit is not None else largest(currency, overrides)
    if not amount.is_finite() or amount > top:
        raise IgspError("invalid_amount", f"amount exceeds {top} {currency}, the largest this wallet's unit holds")
    exp = exponent(currency, overrides)
    if not within_decimals(amount, exp):
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
    try:
        scaled = _EXACT.multiply(Decimal(amount), Decimal(scale))
    except (Inexact, InvalidOperation):
        raise IgspError("invalid_amount", f"amount {amount} has too many digits") from None
    if scaled != scaled.to_integral_value(context=_EXACT):
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
