"""Settings from env (`KEEPER_*`), a `.env` file and CLI overrides, validated once at start.

Precedence: CLI overrides > environment > .env > defaults. Secrets are SecretStr and
never appear in errors, reprs or `redacted()`; validation errors are re-raised as
ConfigError with one line per field naming its env var.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from eth_utils import is_checksum_address, to_checksum_address
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keeper.errors import ConfigError
from keeper.log import redact_url

ENV_PREFIX = "KEEPER_"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ANVIL = REPO_ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_LEVELS = ("debug", "info", "warning", "error", "critical")


def _address(v: str | None) -> str | None:
    if v is None or v == "":
        return None
    v = v.strip()
    if not _ADDRESS.match(v):
        raise ValueError("must be a 0x-prefixed 20-byte hex address")
    if v != v.lower() and v[2:] != v[2:].upper() and not is_checksum_address(v):
        raise ValueError("mixed-case address with a wrong checksum (typo?)")
    return to_checksum_address(v)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,  # `KEEPER_CHAIN_ID=` in .env means "unset", not an error
        hide_input_in_errors=True,  # a bad private key must never be echoed
        validate_default=True,
    )

    # chain access
    rpc_url: str | None = Field(None, description="HTTP(S) JSON-RPC; required for run/scan")
    rpc_urls: str = Field("", description="more endpoints, comma-separated: failover reads, broadcast sends")
    ws_url: str | None = None
    chain_id: int | None = Field(None, description="if set, the node must report this id")
    pool_addresses_provider: str | None = None
    start_block: int = Field(0, ge=0)

    # execution
    private_key: SecretStr | None = None
    dry_run: bool = False
    execution: Literal["inventory", "flashloan", "auto"] = "inventory"
    executor_address: str | None = None
    # flash-loan mode: Uniswap V3 SwapRouter and QuoterV2, and hub tokens for two-hop routes
    uniswap_router: str | None = None
    uniswap_quoter: str | None = None
    swap_hubs: str = Field("", description="comma-separated hub token addresses; overrides pool discovery")
    swap_max_hops: int = Field(2, ge=1, le=3, description="longest route over the discovered pools")
    pool_refresh_blocks: int = Field(300, ge=1, description="re-read the Uniswap pool graph this often")
    swap_slippage_bps: int = Field(50, ge=0, le=5_000)
    flash_margin_bps: int = Field(10, ge=0, le=1_000)
    min_profit_usd: Decimal = Field(Decimal(1), ge=0)
    # the reserve whose oracle price prices gas; default: the market's WETH/WMATIC/... reserve
    native_asset: str | None = None
    pool_revision_override: int | None = Field(
        None, ge=0, description="use instead of POOL_REVISION() to choose the rules; unknown: fork sizing")
    max_fee_gwei: Decimal = Field(Decimal(500), gt=0)

    # sending: fees, replacement, private submission (keeper/exec)
    priority_fee_share_bps: int = Field(1_000, ge=0, le=10_000,
                                        description="priority fee: this share of the profit after base fee")
    replace_after_blocks: int = Field(3, ge=1, description="re-send at the same nonce after this many blocks")
    fee_bump_bps: int = Field(1_250, ge=1_250, le=10_000, description="each replacement raises fees by this")
    max_pending_blocks: int = Field(25, ge=1, description="cancel an attempt still pending after this")
    cooldown_blocks: int = Field(3, ge=0, description="blocks a borrower is left alone after a failure")
    inclusion_wait_s: float = Field(0.5, ge=0, description="how long a cycle waits for its own receipt")
    private_tx_url: str | None = None
    private_tx_method: Literal["eth_sendPrivateTransaction", "eth_sendRawTransaction"] = \
        "eth_sendPrivateTransaction"
    bundle_relay_url: str | None = None
    relay_signing_key: SecretStr | None = None
    bundle_blocks: int = Field(3, ge=1, le=25, description="blocks a bundle is offered for, then stale")

    # safety
    min_gas_balance_eth: Decimal = Field(Decimal("0.05"), ge=0)
    breaker_max_failures: int = Field(3, ge=1)
    breaker_window_s: float = Field(3_600.0, gt=0)
    breaker_cooldown_s: float = Field(300.0, ge=0, description="open -> half-open after this; 0: never")
    breaker_reset_s: float | None = Field(None, ge=0, description="deprecated name of breaker_cooldown_s")
    kill_switch_file: Path | None = None

    # RPC tuning
    rpc_timeout_s: float = Field(10.0, gt=0)
    rpc_max_retries: int = Field(4, ge=0, le=20)
    rpc_read_deadline_s: float = Field(0.3, gt=0, description="a read not answered by then is hedged")
    rpc_send_deadline_s: float = Field(6.0, gt=0, description="how long a refused broadcast is re-sent")
    multicall_batch_size: int = Field(500, ge=1)
    # geth's default eth_call gas cap; 500 getUserAccountData ~ 23M fits with headroom.
    multicall_gas: int = Field(50_000_000, ge=1_000_000)
    recheck_per_block: int = Field(500, ge=0, description="scheduled on-chain re-checks per block; 0: no cap")
    getlogs_max_range: int = Field(10_000, ge=1)
    poll_interval_s: float = Field(1.0, gt=0, description="head polling period without a websocket")
    heads_stall_timeout_s: float = Field(30.0, gt=0, description="reconnect the websocket after this silence")
    index_confirmations: int = Field(12, ge=0, description="blocks behind head that getLogs pages stop at")
    health_source: Literal["mirror", "chain"] = "mirror"

    # local tooling and ops
    anvil_path: Path = DEFAULT_ANVIL
    db_path: Path = Path("keeper.db")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9108, ge=0, le=65535, description="0 disables /metrics")
    health_max_head_age_s: float = Field(120.0, gt=0, description="/healthz 503 after no new head this long")
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("rpc_url", "private_tx_url", "bundle_relay_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v and not re.match(r"^https?://[^/\s]+", v.strip()):
            raise ValueError("must be an http:// or https:// URL")
        return v.strip() if v else None

    @field_validator("rpc_urls")
    @classmethod
    def _http_urls(cls, v: str) -> str:
        urls = [u.strip() for u in v.split(",") if u.strip()]
        for u in urls:
            cls._http_url(u)
        return ",".join(urls)

    def rpc_endpoints(self) -> list[str]:
        """KEEPER_RPC_URL first, then KEEPER_RPC_URLS (without repeats)."""
        urls = [self.rpc_url] if self.rpc_url else []
        return urls + [u for u in self.rpc_urls.split(",") if u and u not in urls]

    @field_validator("ws_url")
    @classmethod
    def _ws_url(cls, v: str | None) -> str | None:
        if v and not re.match(r"^wss?://[^/\s]+", v.strip()):
            raise ValueError("must be a ws:// or wss:// URL")
        return v.strip() if v else None

    @field_validator("pool_addresses_provider", "executor_address", "native_asset", "uniswap_router",
                     "uniswap_quoter")
    @classmethod
    def _checksum(cls, v: str | None) -> str | None:
        return _address(v)

    @field_validator("private_key", "relay_signing_key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or v.get_secret_value().strip() == "":
            return None
        raw = v.get_secret_value().strip()
        if not _KEY.match(raw):
            # Deliberately says nothing about the value (not even its length).
            raise ValueError("must be 32 bytes of hex (64 hex characters, optional 0x)")
        return SecretStr(raw if raw.startswith("0x") else "0x" + raw)

    @field_validator("swap_hubs")
    @classmethod
    def _hubs(cls, v: str) -> str:
        return ",".join(_address(a) or "" for a in v.split(",") if a.strip())

    def hubs(self) -> list[str]:
        return [a for a in self.swap_hubs.split(",") if a]

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in _LEVELS:
            raise ValueError(f"must be one of {', '.join(_LEVELS)}")
        return v.lower()

    @model_validator(mode="after")
    def _breaker_reset_is_the_cooldown(self) -> Settings:
        """KEEPER_BREAKER_RESET_S (before the breaker went half-open) still sets the cooldown."""
        if self.breaker_reset_s is not None:
            both = "breaker_cooldown_s" in self.model_fields_set
            if both and self.breaker_cooldown_s != self.breaker_reset_s:
                raise ValueError(f"{ENV_PREFIX}BREAKER_RESET_S is the old name of "
                                 f"{ENV_PREFIX}BREAKER_COOLDOWN_S; set only one")
            self.breaker_cooldown_s = self.breaker_reset_s
        return self

    def require(self, *fields: str) -> None:
        """Raise ConfigError naming every listed field that is unset (for a command's needs)."""
        if "rpc_url" in fields and not self.rpc_url and self.rpc_urls:
            self.rpc_url = self.rpc_urls.split(",")[0]  # KEEPER_RPC_URLS alone is enough
        missing = [f for f in fields if getattr(self, f) in (None, "")]
        if missing:
            raise ConfigError(
                "\n".join(f"{ENV_PREFIX}{f.upper()}: required for this command" for f in missing)
            )

    def redacted(self) -> dict[str, Any]:
        """All settings as JSON-friendly values, safe to log: secrets masked, URLs cut to host."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "***"
            elif name.endswith("_url") and value:
                value = redact_url(value)
            elif name.endswith("_urls") and value:
                value = ",".join(redact_url(u) for u in value.split(","))
            elif isinstance(value, Decimal | Path):
                value = str(value)
            out[name] = value
        return out


def _env_name(loc: tuple[int | str, ...]) -> str:
    return f"{ENV_PREFIX}{str(loc[0]).upper()}" if loc else "settings"


def load_settings(**cli_overrides: Any) -> Settings:
    """Build Settings; `None` overrides (CLI options not given) are ignored.

    Raises ConfigError with lines like "KEEPER_PRIVATE_KEY: must be 32 bytes of hex ...".
    """
    overrides = {k: v for k, v in cli_overrides.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors(include_input=False, include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{_env_name(err['loc'])}: {msg}")
        # `from None`: the ValidationError must not ride along in tracebacks.
        raise ConfigError("\n".join(lines)) from None
