-- 001: the storage contract. Plain PostgreSQL; TimescaleDB features are added by 002 when the
-- extension is available. Every statement is idempotent: this file also runs as the
-- docker-entrypoint init script (docker-compose mounts sql/) and again under our migrator.

CREATE TABLE IF NOT EXISTS candlesticks (
    symbol          text        NOT NULL,
    interval        text        NOT NULL,
    ts              timestamptz NOT NULL,   -- candle open time (Binance field 0 / k.t)
    open            numeric     NOT NULL,
    high            numeric     NOT NULL,
    low             numeric     NOT NULL,
    close           numeric     NOT NULL,
    volume          numeric     NOT NULL,
    close_time      timestamptz NOT NULL,   -- open time + interval - 1 ms (field 6 / k.T)
    quote_volume    numeric     NOT NULL,
    trades          bigint      NOT NULL,
    taker_buy_base  numeric     NOT NULL,
    taker_buy_quote numeric     NOT NULL,
    PRIMARY KEY (symbol, interval, ts)
);

-- Per (symbol, interval): where coverage starts and the resume point. Invariant: every candle
-- Binance has from first_ts through last_ts is stored, except inside recorded exchange_gaps.
-- last_ts only ever moves forward over contiguous candles, so a hole never survives a restart.
CREATE TABLE IF NOT EXISTS sync_state (
    symbol      text        NOT NULL,
    interval    text        NOT NULL,
    first_ts    timestamptz,            -- open time of the first stored candle of the coverage
    last_ts     timestamptz,            -- open time of the last candle stored contiguously
    listing_ts  timestamptz,            -- first candle Binance really has (found by backfill)
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, interval)
);

-- Ranges for which Binance itself has no rows (maintenance, delist/relist): [gap_start, gap_end)
-- where gap_end is the open time of the first candle after the hole. Recorded once, shown by
-- status/verify, never fabricated, re-checked by `repair` when older than a configured age.
CREATE TABLE IF NOT EXISTS exchange_gaps (
    symbol      text        NOT NULL,
    interval    text        NOT NULL,
    gap_start   timestamptz NOT NULL,
    gap_end     timestamptz NOT NULL,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, interval, gap_start),
    CHECK (gap_end > gap_start)
);

-- Ranges whose payloads stayed malformed after retries: reported, never written, retried by repair.
CREATE TABLE IF NOT EXISTS failed_ranges (
    symbol      text        NOT NULL,
    interval    text        NOT NULL,
    range_start timestamptz NOT NULL,
    range_end   timestamptz NOT NULL,
    reason      text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1,
    last_failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, interval, range_start)
);
