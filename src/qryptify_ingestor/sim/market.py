"""Deterministic synthetic market data: every candle a pure function of (symbol, interval, open).

How the numbers are made (so that every interval is an exact aggregate of the 1m candles and
still cheap to compute for years of 1d or 1M candles):

* A **day** is the root block. Its open/close are a smooth price path sampled at day boundaries
  (sinusoids plus hash noise), its high/low and volumes come from hashes of (symbol, day).
* A day is split **top-down** into 24 hours, and each hour into 60 minutes: the inner boundary
  prices follow a hashed random-walk bridge clamped to the parent's [low, high]; the child with the
  highest (lowest) boundary takes the parent's high (low); volumes, trades and taker volumes are
  split exactly (integers, largest share to nobody: prefix-sum splitting) so the children sum to the
  parent to the last digit.
* Any candle is then the aggregate of the largest aligned blocks (days, hours, minutes) inside its
  window: open of the first, close of the last, max high, min low, sums of the rest. A 1h candle is
  therefore exactly the aggregate of its 1m candles, and 1M costs at most 31 cached day blocks.

All prices are integers in units of 10**-price_precision (multiples of the tick), volumes integers
in units of 10**-quantity_precision, quote volumes in units of 10**-quote_precision. Strings are
formatted with fixed decimals like Binance's ("43123.40").

Exchange gaps (maintenance holes), the time before listing and after delivery/settlement have no
data: blocks inside them are skipped, so neither REST, WebSocket nor `candles()` produce rows there.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from qryptify_ingestor.domain import DAY_MS, HOUR_MS, MINUTE_MS, Interval
from qryptify_ingestor.sim.clock import SimClock

PERPETUAL_DELIVERY_MS = 4133404800000  # 2100-12-25, Binance's placeholder for perpetuals
_NEVER = 1 << 62
_MASK64 = (1 << 64) - 1

# (open, high, low, close, volume, quote, trades, taker_base, taker_quote, first_trade_id)
Block = tuple[int, int, int, int, int, int, int, int, int, int]
# A REST kline row: [t, o, h, l, c, v, T, q, n, V, Q, "0"]
Row = list[int | str]


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One simulated contract. Times are epoch ms; precisions are decimal places."""

    name: str
    onboard_ms: int
    price_precision: int = 2
    tick_units: int = 1  # tick size in units of 10**-price_precision (BTCUSDT: 2 dp, tick 0.10)
    base_price: float = 100.0
    quantity_precision: int = 3
    quote_precision: int = 8
    daily_volume: float = 1_000_000.0  # typical base volume per day
    daily_trades: int = 500_000
    status: str = "TRADING"
    contract_type: str = "PERPETUAL"
    delivery_ms: int = PERPETUAL_DELIVERY_MS
    end_ms: int | None = None  # no candles from here on (delivered / settled)
    base_asset: str = ""
    quote_asset: str = "USDT"
    margin_asset: str = ""
    pair: str = ""
    underlying_type: str = "COIN"

    def __post_init__(self) -> None:
        if not self.base_asset:
            base = self.name.split("_")[0]
            if base.endswith(self.quote_asset):
                base = base[: -len(self.quote_asset)]
            object.__setattr__(self, "base_asset", base)
        if not self.margin_asset:
            object.__setattr__(self, "margin_asset", self.quote_asset)
        if not self.pair:
            object.__setattr__(self, "pair", self.name.split("_")[0])
        if self.tick_units < 1 or self.base_price <= 0:
            raise ValueError(f"{self.name}: tick_units must be >= 1 and base_price > 0")

    @property
    def first_ms(self) -> int:
        """First minute with data (the listing minute)."""
        return self.onboard_ms - self.onboard_ms % MINUTE_MS

    @property
    def tick_size(self) -> str:
        return fmt_units(self.tick_units, self.price_precision)


