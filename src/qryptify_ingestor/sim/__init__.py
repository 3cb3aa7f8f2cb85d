"""The Binance USDⓈ-M Futures simulator: REST + WebSocket on 127.0.0.1, deterministic candles.

    async with Simulator(clock=SimClock.controlled(start_ms)) as sim:
        ...  # sim.rest_url, sim.ws_url, sim.clock, sim.faults, sim.market, sim.stats

It imports only `domain` from the rest of the package, so it stays an independent implementation
of the protocol the client side (`binance/`) speaks.
"""

from qryptify_ingestor.sim.clock import SimClock
from qryptify_ingestor.sim.faults import Faults
from qryptify_ingestor.sim.market import Gap, Market, SymbolSpec
from qryptify_ingestor.sim.server import Simulator
from qryptify_ingestor.sim.stats import SimStats
from qryptify_ingestor.sim.universe import DEFAULT_SYMBOLS, default_symbols, generated_symbols

__all__ = [
    "DEFAULT_SYMBOLS",
    "Faults",
    "Gap",
    "Market",
    "SimClock",
    "SimStats",
    "Simulator",
    "SymbolSpec",
    "default_symbols",
    "generated_symbols",
]
