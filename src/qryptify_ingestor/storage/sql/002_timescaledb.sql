-- 002: every TimescaleDB-specific statement, in this one file. A no-op (one NOTICE) on plain
-- PostgreSQL, so the same schema serves both; idempotent, because it runs once as a
-- docker-entrypoint init script (psql, timescale/timescaledb image) and again under our migrator.
--
-- TimescaleDB 2.28 rules followed here (shared/timescaledb/README.md):
--  * the extension is usable only when the server preloads it (shared_preload_libraries);
--    being installed on disk is not enough, so both are checked before CREATE EXTENSION;
--  * the *_columnstore* calls are procedures (CALL, not SELECT);
--  * once the columnstore is enabled MERGE into the hypertable is rejected: the writer uses
--    COPY into a staging table + INSERT ... ON CONFLICT DO UPDATE instead;
--  * one DML transaction may decompress at most 100 000 rows from compressed chunks
--    (timescaledb.max_tuples_decompressed_per_dml_transaction), so writers keep batches bounded.

DO $tsdb$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
            RAISE NOTICE 'TimescaleDB is not installed on this server: candlesticks stays a plain table';
            RETURN;
        END IF;
        IF NOT 'timescaledb' = ANY (string_to_array(
                replace(current_setting('shared_preload_libraries'), ' ', ''), ',')) THEN
            RAISE NOTICE 'TimescaleDB is installed but not in shared_preload_libraries: candlesticks stays a plain table';
            RETURN;
        END IF;
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;

    -- 7-day chunks: ~300 USDⓈ-M perpetuals at 1m are ~3 M rows a week (plus the coarser
    -- intervals), a few hundred MB with the primary key: big enough to keep the chunk count
    -- low over years of history, small enough that the live chunk and its index stay in memory.
    -- migrate_data: candlesticks may already hold rows (001 ran before the extension existed).
    PERFORM create_hypertable('candlesticks', by_range('ts', INTERVAL '7 days'),
                              if_not_exists => true, migrate_data => true);

    -- Columnstore: one segment per (symbol, interval), ordered by time, which is how every read
    -- (a range of one stream) and every upsert (ON CONFLICT on the primary key) finds its rows.
    -- Set only once: changing the settings is refused while compressed chunks exist.
    IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                   WHERE hypertable_name = 'candlesticks'
                     AND hypertable_schema = current_schema()
                     AND compression_enabled) THEN
        ALTER TABLE candlesticks SET (
            timescaledb.enable_columnstore = true,
            timescaledb.segmentby = 'symbol, interval',
            timescaledb.orderby = 'ts'
        );
    END IF;

    -- Compress a chunk only when it ends more than 42 days (6 chunk intervals) ago. Live writes
    -- land on closed candles whose open time is up to one interval old: minutes for 1m, a week
    -- for 1w, and up to 31 days for 1M (a monthly candle closes a month after it opens). Gap
    -- repair after an outage also rewrites the recent past. With 42 days every such write hits
    -- a rowstore chunk; an upsert into a compressed chunk still works, but it decompresses the
    -- batch it touches (counted against the 100 000-row-per-transaction limit) until the next
    -- policy run recompresses it, so that is left to deliberate backfills of old history.
    CALL add_columnstore_policy('candlesticks', after => INTERVAL '42 days', if_not_exists => true);
END
$tsdb$;
