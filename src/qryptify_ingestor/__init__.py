"""Qryptify Data Ingestor: Binance USDⓈ-M Futures klines into PostgreSQL / TimescaleDB."""

__version__ = "0.1.0"
