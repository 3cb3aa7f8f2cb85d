"""The configuration contract: keys, precedence, and one-line errors naming key and value."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from qryptify_ingestor.config import load_settings, unknown_env_names
from qryptify_ingestor.errors import ConfigError

CONTRACT = """
database_url: postgresql://postgres:postgres@localhost:5432/qryptify
symbols: [BTCUSDT, ETHUSDT, BNBUSDT]
intervals: [1m]
start_date: 2023-01-01        # ISO date or datetime, UTC
binance:
  rest_url: https://fapi.binance.com
  ws_url: wss://fstream.binance.com/market
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_contract_example_loads(tmp_path: Path) -> None:
    """The documented example config loads with exactly its values."""
    s = load_settings(write(tmp_path, CONTRACT), environ={})
    assert s.symbols == ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    assert s.intervals == ("1m",)
    assert s.start_date.isoformat() == "2023-01-01T00:00:00+00:00"
    assert s.binance.ws_url == "wss://fstream.binance.com/market"
    assert s.database_url == "postgresql://postgres:postgres@localhost:5432/qryptify"


def test_example_file_documents_every_key() -> None:
    """config.example.yaml loads and sets every key the model has."""
    root = Path(__file__).resolve().parents[1]
    s = load_settings(root / "config.example.yaml", environ={})
    text = (root / "config.example.yaml").read_text()
    for name in type(s).model_fields:
        assert f"{name}:" in text, name
        sub = getattr(s, name)
        if isinstance(sub, BaseModel):
            for key in type(sub).model_fields:
                assert f"{key}:" in text, f"{name}.{key}"


def test_environment_overrides_file(tmp_path: Path) -> None:
    """QRYPTIFY_* variables beat the file; the documented short names work."""
    env = {
        "QRYPTIFY_DATABASE_URL": "postgresql://u@h/db",
        "QRYPTIFY_REST_URL": "http://127.0.0.1:9000",
        "QRYPTIFY_WS_URL": "ws://127.0.0.1:9000/market",
        "QRYPTIFY_SYMBOLS": "solusdt, XRPUSDT",
        "QRYPTIFY_LIVE_SILENCE_TIMEOUT_S": "7.5",
    }
    s = load_settings(write(tmp_path, CONTRACT), environ=env)
    assert s.database_url == "postgresql://u@h/db"
    assert s.binance.rest_url == "http://127.0.0.1:9000"
    assert s.binance.ws_url == "ws://127.0.0.1:9000/market"
    assert s.symbols == ("SOLUSDT", "XRPUSDT")
    assert s.live.silence_timeout_s == 7.5


def test_flags_beat_environment(tmp_path: Path) -> None:
    """Command-line overrides win over the environment."""
    s = load_settings(
        write(tmp_path, CONTRACT),
        environ={"QRYPTIFY_DATABASE_URL": "postgresql://env/x"},
        overrides={"database_url": "postgresql://flag/y"},
    )
    assert s.database_url == "postgresql://flag/y"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("symbols: [BTCUSDT]\nsymbolz: [X]\n", "symbolz: unknown key"),
        ("binance:\n  rest_urll: x\n", "binance.rest_urll: unknown key"),
        ("intervals: [2m]\n", "intervals: invalid interval '2m'"),
        ("start_date: yesterday\n", "start_date: unparsable date 'yesterday'"),
        ("start_date: 2999-01-01\n", "start_date: start date 2999-01-01 is in the future"),
        ("symbols: []\n", "symbols: the symbol list is empty"),
        ("symbols: [BTC-USDT]\n", "symbols: invalid symbol 'BTC-USDT'"),
        ("binance:\n  weight_share: 1.5\n", "binance.weight_share"),
        ("- just\n- a list\n", "expected a mapping"),
        ("symbols: [BTCUSDT\n", "not valid YAML"),
    ],
)
def test_bad_input_names_key_and_value(tmp_path: Path, text: str, expected: str) -> None:
    """Each bad value gives one line naming the key and the value."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    """An explicit --config path that does not exist is an error naming it."""
    with pytest.raises(ConfigError, match=r"nope\.yaml: not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_unknown_environment_names_are_reported() -> None:
    """A misspelt QRYPTIFY_ variable is reported rather than silently ignored."""
    assert unknown_env_names({"QRYPTIFY_SYMBOL": "x", "QRYPTIFY_SYMBOLS": "y", "HOME": "/"}) == [
        "QRYPTIFY_SYMBOL"
    ]
