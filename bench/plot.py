"""Tables, target verdicts and plots from bench/race.py's results (bench/results/race-N.json).

    .venv/bin/python bench/plot.py     # prints the Markdown for BENCHMARKS.md, writes bench/plots/*.png
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS, PLOTS = HERE / "results", HERE / "plots"

Result = dict[str, Any]


def load() -> list[Result]:
    runs = [json.loads(p.read_text()) for p in RESULTS.glob("race-*.json")]
    return sorted(runs, key=lambda r: r["borrowers"])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]  # nearest rank


def shock_to_send(r: Result) -> list[float]:
    return [s["shock_to_send_ms"] for s in r["shock_runs"] if s["shock_to_send_ms"] is not None]


def inclusion(r: Result) -> dict[str, float]:
    """Share of newly liquidatable positions first liquidated at N+1, N+2, later (by whom), or never."""
    firsts = [f for s in r["shock_runs"] for f in s["first_liquidation"].values()]
    total = len(firsts) or 1
    out: dict[str, float] = {"positions": len(firsts)}
    for who in ("keeper", "naive"):
        mine = [f for f in firsts if f is not None and f[1] == who]
        out[f"{who}_n1"] = sum(1 for f in mine if f[0] == 1) / total
        out[f"{who}_n2"] = sum(1 for f in mine if f[0] == 2) / total
        out[f"{who}_later"] = sum(1 for f in mine if f[0] > 2) / total
    out["never"] = sum(1 for f in firsts if f is None) / total
    return out


def shock_rpc(r: Result, who: str) -> float:
    return statistics.mean(s["requests_per_block"][who] for s in r["shock_runs"])


FIGURES: list[tuple[str, str, Callable[[Result], Any]]] = [
    ("backfill", "borrowers/s", lambda r: r["backfill_per_s"]),
    ("refresh_multicall", "s", lambda r: r["refresh_multicall_s"]),
    ("refresh_naive", "s", lambda r: r["refresh_naive_s"]),
    ("refresh_ratio", "x", lambda r: r["refresh_ratio"]),
    ("mirror_full", "ms", lambda r: r["mirror_full_ms"]),
    ("mirror_affected", "ms", lambda r: r["mirror_affected_ms"]),
    ("shock_to_send_p50", "ms", lambda r: percentile(shock_to_send(r), 50)),
    ("shock_to_send_p99", "ms", lambda r: percentile(shock_to_send(r), 99)),
    ("inclusion_keeper_n1", "share", lambda r: inclusion(r)["keeper_n1"]),
    ("inclusion_naive_n1", "share", lambda r: inclusion(r)["naive_n1"]),
    ("steady_rpc_keeper", "req/block", lambda r: r["steady_requests_per_block"]["keeper"]),
    ("steady_rpc_naive", "req/block", lambda r: r["steady_requests_per_block"]["naive"]),
    ("shock_rpc_keeper", "req/block", lambda r: shock_rpc(r, "keeper")),
    ("shock_rpc_naive", "req/block", lambda r: shock_rpc(r, "naive")),
    ("peak_rss", "MB", lambda r: r["keeper_peak_rss_mb"]),
    ("crash_blocks_to_last", "blocks", lambda r: r["crash"]["blocks_to_last_liquidation"]),
]


def value(get: Callable[[Result], Any], r: Result) -> Any:
    """A figure, or None where this run did not measure it (a `--no-race` run has no race)."""
    try:
        return get(r)
    except (KeyError, TypeError, statistics.StatisticsError):
        return None


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(r: Result) -> str:
    head = f"### {r['borrowers']:,} borrowers\n| figure | measured |\n| --- | --- |\n"
    rows = _common_rows(r) + (_race_rows(r) if "shock_runs" in r else [
        ("RPC requests per block, steady: keeper alone", f"{r['steady_requests_per_block']['keeper']:.1f}"),
        ("keeper cycles > 1 s (steady)", _pct(r["cycle"]["over_1s_share"])
         + f" of {r['cycle']['cycles']:.0f}, mean {_fmt(_ms(r['cycle']['mean_s']))} ms"),
        ("keeper peak RSS", f"{r['keeper_peak_rss_mb']:.0f} MB"),
    ])
    return head + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _common_rows(r: Result) -> list[tuple[str, str]]:
    return [
        ("backfill", f"{_fmt(r['backfill_per_s'])} borrowers/s ({r['backfill_s']:.2f} s)"),
        ("full health refresh, Multicall3 (500/call)", f"{1e3 * r['refresh_multicall_s']:,.0f} ms"),
        ("full health refresh, naive (1 getUserAccountData per call)",
         f"{1e3 * r['refresh_naive_s']:,.0f} ms" + (f" (timed on {r['refresh_naive_sampled']:,}, scaled)"
                                                    if r["refresh_naive_sampled"] < r["borrowers"] else "")),
        ("refresh ratio naive / Multicall3", f"{r['refresh_ratio']:.1f}×"),
        ("mirror recompute after one price update, all", f"{r['mirror_full_ms']:.1f} ms"),
        ("mirror recompute, affected subset",
         f"{r['mirror_affected_ms']:.1f} ms ({r['mirror_affected_users']:,} users)"),
    ]


def _race_rows(r: Result) -> list[tuple[str, str]]:
    inc, lat, c = inclusion(r), shock_to_send(r), r["crash"]
    return [
        ("shock → send p50 / p99", f"{_fmt(percentile(lat, 50))} / {_fmt(percentile(lat, 99))} ms "
                                   f"over {len(lat)} shocks (of {len(r['shock_runs'])})"),
        ("newly liquidatable positions (all shocks)", f"{int(inc['positions']):,}"),
        ("first liquidated at N+1 / N+2 / later: this keeper",
         f"{inc['keeper_n1']:.0%} / {inc['keeper_n2']:.0%} / {inc['keeper_later']:.0%}"),
        ("first liquidated at N+1 / N+2 / later: naive",
         f"{inc['naive_n1']:.0%} / {inc['naive_n2']:.0%} / {inc['naive_later']:.0%}"),
        ("not liquidated within 8 blocks", f"{inc['never']:.0%}"),
        ("RPC requests per block, steady: keeper / naive",
         f"{r['steady_requests_per_block']['keeper']:.1f} / {r['steady_requests_per_block']['naive']:,.0f}"),
        ("RPC requests per block, shock: keeper / naive",
         f"{shock_rpc(r, 'keeper'):.1f} / {shock_rpc(r, 'naive'):,.0f}"),
        ("keeper cycles > 1 s (race)", _pct(r["cycle"]["over_1s_share"])
         + f" of {r['cycle']['cycles']:.0f}, mean {_fmt(_ms(r['cycle']['mean_s']))} ms"),
        ("keeper peak RSS", f"{r['keeper_peak_rss_mb']:.0f} MB"),
        ("WETH −30%, keeper alone: blocks shock → last liquidation",
         f"{_fmt(c['blocks_to_last_liquidation'])} ({c['liquidations']} liquidations of "
         f"{c['users_liquidated']} borrowers, {c['left_liquidatable']} left liquidatable, "
         f"{c['reverted']} reverted, breaker trips {c['breaker_trips']:.0f})"),
    ]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def _ms(v: float | None) -> float | None:
    return None if v is None else 1e3 * v


TARGETS: list[tuple[str, int, Callable[[Result], Any], Callable[[Any], bool], str]] = [
    ("next-block inclusion 100%", 10_000, lambda r: inclusion(r)["keeper_n1"], lambda v: v >= 1.0, "{:.0%}"),
    ("shock-to-send p99 < 100 ms", 10_000, lambda r: percentile(shock_to_send(r), 99), lambda v: v < 100,
     "{:.0f} ms"),
    ("full refresh ≥ 100× naive", 10_000, lambda r: r["refresh_ratio"], lambda v: v >= 100, "{:.1f}×"),
    ("mirror recompute < 50 ms", 100_000, lambda r: r["mirror_full_ms"], lambda v: v < 50, "{:.1f} ms"),
    ("steady-state RPC ≤ 5 requests/block", 10_000, lambda r: r["steady_requests_per_block"]["keeper"],
     lambda v: v <= 5, "{:.1f}"),
    ("peak RSS < 300 MB", 100_000, lambda r: r["keeper_peak_rss_mb"], lambda v: v < 300, "{:.0f} MB"),
]


def verdicts(runs: list[Result]) -> str:
    by_n = {r["borrowers"]: r for r in runs}
    lines = []
    for name, n, get, ok, fmt in TARGETS:
        r = by_n.get(n)
        v = value(get, r) if r else None
        if v is None:
            lines.append(f"- {name} at {n:,} borrowers: **not measured** (no run at that size)")
        else:
            lines.append(f"- {name} at {n:,} borrowers: **{'met' if ok(v) else 'missed'}** ({fmt.format(v)})")
    return "\n".join(lines)


def plots(runs: list[Result]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    xs = [r["borrowers"] for r in runs]
    out = []
    for name, unit, get in FIGURES:
        pts = [(x, value(get, r)) for x, r in zip(xs, runs, strict=True) if value(get, r) is not None]
        fig, ax = plt.subplots(figsize=(4, 2.6), dpi=80)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("borrowers")
        ax.set_ylabel(unit)
        ax.set_title(name.replace("_", " "))
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = PLOTS / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out


if __name__ == "__main__":
    runs = load()
    for r in runs:
        print(table(r), end="\n\n")
    print(verdicts(runs))
    for p in plots(runs):
        print(f"![{p.stem}](bench/plots/{p.name})")
