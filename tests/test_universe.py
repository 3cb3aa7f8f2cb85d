"""Configured symbols are checked against Binance's exchangeInfo at start."""

from __future__ import annotations

import pytest

from qryptify_ingestor.binance.parse import ExchangeInfo, SymbolInfo
from qryptify_ingestor.binance.rest import BinanceRest, WeightBudget
from qryptify_ingestor.errors import ConfigError
from qryptify_ingestor.service import check_universe
from qryptify_ingestor.sim import Simulator


async def fetch_info(sim: Simulator) -> ExchangeInfo:
    async with BinanceRest(sim.rest_url, budget=WeightBudget(2400, 60_000)) as rest:
        return await rest.get_exchange_info()


async def test_listed_usdm_symbols_pass(sim: Simulator) -> None:
    """Perpetuals, a dated quarterly and a USDC-margined contract are all USDⓈ-M: accepted."""
    info = await fetch_info(sim)
    assert check_universe(info, ["BTCUSDT", "ETHUSDT", "BTCUSDT_261225", "BTCUSDC"]) == []


async def test_unknown_symbols_are_named(sim: Simulator) -> None:
    """Symbols Binance does not list are named in the error."""
    info = await fetch_info(sim)
    problems = check_universe(info, ["BTCUSDT", "NOPEUSDT", "FOOBARUSDT"])
    assert [p.split()[0] for p in problems] == ["NOPEUSDT", "FOOBARUSDT"]
    assert "not listed" in problems[0]


def test_non_usdm_contract_is_refused() -> None:
    """A COIN-M style contract (margined in the base coin) is refused with its contract type."""
    coin_m = SymbolInfo("BTCUSD_PERP", "BTCUSD", "TRADING", "PERPETUAL", 0, 0, "BTC", "USD", "BTC")
    odd = SymbolInfo(
        "ABCUSDT", "ABCUSDT", "TRADING", "TRADIFI_PERPETUAL", 0, 0, "ABC", "USDT", "USDT"
    )
    info = ExchangeInfo({"BTCUSD_PERP": coin_m, "ABCUSDT": odd}, [], 0)
    problems = check_universe(info, ["BTCUSD_PERP", "ABCUSDT"])
    assert len(problems) == 2
    assert "TRADIFI_PERPETUAL" in problems[1]


async def test_ingestor_refuses_unknown_symbols_before_any_work(sim: Simulator) -> None:
    """load_exchange_info raises a ConfigError naming the symbol (the CLI exits 2)."""
    from qryptify_ingestor.service import Ingestor, Tuning

    async with BinanceRest(sim.rest_url, budget=WeightBudget(2400, 60_000)) as rest:
        ingestor = Ingestor(rest, None, tuning=Tuning(start_ms=0), clock=sim.clock.now_ms)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="NOPEUSDT"):
            await ingestor.load_exchange_info(["BTCUSDT", "NOPEUSDT"])
