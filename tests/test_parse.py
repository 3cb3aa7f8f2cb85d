"""Tests of the pure parsers: bytes in, domain values or MalformedPayload out."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from qryptify_ingestor.binance.parse import (
    ControlError,
    ControlReply,
    KlineEvent,
    parse_error_body,
    parse_exchange_info,
    parse_kline_rows,
    parse_server_time,
    parse_stream_message,
)
from qryptify_ingestor.errors import MalformedPayload

DATA = Path(__file__).parent / "data"

# A consistent 1m row: 2021-03-21 15:05 UTC.
ROW: list[object] = [
    1616339100000,
    "57300.00",
    "57300.00",
    "57200.61",
    "57206.47",
    "174.865",
    1616339159999,
    "10009130.07051",
    2602,
    "60.409",
    "3457649.49072",
    "0",
]


def _row(**changes: object) -> list[object]:
    names = ["t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q", "B"]
    row = list(ROW)
    for name, value in changes.items():
        row[names.index(name)] = value
    return row


def _body(*rows: list[object]) -> bytes:
    return orjson.dumps(list(rows))


def _next(row: list[object], step_ms: int = 60_000) -> list[object]:
    t = row[0]
    assert isinstance(t, int)
    return _row(t=t + step_ms, T=t + step_ms + 59_999)


def _ws_event(**k_changes: object) -> dict[str, object]:
    event = orjson.loads((DATA / "ws_kline_btcusdt_1m_closed.json").read_bytes())["data"]
    event["k"].update(k_changes)
    return dict(event)


# --- REST klines ------------------------------------------------------------------------------


def test_doc_example_row_parses_exactly() -> None:
    """The docs' 1w example row becomes a Candle with every value exactly as sent."""
    [c] = parse_kline_rows("BTCUSDT", "1w", (DATA / "klines_doc_example_1w.json").read_bytes())
    assert c.symbol == "BTCUSDT" and c.interval == "1w"
    assert (c.open_time, c.close_time) == (1499040000000, 1499644799999)
    assert c.open == Decimal("0.01634790") and str(c.open) == "0.01634790"
    assert str(c.high) == "0.80000000" and str(c.low) == "0.01575800"
    assert str(c.close) == "0.01577100" and str(c.volume) == "148976.11427815"
    assert str(c.quote_volume) == "2434.19055334" and c.trades == 308
    assert str(c.taker_buy_base) == "1756.87402397" and str(c.taker_buy_quote) == "28.46694368"


def test_recorded_btcusdt_rows_parse_in_order() -> None:
    """Two real 5m rows parse to two ascending candles, trailing zeros kept."""
    cs = parse_kline_rows("BTCUSDT", "5m", (DATA / "klines_btcusdt_5m.json").read_bytes())
    assert [c.open_time for c in cs] == [1616338800000, 1616339100000]
    assert str(cs[0].high) == "57315.00"


def test_empty_array_is_no_candles() -> None:
    """An empty page (e.g. a window inside a maintenance gap) is an empty list, not an error."""
    assert parse_kline_rows("BTCUSDT", "1m", b"[]") == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"<html>502</html>", "not JSON"),
        (b'{"code":-1121,"msg":"Invalid symbol."}', "not a JSON array"),
        (_body(ROW[:11]), "12-item"),
        (_body([*ROW, "x"]), "12-item"),
        (orjson.dumps(["oops"]), "12-item"),
    ],
)
def test_bad_body_shape_is_rejected(body: bytes, needle: str) -> None:
    """Bodies that are not an array of 12-item arrays raise MalformedPayload naming why."""
    with pytest.raises(MalformedPayload, match=needle) as info:
        parse_kline_rows("BTCUSDT", "1m", body)
    assert info.value.excerpt


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"o": "NaN"}, "open is not a plain decimal"),
        ({"h": "inf"}, "high is not a plain decimal"),
        ({"l": "-Infinity"}, "low is not a plain decimal"),
        ({"c": "5.7e4"}, "close is not a plain decimal"),
        ({"v": ""}, "volume is not a plain decimal"),
        ({"v": " 1.0"}, "volume is not a plain decimal"),
        ({"q": "+1.0"}, "quote volume is not a plain decimal"),
        ({"V": ".5"}, "taker buy base volume is not a plain decimal"),
        ({"Q": "1."}, "taker buy quote volume is not a plain decimal"),
        ({"o": 57300.0}, "open is not a plain decimal"),
        ({"t": "1616339100000"}, "open time is not an integer"),
        ({"t": 1616339100000.0}, "open time is not an integer"),
        ({"T": True}, "close time is not an integer"),
        ({"n": "2602"}, "trades is not an integer"),
        ({"n": -1}, "trades -1 is negative"),
        ({"v": "-0.001"}, "volume -0.001 is negative"),
        ({"Q": "-1"}, "taker buy quote volume -1 is negative"),
        ({"h": "57200.00"}, "OHLC inconsistent"),
        ({"l": "57300.01"}, "OHLC inconsistent"),
        ({"c": "57300.01"}, "OHLC inconsistent"),
        ({"T": 1616339160000}, "close time 1616339160000 != 1616339159999"),
        ({"t": 1616339100001, "T": 1616339160000}, "not aligned to 1m"),
    ],
)
def test_bad_row_values_are_rejected(change: dict[str, object], needle: str) -> None:
    """Each kind of invalid value raises MalformedPayload with the problem and a raw excerpt."""
    with pytest.raises(MalformedPayload, match=needle) as info:
        parse_kline_rows("BTCUSDT", "1m", _body(_row(**change)))
    assert "1616339" in info.value.excerpt
    assert "raw:" in str(info.value)


