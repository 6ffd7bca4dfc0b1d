"""`keeper status`: one screen about a running keeper, read from its /metrics, /healthz and /readyz.

Exit codes: 0 healthy and ready, 1 reachable but unhealthy or not ready, 3 unreachable (nothing
listening, timeout, or an answer that is not the keeper's). `--json` prints the same as one object.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from keeper.config import Settings

EXIT_OK, EXIT_UNHEALTHY, EXIT_UNREACHABLE = 0, 1, 3


@dataclass
class Status:
    url: str
    reachable: bool
    error: str | None = None
    healthy: bool = False
    health_reasons: list[str] = field(default_factory=list)
    ready: bool = False
    ready_reasons: list[str] = field(default_factory=list)
    up: bool = False
    head_block: int | None = None
    indexed_block: int | None = None
    head_lag_blocks: int | None = None
    borrowers_tracked: int | None = None
    borrowers_liquidatable: int | None = None
    pending_transactions: int | None = None
    breaker_open: bool = False
    sending_paused: bool = False
    sends: dict[str, int] = field(default_factory=dict)
    profit_usd: str | None = None
    gas_spent_eth: str | None = None
    wallet_balance_eth: str | None = None

    @property
    def exit_code(self) -> int:
        if not self.reachable:
            return EXIT_UNREACHABLE
        return EXIT_OK if self.healthy and self.ready else EXIT_UNHEALTHY


def default_url(settings: Settings) -> str:
    host = settings.metrics_host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{host}:{settings.metrics_port}"


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → (sorted label pairs) → value."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _one(samples: dict[str, dict[Any, float]], name: str) -> float | None:
    values = samples.get(name, {})
    return next(iter(values.values())) if values else None


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def _wei_to_eth(v: float | None) -> str | None:
    return None if v is None else f"{Decimal(int(v)) / 10**18:.6f}"


def build_status(url: str, metrics_text: str, healthz: tuple[int, str], readyz: tuple[int, str]) -> Status:
    m = parse_metrics(metrics_text)
    if "keeper_up" not in m:
        return Status(url, reachable=False, error="no keeper_up in /metrics: not a keeper")
    head, indexed = _int(_one(m, "keeper_head_block")), _int(_one(m, "keeper_indexed_block"))
    lag = _int(_one(m, "keeper_head_lag_blocks"))
    sends = {dict(labels).get("outcome", ""): int(v)
             for labels, v in m.get("keeper_liquidations_total", {}).items()}
    profit = _one(m, "keeper_profit_usd_total")
    return Status(
        url, reachable=True,
        healthy=healthz[0] == 200, health_reasons=_reasons(healthz[1]),
        ready=readyz[0] == 200, ready_reasons=_reasons(readyz[1]),
        up=_one(m, "keeper_up") == 1, head_block=head, indexed_block=indexed, head_lag_blocks=lag,
        borrowers_tracked=_int(_one(m, "keeper_borrowers_tracked")),
        borrowers_liquidatable=_int(_one(m, "keeper_borrowers_liquidatable")),
        pending_transactions=_int(_one(m, "keeper_attempts_in_flight")),
        breaker_open=_one(m, "keeper_breaker_open") == 1,
        sending_paused=_one(m, "keeper_sending_paused") == 1,
        sends=dict(sorted(sends.items())),
        profit_usd=None if profit is None else f"{Decimal(repr(profit)):.2f}",
        gas_spent_eth=_wei_to_eth(_one(m, "keeper_gas_spent_wei_total")),
        wallet_balance_eth=_wei_to_eth(_one(m, "keeper_wallet_balance_wei")),
    )


def _reasons(body: str) -> list[str]:
    return [ln for ln in body.splitlines()[1:] if ln.strip()]


async def fetch_status(url: str, timeout_s: float = 5.0) -> Status:
    url = url.rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            texts = []
            for path in ("/metrics", "/healthz", "/readyz"):
                async with http.get(url + path) as r:
                    texts.append((r.status, await r.text()))
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return Status(url, reachable=False, error=f"{type(e).__name__}: {e}".rstrip(": "))
    (metrics_status, metrics_text), healthz, readyz = texts
    if metrics_status != 200:
        return Status(url, reachable=False, error=f"/metrics answered HTTP {metrics_status}")
    return build_status(url, metrics_text, healthz, readyz)


def _show(v: object) -> str:
    return "-" if v is None else str(v)


def render(st: Status) -> Panel:
    if not st.reachable:
        return Panel(f"[bold red]unreachable[/] {st.url}\n{st.error}", title="keeper status")
    state = ("[bold green]healthy[/]" if st.healthy else "[bold red]unhealthy[/]") + ", " + \
            ("[green]ready[/]" if st.ready else "[yellow]not ready[/]")
    reasons = "".join(f"\n  {r}" for r in st.health_reasons + st.ready_reasons)
    lag = st.head_lag_blocks
    if lag is None and st.head_block is not None and st.indexed_block is not None:
        lag = st.head_block - st.indexed_block
    chain = Table.grid(padding=(0, 2))
    chain.add_column(style="bold")
    chain.add_column(justify="right")
    for label, value in (
        ("head block", _show(st.head_block)), ("indexed block", _show(st.indexed_block)),
        ("head lag (blocks)", _show(lag)), ("borrowers tracked", _show(st.borrowers_tracked)),
        ("liquidatable now", _show(st.borrowers_liquidatable)),
        ("pending transactions", _show(st.pending_transactions)),
        ("circuit breaker", "[red]OPEN[/]" if st.breaker_open else "closed"),
        ("kill switch", "[red]ON (sending paused)[/]" if st.sending_paused else "off"),
        ("profit (USD)", _show(st.profit_usd)), ("gas spent (native)", _show(st.gas_spent_eth)),
        ("wallet (native)", _show(st.wallet_balance_eth)),
    ):
        chain.add_row(label, value)
    sends = Table("outcome", "sends", title="liquidations by outcome", title_justify="left")
    for outcome, n in st.sends.items():
        sends.add_row(outcome, str(n))
    return Panel(Group(f"{state}  {st.url}{reasons}", "", chain, "", sends),
                 title=f"keeper status — {'up' if st.up else 'down'}")


async def status(settings: Settings, *, url: str | None, as_json: bool, timeout_s: float) -> int:
    """Print the screen (or JSON) to stdout; return the exit code."""
    st = await fetch_status(url or default_url(settings), timeout_s)
    if as_json:
        print(json.dumps(asdict(st) | {"exit_code": st.exit_code}, indent=2))
    else:
        Console(highlight=False, width=None if sys.stdout.isatty() else 100).print(render(st))
    return st.exit_code