def fmt_units(units: int, decimals: int) -> str:
    """`units * 10**-decimals` as a fixed-point string, e.g. (4312340, 2) -> '43123.40'."""
    if decimals == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(decimals + 1, "0")
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash step."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _hash(*parts: int) -> int:
    x = 0
    for p in parts:
        x = _mix(x ^ (p & _MASK64))
    return x


def _unit(h: int) -> float:
    """A 64-bit hash as a float in [0, 1)."""
    return (h >> 11) / float(1 << 53)


def _split(total: int, weights: Sequence[int], minimum: int = 0) -> list[int]:
    """Split `total` into len(weights) integers >= minimum that sum exactly to `total`."""
    n = len(weights)
    if total < minimum * n:
        minimum = 0
    rest = total - minimum * n
    wsum = sum(weights) or 1
    out: list[int] = []
    acc = prev = 0
    for w in weights:
        acc += w
        cur = rest * acc // wsum
        out.append(minimum + cur - prev)
        prev = cur
    return out


def aggregate(blocks: Sequence[Block]) -> Block:
    """One block from consecutive blocks: first open, max high, min low, last close, sums."""
    if len(blocks) == 1:
        return blocks[0]
    first, last = blocks[0], blocks[-1]
    return (
        first[0],
        max(b[1] for b in blocks),
        min(b[2] for b in blocks),
        last[3],
        sum(b[4] for b in blocks),
        sum(b[5] for b in blocks),
        sum(b[6] for b in blocks),
        sum(b[7] for b in blocks),
        sum(b[8] for b in blocks),
        first[9],
    )


@dataclass(frozen=True, slots=True)
class Gap:
    """An exchange gap: no data in [start_ms, end_ms) for `symbol` (None: every symbol)."""

    start_ms: int
    end_ms: int
    symbol: str | None = None


