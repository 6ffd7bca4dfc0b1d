"""What each CLI command does, given Settings. Output for people goes to stdout; logs to stderr."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from keeper.app import App
from keeper.chain.rpc import RpcClient
from keeper.config import Settings, load_settings
from keeper.errors import ConfigError
from keeper.log import get_logger
from keeper.pipeline import CycleReport

log = get_logger(__name__)
# A pipe or a file gets a wide table instead of rich's 80-column default.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


async def run(settings: Settings) -> int:
    reports = await App(settings).run()
    return 0 if reports is not None else 1


async def scan(settings: Settings, *, limit: int, hf_below: Decimal) -> int:
    from keeper.scan import scan as do_scan

    result = await do_scan(settings, hf_below_wad=int(hf_below * 10**18), limit=limit)
    unit = Decimal(result.market.base_currency_unit)
    table = Table(
        title=f"Borrowers at risk at block {result.block} "
        f"({len(result.at_risk)} shown of {result.borrowers} borrowers)"
    )
    for col in ("borrower", "health factor", "collateral $", "debt $", "liquidatable when", "all collateral"):
        table.add_column(col, justify="left" if col in ("borrower", "liquidatable when") else "right")
    for r in result.at_risk:
        h = r.health
        moves = ", ".join(f"{m.symbol} {m.move_bps / 100:+.2f}%" for m in r.moves[:2]) or "-"
        table.add_row(
            h.user,
            f"{Decimal(h.health_factor_wad) / 10**18:.4f}",
            f"{Decimal(h.total_collateral_base) / unit:,.2f}",
            f"{Decimal(h.total_debt_base) / unit:,.2f}",
            "now" if h.liquidatable else moves,
            "now" if h.liquidatable else f"-{r.uniform_drop_bps / 100:.2f}%",
        )
    out.print(table)
    return 0


async def heatmap(settings: Settings, *, asset: str, steps: int, step_bps: int) -> int:
    from keeper.heatmap_cmd import heatmap as read_heatmap
    from keeper.heatmap_cmd import render

    out.print(render(await read_heatmap(settings, asset=asset, steps=steps, step_bps=step_bps)))
    return 0


def _demo_done(dry_run: bool, patience: int = 5):
    """Stop when nobody is liquidatable, or after `patience` cycles in a row that send nothing."""
    idle = 0

    def done(report: CycleReport) -> bool:
        nonlocal idle
        if report.liquidatable == 0:
            return True
        if dry_run:
            return bool(report.dry_run) or report.simulated == 0
        idle = 0 if report.sent else idle + 1
        return idle >= patience

    return done


async def demo(
    settings: Settings,
    *,
    borrowers: int,
    shock: tuple[str, str],
    dry_run: bool,
    execution: str,
    timeout_s: float,
) -> int:
    from keeper.devnet.seed import shock as do_shock
    from keeper.devnet.stack import KEEPER_ADDRESS, launch
    from keeper.devnet.uniswap import align_pools, arbitrage_loop

    asset, pct = shock[0].upper(), Decimal(shock[1])
    out.print(f"[bold]demo[/]: starting a devnet with {borrowers} borrowers (Aave V3.6 on Anvil)…")
    dn = await launch(borrowers=borrowers, anvil_binary=settings.anvil_path)
    workdir = tempfile.mkdtemp(prefix="keeper-demo-")  # the demo's index lives and dies with its chain
    try:
        out.print(
            f"market deployed in {dn.timings['deploy_s']:.2f}s, seeded in {dn.timings['seeding_s']:.2f}s"
        )
        old, new = await do_shock(dn.rpc, dn.deployment, asset, pct)
        moved = await align_pools(dn.rpc, dn.deployment, dn.uniswap)
        out.print(
            f"shock: {asset} {old / 1e8:,.2f} → {new / 1e8:,.2f} USD ({pct:+}%); "
            f"{moved} Uniswap pools arbitraged to the new price"
        )
        env = {k.removeprefix("KEEPER_").lower(): v for k, v in dn.keeper_env().items()}
        keeper_settings = load_settings(
            **{
                **settings.model_dump(exclude={"private_key"}),
                **env,
                "dry_run": dry_run,
                "execution": execution,
                "poll_interval_s": 0.2,
                "db_path": Path(workdir) / "keeper.db",
            }
        )
        out.print(f"keeper: {execution} mode{' (dry run)' if dry_run else ''}, wallet {KEEPER_ADDRESS}")
        app = App(keeper_settings)
        async with asyncio.TaskGroup() as tg:
            arb = (
                None
                if dry_run
                else tg.create_task(arbitrage_loop(dn.rpc, dn.deployment, dn.uniswap, app.stop_event))
            )
            try:
                reports = await asyncio.wait_for(app.run(until=_demo_done(dry_run)), timeout_s)
            finally:
                app.request_stop()
        del arb
        _summary(reports, dry_run)
        remaining = reports[-1].liquidatable if reports else -1
        return 0 if remaining == 0 or dry_run else 1
    finally:
        await dn.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _summary(reports: list[CycleReport], dry_run: bool) -> None:
    included = sum(r.included for r in reports)
    profit = Decimal(sum(r.profit_base for r in reports)) / 10**8
    gas = sum(r.gas_used for r in reports)
    spent = Decimal(sum(r.gas_spent_wei for r in reports)) / 10**18
    left = reports[-1].liquidatable if reports else "?"
    table = Table(title="demo summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    if dry_run:
        would = sum(len(r.dry_run) for r in reports)
        table.add_row("liquidations that would be sent", str(would))
        table.add_row(
            "simulated profit, USD",
            f"{Decimal(sum(s.profit_base for r in reports for s in r.dry_run)) / 10**8:,.2f}",
        )
    else:
        table.add_row("liquidations included", str(included))
        table.add_row("reverted", str(sum(r.reverted for r in reports)))
        table.add_row("profit, USD (net of gas)", f"{profit:,.2f}")
        table.add_row("gas used", f"{gas:,}")
        table.add_row("gas paid, ETH", f"{spent:.6f}")
    table.add_row("cycles", str(len(reports)))
    table.add_row("still liquidatable", str(left))
    out.print(table)


async def executor_deploy(settings: Settings) -> int:
    from keeper.app import connect
    from keeper.exec.executor import deploy_executor
    from keeper.metrics import Metrics

    settings.require("private_key", "uniswap_router")
    rpc, _ = await connect(settings, Metrics())
    try:
        address = await deploy_executor(
            rpc,
            settings.private_key,
            settings.pool_addresses_provider,
            settings.uniswap_router,
            poll_interval=min(1.0, settings.poll_interval_s),
        )
    finally:
        await rpc.close()
    log.info("executor.deployed", address=address)
    print(f"KEEPER_EXECUTOR_ADDRESS={address}")
    return 0


async def devnet_up(
    settings: Settings, *, port: int, borrowers: int, seed: int, block_time: int | None,
    aave: str = "3.6",
    oracle: str = "devnet", sequencer: bool = False,
) -> int:
    from keeper.devnet import state
    from keeper.devnet.stack import launch

    existing = state.load(port)
    if existing and _alive(existing["pid"]):
        raise ConfigError(
            f"a devnet is already running on port {port} (pid {existing['pid']}); "
            f"`keeper devnet down --port {port}` first"
        )
    state.STATE_DIR.mkdir(exist_ok=True)
    dn = await launch(
        borrowers=borrowers,
        seed=seed,
        port=port,
        block_time=block_time,
        aave=aave,
        oracle=oracle,
        sequencer=sequencer,
        detach=True,
        anvil_binary=settings.anvil_path,
        log_path=state.STATE_DIR / f"{port}.log",
        state_cache=state.cache_path(port),
    )
    path = state.save(port, dn.anvil.pid, dn.deployment, len(dn.plans), dn.uniswap, dn.executor)
    await dn.rpc.close()  # the Anvil process stays up, detached
    log.info("devnet.up", port=port, pid=dn.anvil.pid, state=str(path))
    for key, value in dn.keeper_env().items():
        print(f"{key}={value}")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def devnet_down(*, port: int) -> int:
    from keeper.devnet import state

    data = state.load(port)
    if data is None:
        raise ConfigError(f"no devnet recorded on port {port}")
    pid = data["pid"]
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(100):  # up to 5 s, then SIGKILL
            if not _alive(pid):
                break
            await asyncio.sleep(0.05)
        else:
            os.killpg(pid, signal.SIGKILL)
    state.remove(port)
    print(f"devnet on port {port} stopped (pid {pid})")
    return 0


async def devnet_shock(*, port: int, asset: str, pct: Decimal) -> int:
    from keeper.devnet import state
    from keeper.devnet.seed import shock
    from keeper.devnet.uniswap import align_pools

    data = state.load(port)
    if data is None:
        raise ConfigError(f"no devnet recorded on port {port}; `keeper devnet up --port {port}` first")
    async with RpcClient(f"http://127.0.0.1:{port}") as rpc:
        old, new = await shock(rpc, data["deployment"], asset.upper(), pct)
        moved = await align_pools(rpc, data["deployment"], data["uniswap"])
    print(f"{asset.upper()}: {old / 1e8:,.2f} -> {new / 1e8:,.2f} USD ({moved} Uniswap pools arbitraged)")
    return 0


async def devnet_proxy(*, upstream: str, port: int, fault_rate: float, seed: int, stall_s: float) -> int:
    from keeper.devnet.proxy import serve

    stats = await serve(upstream, port=port, fault_rate=fault_rate, seed=seed, stall_s=stall_s)
    out.print(f"{stats['requests']} requests in {stats['http_requests']} HTTP requests, "
              f"{stats['faulted_http_requests']} faulted {stats['faults']}")
    return 0
