"""Settings loading/validation, and the logging setup that keeps secrets out of logs."""

from __future__ import annotations

import io
import json
import logging
import os
from decimal import Decimal
from pathlib import Path

import pytest
import structlog

from keeper.config import DEFAULT_ANVIL, Settings, load_settings
from keeper.errors import ConfigError
from keeper.log import configure_logging, get_logger, mask_secrets

KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
PROVIDER = "0x2f39d218133AFaB8F2B819B1066c7E434Ad94E9e"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No KEEPER_* from the developer's shell and no stray .env: each test sets its own."""
    for name in list(os.environ):
        if name.upper().startswith("KEEPER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_need_no_environment() -> None:
    s = load_settings()
    assert s.rpc_url is None and s.private_key is None
    assert s.execution == "inventory" and s.dry_run is False
    assert s.metrics_port == 9108 and s.rpc_max_retries == 4
    assert s.min_profit_usd == Decimal(1) and isinstance(s.min_profit_usd, Decimal)
    assert s.anvil_path == DEFAULT_ANVIL and DEFAULT_ANVIL.exists()


def test_env_prefix_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPER_RPC_URL", "https://rpc.example.org/v2/KEY")
    monkeypatch.setenv("keeper_min_profit_usd", "2.55")
    monkeypatch.setenv("Keeper_Dry_Run", "true")
    s = load_settings()
    assert s.rpc_url == "https://rpc.example.org/v2/KEY"
    assert s.min_profit_usd == Decimal("2.55")
    assert s.dry_run is True


def test_dotenv_file_is_read_and_env_beats_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text("KEEPER_START_BLOCK=123\nKEEPER_METRICS_PORT=9999\nOTHER=1\n")
    monkeypatch.setenv("KEEPER_METRICS_PORT", "0")
    s = load_settings()
    assert s.start_block == 123
    assert s.metrics_port == 0


def test_cli_overrides_beat_env_and_none_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPER_DRY_RUN", "false")
    monkeypatch.setenv("KEEPER_START_BLOCK", "7")
    s = load_settings(dry_run=True, start_block=None)
    assert s.dry_run is True and s.start_block == 7


def test_lowercase_address_is_checksummed() -> None:
    s = load_settings(pool_addresses_provider=PROVIDER.lower())
    assert s.pool_addresses_provider == PROVIDER


def test_mixed_case_address_with_bad_checksum_is_rejected() -> None:
    bad = PROVIDER[:-1] + ("E" if PROVIDER[-1] == "e" else "e")
    with pytest.raises(ConfigError, match=r"KEEPER_POOL_ADDRESSES_PROVIDER: .*checksum"):
        load_settings(pool_addresses_provider=bad)


@pytest.mark.parametrize("raw", [KEY, KEY[2:], f"  {KEY}  "])
def test_private_key_accepts_64_hex_with_or_without_prefix(raw: str) -> None:
    s = load_settings(private_key=raw)
    assert s.private_key is not None and s.private_key.get_secret_value() == KEY
    assert KEY[2:] not in repr(s) and KEY[2:] not in str(s)


@pytest.mark.parametrize("raw", [KEY[:-2], KEY + "00", "0x" + "zz" * 32, "mnemonic words here"])
def test_bad_private_key_error_names_the_env_var_not_the_value(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", raw)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert text == "KEEPER_PRIVATE_KEY: must be 32 bytes of hex (64 hex characters, optional 0x)"
    assert raw.strip()[4:20] not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_every_bad_field_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPER_RPC_URL", "ftp://nope")
    monkeypatch.setenv("KEEPER_EXECUTION", "yolo")
    monkeypatch.setenv("KEEPER_RPC_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "KEEPER_RPC_URL",
        "KEEPER_EXECUTION",
        "KEEPER_RPC_TIMEOUT_S",
    ]


def test_require_names_each_missing_setting() -> None:
    s = load_settings()
    with pytest.raises(ConfigError) as info:
        s.require("rpc_url", "private_key", "start_block")
    assert str(info.value).splitlines() == [
        "KEEPER_RPC_URL: required for this command",
        "KEEPER_PRIVATE_KEY: required for this command",
    ]


def test_redacted_masks_secrets_and_url_credentials() -> None:
    s = load_settings(
        rpc_url="https://user:pw@eth.example.org/v3/APIKEY",
        ws_url="wss://eth.example.org/ws/APIKEY",
        private_key=KEY,
        min_profit_usd="3.5",
    )
    red = s.redacted()
    dumped = json.dumps(red)  # must be JSON-friendly for the start-up log line
    assert "APIKEY" not in dumped and KEY[2:] not in dumped and "pw" not in dumped
    assert red["rpc_url"] == "https://eth.example.org"
    assert red["private_key"] == "***"
    assert red["min_profit_usd"] == "3.5"


def test_settings_field_names_are_stable() -> None:
    expected = {
        "rpc_url", "ws_url", "pool_addresses_provider", "private_key", "start_block", "dry_run",
        "min_profit_usd", "metrics_port", "anvil_path", "execution", "executor_address",
        "db_path", "chain_id", "rpc_timeout_s", "rpc_max_retries", "multicall_batch_size",
        "multicall_gas", "getlogs_max_range", "log_level", "log_format", "max_fee_gwei",
    }  # fmt: skip
    assert expected <= set(Settings.model_fields)


# -- logging -----------------------------------------------------------------------------


def test_mask_secrets_hides_secret_keys_and_key_shaped_hex() -> None:
    tx_hash = "0x" + "ab" * 32
    out = mask_secrets(
        None,
        "info",
        {
            "event": f"signing with {KEY}",
            "private_key": "anything",
            "api_key": "abc",
            "signature": "0x1234",
            "tx": tx_hash,
            "block_hash": tx_hash,
            "url": "https://eth.example.org/v3/APIKEY",
            "nested": {"password": "hunter2", "ok": 5},
            "calldata": "0x" + "00" * 68,
        },
    )
    assert KEY[2:] not in out["event"]
    assert out["private_key"] == out["api_key"] == out["signature"] == "***"
    assert out["tx"] == tx_hash and out["block_hash"] == tx_hash
    assert out["url"] == "https://eth.example.org"
    assert out["nested"] == {"password": "***", "ok": 5}
    assert out["calldata"] == "0x" + "00" * 68


def test_json_logs_are_key_values_with_utc_timestamps_and_no_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    monkeypatch.setattr(root, "level", root.level)
    try:
        configure_logging("info", "json", secrets=["s3cr3t-api-token"])
        log = get_logger("keeper.test")
        log.debug("test.hidden")
        log.info("test.event", n=1, note="token s3cr3t-api-token", key=KEY)
    finally:
        structlog.reset_defaults()
    (line,) = buf.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "test.event" and event["n"] == 1 and event["level"] == "info"
    assert event["logger"] == "keeper.test"
    assert event["timestamp"].endswith("Z")
    assert "s3cr3t" not in line and KEY[2:] not in line