def test_one_bad_row_rejects_the_whole_page() -> None:
    """A page whose last row is bad yields no candles at all, never a partial list."""
    a = _row()
    b = _next(a)
    c = _next(b)
    c[1] = "NaN"
    with pytest.raises(MalformedPayload, match="row 2"):
        parse_kline_rows("BTCUSDT", "1m", _body(a, b, c))


def test_rows_must_strictly_ascend() -> None:
    """A repeated or backwards open time is rejected (Binance returns data oldest first)."""
    a = _row()
    with pytest.raises(MalformedPayload, match="not after"):
        parse_kline_rows("BTCUSDT", "1m", _body(a, a))
    with pytest.raises(MalformedPayload, match="not after"):
        parse_kline_rows("BTCUSDT", "1m", _body(_next(a), a))


def test_gaps_between_rows_are_allowed() -> None:
    """Rows may skip open times (exchange maintenance leaves holes, binance-futures.md §6.1)."""
    a = _row()
    cs = parse_kline_rows("BTCUSDT", "1m", _body(a, _next(a, 180_000)))
    assert len(cs) == 2


def test_monthly_close_time_follows_calendar() -> None:
    """A 1M candle's close time is the next month's first ms minus one, not a fixed length."""
    feb = 1612137600000  # 2021-02-01
    mar = 1614556800000  # 2021-03-01
    row = _row(t=feb, T=mar - 1)
    [c] = parse_kline_rows("BTCUSDT", "1M", _body(row))
    assert c.close_time == mar - 1
    with pytest.raises(MalformedPayload, match="close time"):
        parse_kline_rows("BTCUSDT", "1M", _body(_row(t=feb, T=feb + 30 * 86_400_000 - 1)))


def test_weekly_open_must_be_monday() -> None:
    """A 1w row opening on a Thursday (epoch-aligned, not Monday-aligned) is rejected."""
    thursday = 1499040000000 + 3 * 86_400_000  # the docs' Monday 2017-07-03 + 3 days
    week = 7 * 86_400_000
    with pytest.raises(MalformedPayload, match="not aligned to 1w"):
        parse_kline_rows("BTCUSDT", "1w", _body(_row(t=thursday, T=thursday + week - 1)))


def test_zero_volume_flat_candle_is_valid() -> None:
    """A no-trade candle (o=h=l=c, zero volumes, 0 trades) is accepted: klines always generate."""
    row = _row(o="1.0", h="1.0", l="1.0", c="1.0", v="0", q="0", n=0, V="0", Q="0")
    [c] = parse_kline_rows("XYZUSDT", "1m", _body(row))
    assert c.trades == 0 and c.volume == 0


def test_bad_requested_interval_is_a_caller_bug() -> None:
    """Asking to parse for an interval Binance futures does not have is a ValueError."""
    with pytest.raises(ValueError, match="1s"):
        parse_kline_rows("BTCUSDT", "1s", b"[]")


# --- other REST bodies ------------------------------------------------------------------------


def test_server_time() -> None:
    """`{"serverTime": ms}` yields the ms; anything else is MalformedPayload."""
    assert parse_server_time(b'{"serverTime":1499827319559}') == 1499827319559
    with pytest.raises(MalformedPayload, match="serverTime"):
        parse_server_time(b'{"serverTime":"1499827319559"}')
    with pytest.raises(MalformedPayload, match="not JSON"):
        parse_server_time(b"")


def test_error_body() -> None:
    """A Binance error body yields (code, msg); HTML or other JSON yields None."""
    assert parse_error_body(b'{"code":-1121,"msg":"Invalid symbol."}') == (-1121, "Invalid symbol.")
    assert parse_error_body(b"<html>403 Forbidden</html>") is None
    assert parse_error_body(b"[]") is None
    assert parse_error_body(b'{"code":"x","msg":"y"}') is None