class _SymbolModel:
    """The block generator for one symbol (caches its days, hours and minutes)."""

    def __init__(self, spec: SymbolSpec) -> None:
        self.spec = spec
        self.seed = zlib.crc32(spec.name.encode())
        s = self.seed
        self.phases = tuple(2 * math.pi * _unit(_hash(s, k)) for k in range(4))
        self.price_scale = 10**spec.price_precision
        self.day = lru_cache(maxsize=8192)(self._day)
        self.hours = lru_cache(maxsize=4096)(self._hours)
        self.minutes = lru_cache(maxsize=16384)(self._minutes)

    # -- price path -------------------------------------------------------------------------
    def _quantise(self, price_units: float) -> int:
        tick = self.spec.tick_units
        return max(tick, round(price_units / tick) * tick)

    def boundary_price(self, day: int) -> int:
        """Price (units) at the start of epoch day `day`."""
        p1, p2, p3, _ = self.phases
        x = (
            0.30 * math.sin(2 * math.pi * day / 365.25 + p1)
            + 0.12 * math.sin(2 * math.pi * day / 53.0 + p2)
            + 0.05 * math.sin(2 * math.pi * day / 11.0 + p3)
            + 0.04 * (2 * _unit(_hash(self.seed, 1, day)) - 1)
        )
        return self._quantise(self.spec.base_price * math.exp(x) * self.price_scale)

    # -- blocks ------------------------------------------------------------------------------
    def _day(self, day: int) -> Block:
        spec, s = self.spec, self.seed
        o, c = self.boundary_price(day), self.boundary_price(day + 1)
        mid = (o + c) // 2
        tick = spec.tick_units
        up = max(tick, int(mid * (0.004 + 0.03 * _unit(_hash(s, 2, day)))) // tick * tick)
        down = max(tick, int(mid * (0.004 + 0.03 * _unit(_hash(s, 3, day)))) // tick * tick)
        hi = max(o, c) + up
        lo = max(tick, min(o, c) - down)
        vol = int(
            spec.daily_volume * (0.6 + 0.8 * _unit(_hash(s, 4, day))) * 10**spec.quantity_precision
        )
        vol = max(vol, 1440 * 16)
        trades = max(1440 * 2, int(spec.daily_trades * (0.6 + 0.8 * _unit(_hash(s, 5, day)))))
        vwap = (o + c + hi + lo) // 4
        shift = spec.quote_precision - spec.quantity_precision - spec.price_precision
        raw_quote = vol * vwap
        quote = raw_quote * 10**shift if shift >= 0 else raw_quote // 10 ** (-shift)
        quote += _hash(s, 6, day) % max(1, quote // 1000)  # fill the low digits
        rho = 0.35 + 0.2 * _unit(_hash(s, 7, day))
        taker = int(vol * rho)
        taker_quote = int(quote * rho * (0.99 + 0.02 * _unit(_hash(s, 8, day))))
        first_id = day * 10_000_000_000  # trade ids increase; room for 1e10 trades a day
        return (o, hi, lo, c, vol, quote, trades, taker, taker_quote, first_id)

    def _children(self, parent: Block, n: int, level: int, key: int, min_vol: int) -> list[Block]:
        """Split `parent` top-down into `n` consecutive blocks that aggregate back to it."""
        o, hi, lo, c, vol, quote, trades, taker, taker_quote, first_id = parent
        s, tick = self.seed, self.spec.tick_units
        # Inner boundary prices: a hashed random-walk bridge from o to c, clamped to [lo, hi].
        # One hash per child; the other per-child draws are cheap re-mixes of it.
        seeds = [_hash(s, level, key, j) for j in range(n + 1)]
        walk = [0.0]
        for j in range(1, n + 1):
            walk.append(walk[-1] + 2 * _unit(seeds[j]) - 1)
        end = walk[-1]
        bridge = [walk[j] - end * j / n for j in range(n + 1)]
        amp = max(abs(b) for b in bridge) or 1.0
        scale = 0.45 * (hi - lo) / amp
        bounds = [o]
        for j in range(1, n):
            x = o + (c - o) * j / n + bridge[j] * scale
            bounds.append(min(hi, max(lo, round(x / tick) * tick)))
        bounds.append(c)
        tops = [max(bounds[j], bounds[j + 1]) for j in range(n)]
        bots = [min(bounds[j], bounds[j + 1]) for j in range(n)]
        k_hi = max(range(n), key=tops.__getitem__)
        k_lo = min(range(n), key=bots.__getitem__)
        highs, lows = [], []
        for j in range(n):
            h = _mix(seeds[j] ^ 1)
            r_up, r_down = 0.25 * _unit(h), 0.25 * _unit(_mix(h))
            highs.append(hi if j == k_hi else tops[j] + int((hi - tops[j]) * r_up) // tick * tick)
            lows.append(lo if j == k_lo else bots[j] - int((bots[j] - lo) * r_down) // tick * tick)
        weights = [500_000 + _mix(seeds[j] ^ 2) % 1_000_000 for j in range(n)]
        vols = _split(vol, weights, min_vol)
        counts = _split(trades, weights, max(1, min_vol // 8))
        mids = [(bounds[j] + bounds[j + 1]) // 2 or 1 for j in range(n)]
        quotes = _split(quote, [v * m for v, m in zip(vols, mids, strict=True)])
        skew = [920 + _mix(seeds[j] ^ 3) % 160 for j in range(n)]
        takers = _split(taker, [v * k for v, k in zip(vols, skew, strict=True)])
        taker_quotes = _split(taker_quote, [t * m + 1 for t, m in zip(takers, mids, strict=True)])
        out: list[Block] = []
        next_id = first_id
        for j in range(n):
            out.append(
                (
                    bounds[j],
                    highs[j],
                    lows[j],
                    bounds[j + 1],
                    vols[j],
                    quotes[j],
                    counts[j],
                    takers[j],
                    taker_quotes[j],
                    next_id,
                )
            )
            next_id += counts[j]
        return out

    def _hours(self, day: int) -> tuple[Block, ...]:
        return tuple(self._children(self.day(day), 24, 1, day, 60 * 16))

    def _minutes(self, hour: int) -> tuple[Block, ...]:
        day, h = divmod(hour, 24)
        return tuple(self._children(self.hours(day)[h], 60, 2, hour, 16))

    def block(self, start_ms: int, size_ms: int) -> Block:
        if size_ms == DAY_MS:
            return self.day(start_ms // DAY_MS)
        if size_ms == HOUR_MS:
            hour = start_ms // HOUR_MS
            return self.hours(hour // 24)[hour % 24]
        minute = start_ms // MINUTE_MS
        return self.minutes(minute // 60)[minute % 60]

    def partial_minute(self, open_ms: int, now_ms: int) -> Block:
        """The minute opening at `open_ms` as seen at `now_ms` (a pure function of both)."""
        o, hi, lo, c, vol, quote, trades, taker, taker_quote, first_id = self.block(
            open_ms, MINUTE_MS
        )
        frac = min(1.0, max(0.0, (now_ms - open_ms) / MINUTE_MS))
        tick = self.spec.tick_units
        wiggle = (2 * _unit(_hash(self.seed, 9, open_ms, now_ms)) - 1) * (hi - lo) * 0.3
        close = o + (c - o) * frac + wiggle * (1 - frac)
        close_q = min(hi, max(lo, round(close / tick) * tick))
        top = min(hi, max(o, close_q, round((o + (hi - o) * frac) / tick) * tick))
        bottom = max(lo, min(o, close_q, round((o - (o - lo) * frac) / tick) * tick))
        return (
            o,
            top,
            bottom,
            close_q,
            int(vol * frac),
            int(quote * frac),
            max(1, int(trades * frac)),
            int(taker * frac),
            int(taker_quote * frac),
            first_id,
        )


@dataclass(slots=True)
class _GapIndex:
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def covering(self, t: int) -> int | None:
        """End of the gap containing `t`, if any."""
        i = bisect.bisect_right(self.starts, t) - 1
        if i >= 0 and t < self.ends[i]:
            return self.ends[i]
        return None

    def next_start(self, t: int) -> int:
        i = bisect.bisect_right(self.starts, t)
        return self.starts[i] if i < len(self.starts) else _NEVER

    def prev_end(self, t: int) -> tuple[int, int] | None:
        """(start, end) of the last gap starting before `t`."""
        i = bisect.bisect_left(self.starts, t) - 1
        return (self.starts[i], self.ends[i]) if i >= 0 else None


class Market:
    """The simulated exchange's candles for a set of symbols, gaps included."""

    def __init__(self, specs: Iterable[SymbolSpec], clock: SimClock | None = None) -> None:
        self.clock = clock or SimClock()
        self.specs: dict[str, SymbolSpec] = {}
        self._models: dict[str, _SymbolModel] = {}
        for spec in specs:
            if spec.name in self.specs:
                raise ValueError(f"duplicate symbol {spec.name}")
            self.specs[spec.name] = spec
            self._models[spec.name] = _SymbolModel(spec)
        self._gaps: list[Gap] = []
        self._gap_index: dict[str, _GapIndex] = {}
        self._prefix_cache: dict[tuple[str, str, int, int], Block | None] = {}
        self._rebuild_gaps()

    # -- gaps --------------------------------------------------------------------------------
    @property
    def gaps(self) -> tuple[Gap, ...]:
        return tuple(self._gaps)

    def add_gap(self, start_ms: int, end_ms: int, symbol: str | None = None) -> Gap:
        """Make [start_ms, end_ms) a hole with no data (widened to whole minutes)."""
        if symbol is not None and symbol not in self.specs:
            raise KeyError(symbol)
        start = start_ms - start_ms % MINUTE_MS
        end = -(-end_ms // MINUTE_MS) * MINUTE_MS
        if end <= start:
            raise ValueError("empty gap")
        gap = Gap(start, end, symbol)
        self._gaps.append(gap)
        self._rebuild_gaps()
        return gap

    def clear_gaps(self) -> None:
        self._gaps.clear()
        self._rebuild_gaps()

    def _rebuild_gaps(self) -> None:
        self._prefix_cache.clear()
        self._gap_index = {}
        for name, spec in self.specs.items():
            spans = [(-_NEVER, spec.first_ms)]
            if spec.end_ms is not None:
                spans.append((spec.end_ms - spec.end_ms % MINUTE_MS, _NEVER))
            spans += [(g.start_ms, g.end_ms) for g in self._gaps if g.symbol in (None, name)]
            spans.sort()
            merged: list[list[int]] = []
            for a, b in spans:
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            self._gap_index[name] = _GapIndex([m[0] for m in merged], [m[1] for m in merged])

    def has_data(self, symbol: str, start_ms: int, end_ms: int) -> bool:
        """Whether any minute in [start_ms, end_ms) has data."""
        gaps = self._gap_index[symbol]
        t = start_ms
        while t < end_ms:
            gap_end = gaps.covering(t)
            if gap_end is None:
                return True
            t = gap_end
        return False

    # -- blocks ------------------------------------------------------------------------------
    def _blocks(self, symbol: str, start_ms: int, end_ms: int) -> list[Block]:
        """The largest aligned blocks with data that tile [start_ms, end_ms) minus the gaps."""
        model, gaps = self._models[symbol], self._gap_index[symbol]
        out: list[Block] = []
        t = start_ms
        while t < end_ms:
            gap_end = gaps.covering(t)
            if gap_end is not None:
                t = gap_end
                continue
            limit = min(end_ms, gaps.next_start(t))
            if t % DAY_MS == 0 and t + DAY_MS <= limit:
                size = DAY_MS
            elif t % HOUR_MS == 0 and t + HOUR_MS <= limit:
                size = HOUR_MS
            else:
                size = MINUTE_MS
            out.append(model.block(t, size))
            t += size
        return out

    def candle_block(self, symbol: str, interval: str, open_ms: int, now_ms: int) -> Block | None:
        """The candle opening at `open_ms` as of `now_ms` (partial if still open), or None."""
        iv = Interval(interval)
        close_ms = iv.next_open(open_ms)
        if open_ms > now_ms:
            return None
        if now_ms >= close_ms:
            blocks = self._blocks(symbol, open_ms, close_ms)
            return aggregate(blocks) if blocks else None
        minute = now_ms - now_ms % MINUTE_MS
        key = (symbol, interval, open_ms, minute)
        if key in self._prefix_cache:
            prefix = self._prefix_cache[key]
        else:
            blocks = self._blocks(symbol, open_ms, minute)
            prefix = aggregate(blocks) if blocks else None
            if len(self._prefix_cache) > 8192:
                self._prefix_cache.clear()
            self._prefix_cache[key] = prefix
        parts = [] if prefix is None else [prefix]
        if self._gap_index[symbol].covering(minute) is None:
            parts.append(self._models[symbol].partial_minute(minute, now_ms))
        return aggregate(parts) if parts else None

    def row(self, symbol: str, interval: str, open_ms: int, now_ms: int) -> Row | None:
        """The REST row for one candle as of `now_ms`, or None if it has no data."""
        block = self.candle_block(symbol, interval, open_ms, now_ms)
        if block is None:
            return None
        return self.format_row(symbol, interval, open_ms, block)

    def format_row(self, symbol: str, interval: str, open_ms: int, block: Block) -> Row:
        spec = self.specs[symbol]
        pp, qp, qq = spec.price_precision, spec.quantity_precision, spec.quote_precision
        o, h, low, c, v, q, n, tb, tq, _ = block
        return [
            open_ms,
            fmt_units(o, pp),
            fmt_units(h, pp),
            fmt_units(low, pp),
            fmt_units(c, pp),
            fmt_units(v, qp),
            Interval(interval).close_time(open_ms),
            fmt_units(q, qq),
            n,
            fmt_units(tb, qp),
            fmt_units(tq, qq),
            "0",
        ]

    def kline_payload(
        self, symbol: str, interval: str, open_ms: int, block: Block, closed: bool
    ) -> dict[str, object]:
        """The `k` object of a kline stream event."""
        row = self.format_row(symbol, interval, open_ms, block)
        return {
            "t": open_ms,
            "T": row[6],
            "s": symbol,
            "i": interval,
            "f": block[9],
            "L": block[9] + block[6] - 1,
            "o": row[1],
            "c": row[4],
            "h": row[2],
            "l": row[3],
            "v": row[5],
            "n": block[6],
            "x": closed,
            "q": row[7],
            "V": row[9],
            "Q": row[10],
            "B": "0",
        }

    # -- queries -----------------------------------------------------------------------------
    def klines(
        self,
        symbol: str,
        interval: str,
        *,
        now_ms: int,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 500,
    ) -> list[Row]:
        """`/fapi/v1/klines` semantics: open time filtered inclusively, ascending rows.

        With a start: the first `limit` candles opening at or after it (up to end and now).
        Without: the `limit` candles ending at end (or now), the open candle included.
        """
        iv = Interval(interval)
        gaps = self._gap_index[symbol]
        last_open = iv.floor(now_ms if end_ms is None else min(end_ms, now_ms))
        rows: list[Row] = []
        if start_ms is not None:
            t = iv.ceil(start_ms)
            first = self.specs[symbol].first_ms
            if t < first:
                t = max(t, iv.floor(first))
            while t <= last_open and len(rows) < limit:
                nxt = iv.next_open(t)
                gap_end = gaps.covering(t)
                if gap_end is not None and gap_end >= nxt:
                    if gap_end >= _NEVER:
                        break
                    t = max(nxt, iv.floor(gap_end))
                    continue
                row = self.row(symbol, interval, t, now_ms)
                if row is not None:
                    rows.append(row)
                t = nxt
            return rows
        t = last_open
        while len(rows) < limit:
            nxt = iv.next_open(t)
            if not self.has_data(symbol, t, nxt):
                prev_gap = gaps.prev_end(nxt)
                if prev_gap is None or prev_gap[0] <= -_NEVER:
                    break
                t = min(iv.floor(t - 1), iv.floor(prev_gap[0] - 1))
                continue
            row = self.row(symbol, interval, t, now_ms)
            if row is not None:
                rows.append(row)
            t = iv.floor(t - 1)
        rows.reverse()
        return rows

    def candles(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        end_ms: int,
        *,
        now_ms: int | None = None,
        include_open: bool = False,
    ) -> list[Row]:
        """Ground truth: candles opening in [start_ms, end_ms), closed as of `now_ms` (the clock).

        The rows are exactly what REST serves for those candles; gaps have no rows.
        """
        if now_ms is None:
            now_ms = self.clock.now_ms()
        iv = Interval(interval)
        rows: list[Row] = []
        t = iv.ceil(max(start_ms, iv.floor(self.specs[symbol].first_ms)))
        gaps = self._gap_index[symbol]
        while t < end_ms and t <= now_ms:
            nxt = iv.next_open(t)
            if nxt > now_ms and not include_open:
                break
            gap_end = gaps.covering(t)
            if gap_end is not None and gap_end >= nxt:
                if gap_end >= _NEVER:
                    break
                t = max(nxt, iv.floor(gap_end))
                continue
            row = self.row(symbol, interval, t, now_ms)
            if row is not None:
                rows.append(row)
            t = nxt
        return rows
