"""The simulator's symbol universes: a realistic default set and generated ones for benchmarks.

The default set mirrors the shapes a client meets on fapi (binance-futures.md §2.1, §6.4): old
perpetuals with various price precisions, a recent listing, a dated quarterly contract with a real
delivery date, a settled (delisted) perpetual that stays in exchangeInfo with status SETTLING,
and a USDC-margined perpetual, so universe filters have something to filter.
"""

from __future__ import annotations

from qryptify_ingestor.sim.market import SymbolSpec

DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    # BTCUSDT: pricePrecision 2 with tick 0.10, as on fapi.
    SymbolSpec(
        "BTCUSDT",
        1569398400000,  # 2019-09-25 08:00 UTC
        price_precision=2,
        tick_units=10,
        base_price=60_000.0,
        quantity_precision=3,
        daily_volume=250_000.0,
        daily_trades=2_000_000,
    ),
    SymbolSpec(
        "ETHUSDT",
        1569398400000,
        price_precision=2,
        base_price=3_000.0,
        quantity_precision=3,
        daily_volume=3_000_000.0,
        daily_trades=1_500_000,
    ),
    SymbolSpec(
        "BNBUSDT",
        1581321600000,  # 2020-02-10
        price_precision=3,
        tick_units=10,
        base_price=550.0,
        quantity_precision=2,
        daily_volume=800_000.0,
    ),
    SymbolSpec(
        "SOLUSDT",
        1600070400000,  # 2020-09-14
        price_precision=4,
        tick_units=100,
        base_price=150.0,
        quantity_precision=0,
        daily_volume=20_000_000.0,
    ),
    SymbolSpec(
        "XRPUSDT",
        1578297600000,  # 2020-01-06
        price_precision=4,
        base_price=0.6,
        quantity_precision=1,
        daily_volume=900_000_000.0,
    ),
    SymbolSpec(
        "DOGEUSDT",
        1594368000000,  # 2020-07-10
        price_precision=6,
        tick_units=10,
        base_price=0.15,
        quantity_precision=0,
        daily_volume=5_000_000_000.0,
    ),
    SymbolSpec(
        "1000PEPEUSDT",
        1683273600000,  # 2023-05-05
        price_precision=7,
        base_price=0.012,
        quantity_precision=0,
        daily_volume=90_000_000_000.0,
    ),
    # A recent listing: history starts mid-2026.
    SymbolSpec(
        "NOVAUSDT",
        1781596800000,  # 2026-06-16 08:00
        price_precision=5,
        base_price=0.85,
        quantity_precision=1,
        daily_volume=50_000_000.0,
    ),
    # A dated quarterly: trades from onboard until its delivery, then has no more candles.
    SymbolSpec(
        "BTCUSDT_261225",
        1782460800000,  # 2026-06-26 08:00
        price_precision=1,
        base_price=61_000.0,
        quantity_precision=3,
        daily_volume=3_000.0,
        contract_type="CURRENT_QUARTER",
        delivery_ms=1798185600000,  # 2026-12-25 08:00
        end_ms=1798185600000,
    ),
    # Delisted perpetual: stays listed as SETTLING; deliveryDate is the delisting time.
    SymbolSpec(
        "TOMOUSDT",
        1633593600000,  # 2021-10-07
        price_precision=4,
        base_price=1.4,
        quantity_precision=1,
        daily_volume=8_000_000.0,
        status="SETTLING",
        delivery_ms=1704787200000,  # 2024-01-09 08:00
        end_ms=1704787200000,
    ),
    SymbolSpec(
        "BTCUSDC",
        1704787200000,  # 2024-01-09
        price_precision=1,
        base_price=60_000.0,
        quantity_precision=3,
        daily_volume=20_000.0,
        quote_asset="USDC",
    ),
)


def default_symbols() -> list[SymbolSpec]:
    """The default universe (a fresh list, so callers may extend it)."""
    return list(DEFAULT_SYMBOLS)


def generated_symbols(n: int, *, onboard_ms: int, prefix: str = "GEN") -> list[SymbolSpec]:
    """`n` synthetic USDT perpetuals named GEN0001USDT…, varied in price and precision."""
    precisions = (1, 2, 3, 4, 5, 6, 7)
    out = []
    for i in range(n):
        pp = precisions[i % len(precisions)]
        out.append(
            SymbolSpec(
                f"{prefix}{i + 1:04d}USDT",
                onboard_ms,
                price_precision=pp,
                base_price=10.0 ** (4 - pp) * (1 + (i % 9) / 3),
                quantity_precision=(i % 4),
                daily_volume=10.0 ** (3 + pp) * (1 + i % 5),
            )
        )
    return out