def test_exchange_info_fields() -> None:
    """exchangeInfo yields symbols by name with converted fields, rate limits and server time."""
    info = parse_exchange_info((DATA / "exchange_info.json").read_bytes())
    assert info.server_time_ms == 1565613908500
    assert set(info.symbols) == {"BTCUSDT", "BTCUSDT_260925", "TOMOUSDT"}
    btc = info.symbols["BTCUSDT"]
    assert (btc.symbol, btc.pair, btc.status, btc.contract_type) == (
        "BTCUSDT",
        "BTCUSDT",
        "TRADING",
        "PERPETUAL",
    )
    assert (btc.onboard_date_ms, btc.delivery_date_ms) == (1569398400000, 4133404800000)
    assert (btc.base_asset, btc.quote_asset, btc.margin_asset) == ("BTC", "USDT", "USDT")
    assert info.symbols["TOMOUSDT"].status == "SETTLING"
    assert info.request_weight_limit() == (2400, 60_000)


def _info(rate_limits: list[dict[str, object]]) -> bytes:
    return orjson.dumps({"serverTime": 1, "rateLimits": rate_limits, "symbols": []})


def test_request_weight_limit_units_and_shortest_window() -> None:
    """REQUEST_WEIGHT windows are interval unit × intervalNum; the shortest window wins."""
    info = parse_exchange_info(
        _info(
            [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "HOUR",
                    "intervalNum": 1,
                    "limit": 60000,
                },
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "SECOND",
                    "intervalNum": 10,
                    "limit": 600,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 1, "limit": 5},
            ]
        )
    )
    assert info.request_weight_limit() == (600, 10_000)
    day = parse_exchange_info(
        _info(
            [{"rateLimitType": "REQUEST_WEIGHT", "interval": "DAY", "intervalNum": 1, "limit": 9}]
        )
    )
    assert day.request_weight_limit() == (9, 86_400_000)


def test_request_weight_limit_missing_is_malformed() -> None:
    """Without a REQUEST_WEIGHT entry there is no budget to follow: MalformedPayload."""
    info = parse_exchange_info(
        _info([{"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 5}])
    )
    with pytest.raises(MalformedPayload, match="no REQUEST_WEIGHT"):
        info.request_weight_limit()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (orjson.dumps({"serverTime": 1, "rateLimits": [], "symbols": {}}), "symbols is not"),
        (orjson.dumps({"serverTime": 1, "symbols": []}), "rateLimits is not"),
        (orjson.dumps({"rateLimits": [], "symbols": []}), "serverTime"),
        (
            orjson.dumps({"serverTime": 1, "rateLimits": [], "symbols": [{"symbol": "BTCUSDT"}]}),
            "pair is not a string",
        ),
        (
            _info(
                [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 0,
                    }
                ]
            ),
            "limit is not positive",
        ),
    ],
)
def test_exchange_info_malformed(body: bytes, needle: str) -> None:
    """Broken exchangeInfo bodies raise MalformedPayload naming the field."""
    with pytest.raises(MalformedPayload, match=needle):
        parse_exchange_info(body)


# --- WebSocket --------------------------------------------------------------------------------


def test_combined_closed_kline_event() -> None:
    """A combined-stream kline frame yields the stream, event time, candle and x flag."""
    raw = (DATA / "ws_kline_btcusdt_1m_closed.json").read_bytes()
    ev = parse_stream_message(raw)
    assert isinstance(ev, KlineEvent)
    assert ev.stream == "btcusdt@kline_1m" and ev.event_time == 1616339160012 and ev.closed
    c = ev.candle
    assert (c.symbol, c.interval, c.open_time, c.close_time) == (
        "BTCUSDT",
        "1m",
        1616339100000,
        1616339159999,
    )
    assert str(c.open) == "57300.00" and str(c.close) == "57241.10"
    assert str(c.high) == "57300.00" and str(c.low) == "57230.00"
    assert str(c.volume) == "61.020" and str(c.quote_volume) == "3494120.51020"
    assert c.trades == 820 and str(c.taker_buy_base) == "22.410"
    assert str(c.taker_buy_quote) == "1283172.90110"


def test_ws_and_rest_give_the_same_candle() -> None:
    """A WS event and a REST row carrying the same values produce equal Candles."""
    k = _ws_event()["k"]
    assert isinstance(k, dict)
    row = [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"],
           k["Q"], "0"]  # fmt: skip
    [rest] = parse_kline_rows("BTCUSDT", "1m", _body(row))
    ev = parse_stream_message(orjson.dumps(_ws_event()))
    assert isinstance(ev, KlineEvent) and ev.candle == rest


