"""Command line: run, scan, status, heatmap, demo, devnet (up/down/shock), executor.

Every command builds Settings once (env, .env, flags) and hands them down.
Errors the operator can fix print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from keeper.config import Settings, load_settings
from keeper.errors import KeeperError
from keeper.log import configure_logging

EXIT_CONFIG = 2


def _settings_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (override KEEPER_* env vars and .env)")
    g.add_argument("--rpc-url", dest="rpc_url")
    g.add_argument("--pool-addresses-provider", dest="pool_addresses_provider")
    g.add_argument("--start-block", dest="start_block", type=int)
    g.add_argument("--metrics-port", dest="metrics_port", type=int)
    g.add_argument("--min-profit-usd", dest="min_profit_usd", type=Decimal)
    g.add_argument("--execution", dest="execution", choices=("inventory", "flashloan"))
    g.add_argument("--executor-address", dest="executor_address")
    g.add_argument("--uniswap-router", dest="uniswap_router")
    g.add_argument("--uniswap-quoter", dest="uniswap_quoter")
    g.add_argument("--log-format", dest="log_format", choices=("auto", "json", "console"))
    g.add_argument("--log-level", dest="log_level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keeper", description="Aave V3 liquidation keeper")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the daemon: index, health, simulate, liquidate on every block")
    run.add_argument("--dry-run", dest="dry_run", action="store_const", const=True,
                     help="simulate everything on the fork, never broadcast")
    _settings_flags(run)

    scan = sub.add_parser("scan", help="one pass: borrowers at risk and the price move that liquidates them")
    scan.add_argument("--limit", type=int, default=30)
    scan.add_argument("--hf-below", type=Decimal, default=Decimal("1.2"))
    _settings_flags(scan)

    heatmap = sub.add_parser("heatmap", help="collateral that becomes liquidatable at each price of ASSET")
    heatmap.add_argument("asset", help="reserve symbol (e.g. WETH) or address")
    heatmap.add_argument("--steps", type=int, default=50, help="price levels on each side of the price")
    heatmap.add_argument("--step-bps", type=int, default=100, help="distance between levels, in bps")
    _settings_flags(heatmap)

    status = sub.add_parser("status", help="a running keeper's state from its /metrics; exit 1 unhealthy, "
                                           "3 unreachable")
    status.add_argument("--url", help="the keeper's metrics server (default: KEEPER_METRICS_HOST:PORT)")
    status.add_argument("--json", dest="as_json", action="store_true", help="JSON, not the screen")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds before giving up")
    _settings_flags(status)

    demo = sub.add_parser("demo", help="devnet up, seed, shock, run the keeper until all are liquidated")
    demo.add_argument("--borrowers", type=int, default=200)
    demo.add_argument("--shock", nargs=2, metavar=("ASSET", "PCT"), default=("WETH", "-15"))
    demo.add_argument("--dry-run", action="store_true")
    demo.add_argument("--execution", choices=("inventory", "flashloan"), default="flashloan")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds before the demo gives up")

    executor = sub.add_parser("executor", help="the flash-loan executor contract")
    esub = executor.add_subparsers(dest="executor_command", required=True)
    deploy = esub.add_parser("deploy", help="deploy Liquidator(provider, router) owned by the keeper's key")
    _settings_flags(deploy)

    devnet = sub.add_parser("devnet", help="the local stand-in for mainnet (Anvil + Aave V3.6)")
    dsub = devnet.add_subparsers(dest="devnet_command", required=True)
    up = dsub.add_parser("up", help="start Anvil in the background, deploy, seed; print KEEPER_ settings")
    up.add_argument("--port", type=int, default=8545)
    up.add_argument("--borrowers", type=int, default=200)
    up.add_argument("--seed", type=int, default=7)
    up.add_argument("--block-time", type=int, default=None, help="interval mining, whole seconds per block")
    up.add_argument("--aave", choices=("3.6", "3.0"), default="3.6",
                    help="market flavour: 3.6 (aave-v3-origin, default) or 3.0 (@aave/core-v3 1.19.3)")
    up.add_argument("--oracle", choices=("devnet", "chainlink"), default="devnet",
                    help="chainlink: Chainlink proxies over aggregators, one event-less CAPO-style adapter")
    up.add_argument("--sequencer", action="store_true",
                    help="with --oracle chainlink: an L2 PriceOracleSentinel on a sequencer-uptime feed")
    down = dsub.add_parser("down", help="stop the devnet on --port")
    down.add_argument("--port", type=int, default=8545)
    shock = dsub.add_parser("shock", help="move an asset's price by PCT percent, e.g. WETH -12.5")
    shock.add_argument("asset")
    shock.add_argument("pct", type=Decimal)
    shock.add_argument("--port", type=int, default=8545)
    proxy = dsub.add_parser("proxy", help="a JSON-RPC proxy that counts requests and injects faults")
    proxy.add_argument("--upstream", required=True, help="the node to forward to, e.g. http://127.0.0.1:8545")
    proxy.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    proxy.add_argument("--fault-rate", type=float, default=0.0, help="share of HTTP requests faulted, 0..1")
    proxy.add_argument("--seed", type=int, default=1)
    proxy.add_argument("--stall-s", type=float, default=3.0, help="seconds a stalled answer is held")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("rpc_url", "pool_addresses_provider", "start_block", "metrics_port", "min_profit_usd",
            "execution", "executor_address", "uniswap_router", "uniswap_quoter", "log_format", "log_level",
            "dry_run")
    return {k: getattr(args, k, None) for k in keys}


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from keeper import commands

    if args.command == "run":
        return await commands.run(settings)
    if args.command == "scan":
        return await commands.scan(settings, limit=args.limit, hf_below=args.hf_below)
    if args.command == "heatmap":
        return await commands.heatmap(settings, asset=args.asset, steps=args.steps, step_bps=args.step_bps)
    if args.command == "status":
        from keeper.status_cmd import status

        return await status(settings, url=args.url, as_json=args.as_json, timeout_s=args.timeout)
    if args.command == "demo":
        return await commands.demo(settings, borrowers=args.borrowers, shock=args.shock,
                                   dry_run=args.dry_run, execution=args.execution, timeout_s=args.timeout)
    if args.command == "executor":
        return await commands.executor_deploy(settings)
    if args.command == "devnet":
        if args.devnet_command == "up":
            return await commands.devnet_up(settings, port=args.port, borrowers=args.borrowers,
                                            seed=args.seed, block_time=args.block_time, aave=args.aave,
                                            oracle=args.oracle, sequencer=args.sequencer)
        if args.devnet_command == "down":
            return await commands.devnet_down(port=args.port)
        if args.devnet_command == "shock":
            return await commands.devnet_shock(port=args.port, asset=args.asset, pct=args.pct)
        if args.devnet_command == "proxy":
            return await commands.devnet_proxy(upstream=args.upstream, port=args.port,
                                               fault_rate=args.fault_rate, seed=args.seed,
                                               stall_s=args.stall_s)
    raise AssertionError(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(**_overrides(args))
    except KeeperError as e:
        print(f"keeper: {e}", file=sys.stderr)
        return EXIT_CONFIG
    secret = settings.private_key.get_secret_value() if settings.private_key else None
    configure_logging(settings.log_level, settings.log_format, secrets=[secret] if secret else ())
    try:
        return asyncio.run(_dispatch(args, settings))
    except KeeperError as e:
        print(f"keeper: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
