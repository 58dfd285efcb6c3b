"""The benchmark's results as text: terminal tables, docs/benchmarks.md and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCENARIOS = ("hot_team", "many_teams")


def hold_capture_table(hold_capture: dict[str, Any]) -> str:
    lines = [
        "| scenario | concurrency | hold+capture/s | one commit each/s | baseline UPDATE/s "
        "| ratio | ratio before | charges per commit | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        for key, p in hold_capture[scenario].items():
            lines.append(
                f"| {scenario} | {key[1:]} | {p['per_s']:,.0f} | {p['single_per_s']:,.0f} "
                f"| {p['baseline_per_s']:,.0f} | **{p['ratio']:.2f}** | {p['single_ratio']:.2f} "
                f"| {p['items_per_commit']} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} |"
            )
    return "\n".join(lines)


def billing_table(b: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| billing read | charges | calls | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
            f"| Ledger.billing | {b['charges']:,} | {b['calls']} "
            f"| {b['p50_ms']:.2f} | {b['p99_ms']:.2f} |",
        ]
    )


def arq_table(a: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| jobs | worker max_jobs | metered jobs/s | no-op jobs/s | overhead |",
            "|---:|---:|---:|---:|---:|",
            f"| {a.get('jobs', 0):,} | {a.get('max_jobs', '')} | {a['metered_per_s']:,.0f} "
            f"| {a['noop_per_s']:,.0f} | {a['overhead_pct']:.1f} % |",
        ]
    )


def reconcile_table(r: dict[str, Any]) -> str:
    lines = [
        "| teams | Stripe latency | concurrency | seconds | ms per team | bills | invoices paid |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in r.get("runs", []):
        lines.append(
            f"| {run['teams']:,} | {run.get('latency_ms', 0)} ms | {run.get('concurrency', '')} "
            f"| {run['seconds']:.2f} | {run.get('per_team_ms', 0):.2f} "
            f"| {run.get('bills', '')} | {run.get('invoices_paid', '')} |"
        )
    return "\n".join(lines)


def plot(hold_capture: dict[str, Any], path: Path) -> None:
    """hold+capture/s against concurrency, with and without group commit, and the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, scenario in zip(axes, SCENARIOS, strict=True):
        points = hold_capture[scenario]
        cs = [int(k[1:]) for k in points]
        series = (
            ("per_s", "hold+capture, group commit", "tab:green", "o-"),
            ("single_per_s", "hold+capture, one commit each", "tab:orange", "s--"),
            ("baseline_per_s", "baseline: one UPDATE per commit", "tab:gray", "^:"),
        )
        for key, label, color, style in series:
            ax.plot(cs, [points[k][key] for k in points], style, color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrent callers (pool size)")
        ax.set_title(scenario.replace("_", " "))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("operations per second")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