def test_raw_event_and_str_input() -> None:
    """A bare event (raw /ws connection) as str gets the stream name derived from the payload."""
    ev = parse_stream_message(orjson.dumps(_ws_event(x=False)).decode())
    assert isinstance(ev, KlineEvent)
    assert ev.stream == "btcusdt@kline_1m" and ev.closed is False


def test_symbol_from_outer_s_when_k_s_absent() -> None:
    """The symbol comes from k.s, or from the event's s when k.s is missing."""
    event = _ws_event()
    k = event["k"]
    assert isinstance(k, dict)
    del k["s"]
    ev = parse_stream_message(orjson.dumps(event))
    assert isinstance(ev, KlineEvent) and ev.candle.symbol == "BTCUSDT"


def test_docs_stream_example_is_rejected_for_ohlc() -> None:
    """Binance's illustrative kline example has open below low, so validation rejects it."""
    with pytest.raises(MalformedPayload, match="OHLC inconsistent"):
        parse_stream_message((DATA / "ws_kline_doc_example.json").read_bytes())


@pytest.mark.parametrize(
    ("event_change", "needle"),
    [
        ({"x": "true"}, "x is not a boolean"),
        ({"i": "1s"}, "not a USDⓈ-M kline interval"),
        ({"o": "NaN"}, "open is not a plain decimal"),
        ({"T": 1616339160000}, "close time"),
        ({"l": "57300.01"}, "OHLC inconsistent"),
        ({"s": "ETHUSDT"}, "differs from s"),
        ({"n": 1.5}, "trades is not an integer"),
    ],
)
def test_bad_kline_event_is_rejected(event_change: dict[str, object], needle: str) -> None:
    """Kline events get the same validation as REST rows, plus x and symbol consistency."""
    with pytest.raises(MalformedPayload, match=needle):
        parse_stream_message(orjson.dumps(_ws_event(**event_change)))


def test_envelope_stream_must_match_payload() -> None:
    """An envelope naming a different stream than its payload is rejected, not misfiled."""
    wrapped = {"stream": "ethusdt@kline_1m", "data": _ws_event()}
    with pytest.raises(MalformedPayload, match="does not match"):
        parse_stream_message(orjson.dumps(wrapped))


def test_missing_event_time_and_k() -> None:
    """A kline event without E or without k is MalformedPayload."""
    event = _ws_event()
    del event["E"]
    with pytest.raises(MalformedPayload, match="E is not an integer"):
        parse_stream_message(orjson.dumps(event))
    with pytest.raises(MalformedPayload, match="k is not an object"):
        parse_stream_message(b'{"e":"kline","E":1,"s":"BTCUSDT"}')


def test_control_replies() -> None:
    """Subscription replies become ControlReply with result or error and the echoed id."""
    assert parse_stream_message(b'{"result":null,"id":1}') == ControlReply(1, None, None)
    assert parse_stream_message(b'{"result":["btcusdt@kline_1m"],"id":3}') == ControlReply(
        3, ["btcusdt@kline_1m"], None
    )
    err = parse_stream_message(b'{"error":{"code":2,"msg":"Invalid request"},"id":7}')
    assert err == ControlReply(7, None, ControlError(2, "Invalid request"))
    no_id = parse_stream_message(b'{"error":{"code":3,"msg":"Invalid JSON: x"}}')
    assert no_id == ControlReply(None, None, ControlError(3, "Invalid JSON: x"))


def test_other_events_are_ignored() -> None:
    """Non-kline events and array streams yield None."""
    assert parse_stream_message(b'{"e":"markPriceUpdate","E":1,"s":"BTCUSDT"}') is None
    wrapped = b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1}}'
    assert parse_stream_message(wrapped) is None
    assert parse_stream_message(b'[{"e":"24hrMiniTicker"}]') is None


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (b"not json", "not JSON"),
        (b'"hello"', "not a JSON object"),
        (b'{"foo":1}', "neither an event nor a reply"),
        (b'{"stream":1,"data":{}}', "stream name is not a string"),
        (b'{"result":null,"id":"a"}', "id is not an integer"),
        (b'{"error":"bad","id":1}', "error is not an object"),
        (b'{"e":5}', "event type"),
    ],
)
def test_malformed_frames(frame: bytes, needle: str) -> None:
    """Frames that are neither events nor replies raise MalformedPayload with an excerpt."""
    with pytest.raises(MalformedPayload, match=needle) as info:
        parse_stream_message(frame)
    assert info.value.excerpt
