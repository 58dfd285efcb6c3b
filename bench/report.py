"""The results of `python -m bench` as text: docs/benchmarks.md, its plot, the targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCENARIOS = ("hot_team", "many_teams")
SCENARIO_NAMES = {"hot_team": "one hot team", "many_teams": "1,000 teams"}
TARGET_CONCURRENCIES = (1, 8, 32, 64)
MET, MISSED, NOT_MEASURED = "met", "**missed**", "not measured in this run"


def ranged(s: dict[str, Any], fmt: str = ".2f", unit: str = "") -> str:
    """A figure measured once per round: its median, then [min-max] over its rounds."""
    return f"{s['median']:{fmt}}{unit} [{s['min']:{fmt}}-{s['max']:{fmt}}]"


def hold_capture_table(hc: dict[str, Any]) -> str:
    lines = [
        "| scenario | callers | group commit/s | one commit each/s | baseline UPDATE/s "
        "| **ratio to baseline** | ratio to one commit each | charges per commit "
        "| p50 ms | p99 ms | client CPU ms/op | Postgres CPU ms/op |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        for key, p in hc[scenario].items():
            lines.append(
                f"| {SCENARIO_NAMES[scenario]} | {key[1:]} | {p['per_s']['median']:,.0f} "
                f"| {p['one_commit_each_per_s']['median']:,.0f} "
                f"| {p['baseline_per_s']['median']:,.0f} | **{ranged(p['ratio'])}** "
                f"| {ranged(p['vs_one_commit_each'])} | {p['items_per_commit']} "
                f"| {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['client_cpu_ms']:.3f} "
                f"| {p['postgres_cpu_ms']:.3f} |"
            )
    return "\n".join(lines)


PROFILE_LOADS = {
    "group_commit": "hold+capture, group commit",
    "one_commit_each": "hold+capture, one commit each",
    "baseline": "baseline UPDATE, 1 row (asyncpg)",
    "update_1": "pgbench UPDATE, 1 row",
    "update_1000": "pgbench UPDATE, 1 of 1,000 rows",
    "tpcb": "pgbench TPC-B-like",
}
# The verdict's thresholds: a share of the machine's cores counted as full, and a
# share of pgbench's commits/s counted as at the machine's commit limit.
FULL_CORES = 0.8
AT_COMMIT_LIMIT = 0.8
# Up to this many cores busy, a load whose batches go one after another is bound by
# that chain: the client and Postgres take turns, one core's work at a time.
ONE_CORE = 1.25


def _c32_limits(hc: dict[str, Any], scenario: str) -> dict[str, Any] | None:
    p = hc[scenario].get("c32")
    return p if p is not None and "limits" in p else None


def bounds_table(hc: dict[str, Any]) -> str:
    """Per scenario at c32: hold+capture's profile against pgbench's in the same rounds."""
    lines = [
        "| scenario | hold+capture/s | commits/s | Postgres CPU ms/op | client CPU ms/op "
        "| cores busy: load, machine | pgbench UPDATE tps | ops/s over it | commits/s over it "
        "| baseline over pgbench UPDATE, 1 row |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        p = _c32_limits(hc, scenario)
        if p is None:
            continue
        g, lim = p["profile"]["group_commit"], p["limits"]
        update, over = lim["update"], lim["over"][lim["update"]]
        lines.append(
            f"| {SCENARIO_NAMES[scenario]} | {ranged(g['per_s'], ',.0f')} "
            f"| {ranged(g['commits_per_s'], ',.0f')} | {ranged(g['postgres_cpu_ms'], '.3f')} "
            f"| {ranged(g['client_cpu_ms'], '.3f')} "
            f"| {g['cores']['median']:.2f}, {g['machine_cores']['median']:.2f} "
            f"| {PROFILE_LOADS[update].removeprefix('pgbench UPDATE, ')}: "
            f"{ranged(p['profile'][update]['per_s'], ',.0f')} "
            f"| {ranged(over['ops'], unit='x')} | {ranged(over['commits'], '.3f', 'x')} "
            f"| {ranged(lim['baseline_over_update_1'], unit='x')} |"
        )
    return "\n".join(lines)


def loads_table(hc: dict[str, Any]) -> str:
    """Every load of the c32 rounds, ours and pgbench's, on the same figures."""
    lines = [
        "| scenario | load | per s | commits/s | commits per op | client CPU ms/op "
        "| Postgres CPU ms/op | cores busy: load, machine |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        p = _c32_limits(hc, scenario)
        if p is None:
            continue
        for name, label in PROFILE_LOADS.items():
            f = p["profile"].get(name)
            if f is None:
                continue
            lines.append(
                f"| {SCENARIO_NAMES[scenario]} | {label} | {ranged(f['per_s'], ',.0f')} "
                f"| {f['commits_per_s']['median']:,.0f} | {f['commits_per_op']['median']:.3f} "
                f"| {f['client_cpu_ms']['median']:.3f} | {f['postgres_cpu_ms']['median']:.3f} "
                f"| {f['cores']['median']:.2f}, {f['machine_cores']['median']:.2f} |"
            )
    return "\n".join(lines)


def bound(p: dict[str, Any], nproc: int) -> tuple[str, str]:
    """(what bounds hold+capture at this point, the figures that say so), from its
    c32 profile against pgbench's: its own CPU, the machine's cores taken by other
    work, the commits the machine can make, or the chain of its batches."""
    g, lim = p["profile"]["group_commit"], p["limits"]
    cores, machine = g["cores"]["median"], g["machine_cores"]["median"]
    commits_over = lim["over"][lim["update"]]["commits"]["median"]
    per_op = g["client_cpu_ms"]["median"] + g["postgres_cpu_ms"]["median"]
    target = 3 * p["baseline_per_s"]["median"]
    cost = (
        f"Postgres {g['postgres_cpu_ms']['median']:.3f} ms and the client "
        f"{g['client_cpu_ms']['median']:.3f} ms of CPU per operation; 3x the baseline, "
        f"{target:,.0f}/s, takes {target * per_op / 1000:.2f} cores at that cost"
    )
    commits = (
        f"{g['commits_per_s']['median']:,.0f} commits/s, {commits_over:.3f}x what pgbench's "
        "UPDATE committed in the same rounds"
    )
    if cores >= FULL_CORES * nproc:
        return "its own CPU", f"it kept {cores:.2f} of {nproc} cores busy; {cost}"
    if machine >= FULL_CORES * nproc:
        return (
            "the shared machine's cores",
            f"the machine was {machine:.2f} of {nproc} cores busy, {cores:.2f} of them this "
            f"load's and the rest other work; {cost}",
        )
    if commits_over >= AT_COMMIT_LIMIT:
        return "the machine's commits", f"{commits}; {cost}"
    if cores <= ONE_CORE:
        return (
            "the chain of its batches, one core's work at a time",
            f"it kept {cores:.2f} of {nproc} cores busy (the machine {machine:.2f}): each "
            f"commit carries {p['items_per_commit']} holds or captures and waits for the one "
            f"before it, Postgres and the client working in turn, at {per_op:.3f} ms of CPU "
            f"per operation ({1000 / per_op:,.0f}/s on one core); {commits}, so not the commits",
        )
    return (
        "waits: neither the cores nor the commits are full",
        f"it kept {cores:.2f} of {nproc} cores busy (the machine {machine:.2f}); {commits}; {cost}",
    )


def bounds_verdict(result: dict[str, Any]) -> str:
    """One paragraph: the c32 target per scenario, met or missed, and what bounds it."""
    hc, nproc = result["hold_capture"], result["machine"]["nproc"]
    sentences = []
    for scenario in SCENARIOS:
        p = _c32_limits(hc, scenario)
        if p is None:
            continue
        lim = p["limits"]
        ratio = ranged(p["ratio"], unit="x")
        status = "met" if p["ratio"]["median"] >= 3 else "missed"
        what, why = bound(p, nproc)
        update = PROFILE_LOADS[lim["update"]].removeprefix("pgbench ")
        sentences.append(
            f"{SCENARIO_NAMES[scenario].capitalize()}: 3x the baseline {status} at {ratio}; "
            f"{p['per_s']['median']:,.0f} hold+captures/s, "
            f"{lim['over'][lim['update']]['ops']['median']:.2f}x the transactions/s of "
            f"pgbench's {update} at the same concurrency; the baseline ran at "
            f"{lim['baseline_over_update_1']['median']:.2f}x pgbench's UPDATE of its one row. "
            f"Bound by {what}: {why}."
        )
    if not sentences:
        return "Not measured in this run: pgbench runs beside the c32 point only."
    return " ".join(sentences)


def bounds_section(result: dict[str, Any]) -> str:
    """The c32 profile against the machine's limit: its text, tables and verdict."""
    hc = result["hold_capture"]
    measured = [s for s in SCENARIOS if _c32_limits(hc, s) is not None]
    if not measured:
        return bounds_verdict(result)
    p = hc[measured[0]]["c32"]["limits"]
    return f"""In every round of the c32 points, beside the three loads above and
alternating with them, the embedded Postgres's own pgbench (a C client, over
the same Unix socket, {p["clients"]} clients, prepared statements, {p["seconds"]} s a
round): its built-in TPC-B-like transaction ({hc.get("pgbench_scale", "?")} branches), and
`UPDATE bench_counter SET n = n + 1` on one row (the hot-row limit) and, for
the 1,000 teams, on one of 1,000 rows. Commits/s are pg_stat_database's
`xact_commit` over the round (each pool connection made to report first);
pgbench's are its transactions/s. CPU per operation is this process's
(`time.process_time`; pgbench's own for pgbench) and the Postgres server's,
over the operations (or pgbench's transactions) of the round. Cores busy: the
load's CPU (client and Postgres) and the whole machine's (every process,
/proc/stat) over the round's seconds, of {result["machine"]["nproc"]}. Ratios to pgbench
are each round's over the same round's pgbench UPDATE (1,000 rows for the
1,000 teams).

{bounds_table(hc)}

{loads_table(hc)}

{bounds_verdict(result)}"""


def arq_table(a: dict[str, Any]) -> str:
    lines = [
        "| scenario | pairs | **user-mode CPU over no-op** | total CPU over no-op "
        "| jobs/s below no-op | user CPU ms/job metered | no-op | sleeps per job metered "
        "| no-op |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, name in (("teams", f"{a['spread_teams']} teams"), ("hot_team", "one hot team")):
        s = a[key]
        lines.append(
            f"| {name} | {s['user_cpu_overhead_pct']['rounds']} "
            f"| **{ranged(s['user_cpu_overhead_pct'], '.1f', ' %')}** "
            f"| {ranged(s['cpu_overhead_pct'], '.1f', ' %')} "
            f"| {ranged(s['throughput_overhead_pct'], '.1f', ' %')} "
            f"| {s['metered_user_cpu_ms_per_job']['median']:.3f} "
            f"| {s['noop_user_cpu_ms_per_job']['median']:.3f} "
            f"| {s['metered_sleeps_per_job']['median']:.2f} "
            f"| {s['noop_sleeps_per_job']['median']:.2f} |"
        )
    return "\n".join(lines)


def capacity_table(c: dict[str, Any]) -> str:
    lines = [
        "| provider latency | max_jobs | worker processes | metered jobs/s | per process "
        "| worker CPU ms/job | Postgres CPU ms/job | worker cores | Postgres cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in [*c["per_process"], *c["scaling"]]:
        lines.append(
            f"| {p['latency_ms']:,} ms | {p['max_jobs']} | {p['processes']} | {p['per_s']:,.0f} "
            f"| {p['per_s_per_process']:,.0f} | {p['worker_cpu_ms_per_job']:.2f} "
            f"| {p['pg_cpu_ms_per_job']:.2f} | {p['worker_cores']:.2f} | {p['pg_cores']:.2f} |"
        )
    return "\n".join(lines)


def reconcile_table(r: dict[str, Any]) -> str:
    lines = [
        "| teams | charges per team | Stripe latency | concurrency | seconds | ms per team "
        "| invoices paid | checked |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in [*r["runs"], *r["charges_independence"]["runs"]]:
        lines.append(
            f"| {run['teams']:,} | {run['charges_per_team']} | {run['latency_ms']:.0f} ms "
            f"| {run['concurrency']} | {run['seconds']:.2f} | {run['per_team_ms']:.2f} "
            f"| {run['invoices_paid']:,} | {'ok' if run['ok'] else 'FAILED'} |"
        )
    return "\n".join(lines)


def cli_table(c: dict[str, Any]) -> str:
    rows = [
        ("`tokens billing TEAM --json`", "billing"),
        ("`tokens charge TEAM debounce --json`", "charge"),
        ("`python -c pass` (the floor)", "python_floor"),
    ]
    lines = ["| whole process | runs | p50 ms | min ms | max ms |", "|---|---:|---:|---:|---:|"]
    for label, key in rows:
        s = c[key]
        lines.append(
            f"| {label} | {s['rounds']} | {s['median']:.0f} | {s['min']:.0f} | {s['max']:.0f} |"
        )
    return "\n".join(lines)


def api_table(api: dict[str, Any]) -> str:
    b = api["billing"]
    n = b["workers"]
    rows = [
        "| GET /v1/teams/{team}/billing | clients | requests/s | p50 ms | p99 ms "
        "| CPU ms/request: client, server, Postgres | cores busy | connections per process |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    loads = (
        ("`tokens serve` (one process)", "serve_1"),
        (f"`tokens serve --workers {n}`", "serve_n"),
        ("bare `Ledger.billing`, in process", "ledger"),
    )
    ratios = []
    for clients in (32, 1):
        part = b[f"c{clients}"]
        for label, key in loads:
            f = part[key]
            cpu = ", ".join(
                f"{f[f'{who}_cpu_ms']['median']:.2f}" for who in ("client", "server", "postgres")
            )
            spread_of = {
                "/".join(str(x) for x in counts) for counts in f.get("connections_per_process", [])
            }
            rows.append(
                f"| {label} | {clients} | {ranged(f['per_s'], ',.0f')} "
                f"| {ranged(f['p50_ms'])} | {ranged(f['p99_ms'])} | {cpu} "
                f"| {f['cores']['median']:.2f} | {', '.join(sorted(spread_of)) or '-'} |"
            )
        ratios.append(
            f"{clients} client{'s' if clients > 1 else ''} "
            f"{ranged(part['serve_n_over_serve_1'], unit='x')} "
            f"(over the bare call {ranged(part['serve_n_over_ledger'], unit='x')})"
        )
    return "\n".join(
        [
            f"10,000 leads in one POST /v1/teams/{{team}}/jobs: **{api['enqueue_10k_ms']:.0f} ms** "
            f"(median; the client code alone {api['enqueue_10k_client_ms']:.0f} ms, arq's "
            f"enqueue_job one by one {api['enqueue_10k_one_by_one_ms']:.0f} ms)",
            "",
            f"GET billing, {b['rounds']} interleaved rounds of {b['round_s']:g} s per load and "
            f"concurrency; requests/s of `--workers {n}` over one process, each round's: "
            f"{'; '.join(ratios)}.",
            "",
            *rows,
        ]
    )


def _c32(result: dict[str, Any], scenario: str) -> tuple[str, str]:
    p = result["hold_capture"][scenario].get("c32")
    if p is None:
        return "-", NOT_MEASURED
    return ranged(p["ratio"], unit="x"), MET if p["ratio"]["median"] >= 3 else MISSED


def _never_below_one_commit_each(result: dict[str, Any]) -> tuple[str, str]:
    hc = result["hold_capture"]
    cells, lowest = [], float("inf")
    for scenario in SCENARIOS:
        for key, p in hc[scenario].items():
            v = p["vs_one_commit_each"]
            lowest = min(lowest, v["median"])
            cells.append(f"{SCENARIO_NAMES[scenario]} {key} {v['median']:.2f}x")
    measured = {int(k[1:]) for s in SCENARIOS for k in hc[s]}
    if lowest < 1:
        return ", ".join(cells), MISSED
    return ", ".join(cells), MET if measured >= set(TARGET_CONCURRENCIES) else NOT_MEASURED


def targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, met / missed / not measured) for each target, from this run."""
    a, r, b = result["arq_overhead"], result["reconcile"], result["billing_read"]
    c, api = result["cli"], result["api"]
    hot, many = _c32(result, "hot_team"), _c32(result, "many_teams")
    never = _never_below_one_commit_each(result)
    user = {k: a[k]["user_cpu_overhead_pct"] for k in ("teams", "hot_team")}
    total = {k: a[k]["cpu_overhead_pct"]["median"] for k in ("teams", "hot_team")}
    slowest_cli = max(c["billing"]["median"], c["charge"]["median"])
    c32, n = api["billing"]["c32"], api["billing"]["workers"]
    return [
        ("hold+capture at c32 >= 3x the baseline, one hot team (median)", *hot),
        ("hold+capture at c32 >= 3x the baseline, 1,000 teams (median)", *many),
        ("group commit never below one commit per call, c1 to c64 (medians)", *never),
        (
            "the worker's metering overhead <= 15 %: user-mode CPU per metered job over a "
            "no-op job's (median of interleaved pairs)",
            f"{a['spread_teams']} teams {ranged(user['teams'], '.1f', ' %')}, one hot team "
            f"{ranged(user['hot_team'], '.1f', ' %')}; total CPU {total['teams']:.1f} % / "
            f"{total['hot_team']:.1f} %",
            MET if max(u["median"] for u in user.values()) <= 15 else MISSED,
        ),
        (
            "reconcile of 10,000 teams < 10 s (zero-latency Stripe)",
            f"{r['teams']:,} teams in {r['seconds']:.2f} s",
            NOT_MEASURED if r["teams"] < 10_000 else MET if r["seconds"] < 10 else MISSED,
        ),
        (
            "billing section p50 < 2 ms at 1,000,000 charges",
            f"p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms at {b['charges']:,} charges",
            NOT_MEASURED if b["charges"] < 1_000_000 else MET if b["p50_ms"] < 2 else MISSED,
        ),
        (
            "a whole `tokens billing --json` / `tokens charge --json` p50 < 400 ms",
            f"billing {c['billing']['median']:.0f} ms, charge {c['charge']['median']:.0f} ms "
            f"(python -c pass {c['python_floor']['median']:.0f} ms)",
            MET if slowest_cli < 400 else MISSED,
        ),
        (
            "10,000 leads queued by one HTTP request < 1 s",
            f"{api['enqueue_10k_ms']:.0f} ms",
            MET if api["enqueue_10k_ms"] < 1000 else MISSED,
        ),
        (
            f"GET billing at 32 clients is not capped by one process: `tokens serve --workers "
            f"{n}` answers more requests/s than one process (median of per-round ratios)",
            f"{ranged(c32['serve_n_over_serve_1'], unit='x')}; cores busy (client, server and "
            f"Postgres) {c32['serve_1']['cores']['median']:.2f} with one process, "
            f"{c32['serve_n']['cores']['median']:.2f} with {n}",
            MET if c32["serve_n_over_serve_1"]["median"] > 1 else MISSED,
        ),
        (
            f"the HTTP layer adds < 1 ms at p50 to the billing read (32 clients, `--workers {n}`)",
            f"{ranged(c32['added_p50_ms'], unit=' ms')} at c32 (one process "
            f"{c32['added_p50_ms_serve_1']['median']:.2f} ms), "
            f"{ranged(api['billing']['c1']['added_p50_ms'], unit=' ms')} at c1",
            MET if c32["added_p50_ms"]["median"] < 1 else MISSED,
        ),
    ]


def summary(result: dict[str, Any]) -> str:
    """The targets and the headline tables, for the terminal."""
    rows = [f"- {status}: {name}: {measured}" for name, measured, status in targets(result)]
    return "\n\n".join(
        [
            "\n".join(rows),
            hold_capture_table(result["hold_capture"]),
            bounds_verdict(result),
            arq_table(result["arq_overhead"]),
        ]
    )


def plot(hc: dict[str, Any], path: Path) -> bool:
    """hold+capture/s against callers, both Ledger modes and the baseline, medians with
    their min-max. False (nothing drawn) with fewer than two concurrencies, or without
    matplotlib (a dev dependency)."""
    if min(len(hc[s]) for s in SCENARIOS) < 2:
        return False
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, scenario in zip(axes, SCENARIOS, strict=True):
        points = hc[scenario]
        cs = [int(k[1:]) for k in points]
        series = (
            ("per_s", "hold+capture, group commit", "tab:green", "o-"),
            ("one_commit_each_per_s", "hold+capture, one commit each", "tab:orange", "s--"),
            ("baseline_per_s", "baseline: one UPDATE per commit", "tab:gray", "^:"),
        )
        for key, label, color, style in series:
            med = [points[k][key]["median"] for k in points]
            err = [
                [m - points[k][key]["min"] for k, m in zip(points, med, strict=True)],
                [points[k][key]["max"] - m for k, m in zip(points, med, strict=True)],
            ]
            ax.errorbar(cs, med, yerr=err, fmt=style, color=color, label=label, capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrent callers (pool size)")
        ax.set_title(SCENARIO_NAMES[scenario])
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("operations per second (median, min-max)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _machine(m: dict[str, Any]) -> str:
    return (
        f"{m['nproc']} CPUs (`nproc`), Python {m['python']}, {m['platform']}; "
        f"PostgreSQL `{m['postgres']}`, embedded, Unix socket, default settings "
        "(fsync and synchronous_commit on), on the same cores as the client; Valkey "
        f"(embedded) for arq. A 3 ms `time.sleep` costs this process {m['wake_cost_us']:.0f} us "
        "of CPU: the price of going idle and being woken, paid on every round trip a caller "
        "waits for."
    )


def markdown(result: dict[str, Any], png: str | None) -> str:
    """docs/benchmarks.md: this run's results, nothing else."""
    hc, a = result["hold_capture"], result["arq_overhead"]
    r, ci = result["reconcile"], result["reconcile"]["charges_independence"]
    rl = r["rate_limited"]
    command = "python -m bench --quick" if result["quick"] else "python -m bench"
    rows = "\n".join(f"| {t} | {measured} | {ok} |" for t, measured, ok in targets(result))
    picture = f"\n![hold+capture per second]({png})\n" if png else ""
    return f"""# Benchmarks

Generated by `uv run {command}` at `{result["commit"]}` on {result["date"]}; do not edit
by hand. What was tried, measured, kept or dropped along the way is in
[decisions.md](decisions.md).

Every comparison is taken inside one run, between neighbours: the loads of a
point alternate round by round (the order reversed every round), each round
gives its own ratio, and a figure shows the median over rounds then
[min-max]. On a shared VM a single round (or a single run) moves by far more
than the differences measured here; the min-max says how far. Absolute rates
are not comparable between runs or machines.

Machine: {_machine(result["machine"])}

## Targets

| target | measured: median [min-max] | |
|---|---|---|
{rows}

## hold + capture

`python -m bench hold-capture` (bench/hold_capture.py). One operation is one
`Ledger.hold` then one `Ledger.capture`; C callers share a pool of C
connections. Per point, {hc["rounds"]} rounds of {hc["round_s"]} s of each load: group commit
(the Ledger as it runs), one commit per call (`Ledger(group_commit=False)`) and
the baseline, one autocommit `UPDATE bench_counter SET n = n - 1 WHERE id = 1`
per operation. Ratios are each round's group commit rate over its
neighbours'; rates, latencies, charges per commit and CPU are group commit's.
A caller gets its answer once its batch has committed: durability is that of
one commit per charge.
{picture}
{hold_capture_table(hc)}

## What bounds hold+capture at c32

{bounds_section(result)}

## The worker's metering overhead

`python -m bench arq` (bench/arq_overhead.py). The production worker class in
burst mode over {a["jobs"]:,} queued lead jobs per run (max_jobs {a["max_jobs"]}), metered
jobs (hold, sandbox search, capture) against no-op jobs with the same
arguments, {a["pairs"]} pairs of runs back to back, the order alternating. The target is
judged on user-mode CPU: the kernel's share is mostly the VM's price for
wake-ups (the machine line above). Every metered job is checked `captured`
and the ledger checked to hold exactly the jobs' charges
(verified: {"yes" if a["verified"] else "**no**"}).

{arq_table(a)}

## How many workers

`python -m bench capacity` (bench/capacity.py): metered jobs run by N
`TokensWorker` processes on uvloop (as `tokens worker` runs), sandbox
providers with the latency below, started first and released at once;
jobs/s = jobs / (last finish - first start). Worker and Postgres cores are
their CPU seconds over the point's seconds. One Postgres core keeps up with
about {result["capacity"]["workers_per_pg_core"]} fully busy worker processes
(worker over Postgres CPU per job, latency 0). For R jobs/s at provider
latency L: processes = R / min(max_jobs / (L + about 10 ms), the 0 ms rate per
process), and R times the Postgres CPU per job of Postgres CPU per second.

{capacity_table(result["capacity"])}

## Reconcile

`python -m bench reconcile` (bench/reconcile.py): N teams, each with one
ended month of unbilled additional tokens, billed and sent in one `reconcile`
run through the real `StripeSender` and stripe-python to the Stripe fake of
the tests (testing/stripe/, in process). Each run is checked: one bill
and one paid invoice per team, no other invoice, no drift. {ci["teams"]:,} teams
with {ci["charges_per_team"][0]} and with {ci["charges_per_team"][1]} charges each (same tokens):
time ratio {ci["ratio"]:.2f}, CPU ratio {ci["cpu_ratio"]:.2f}. Against Stripe's 25 requests/s per
endpoint ({rl["teams"]} bills, client paced at {rl["pace_rps"]:g}/s):
{rl["requests_per_bill"]:.2f} requests per bill, {rl["bills_per_s"]:.1f} bills/s,
{rl["rate_limit_share"] * 100:.0f} % of what the limit allows.

{reconcile_table(r)}

## The HTTP API and the billing read

`python -m bench api` (bench/api.py): `tokens serve` as real processes on the
same servers. Bulk enqueue: one request with 10,000 leads, to its 202. Billing
read: C keep-alive connections to `tokens serve` (one process) and to `tokens
serve --workers N` (N processes sharing the port), against C coroutines calling
`Ledger.billing` in the benchmark's process (a pool of the same size), the three
loads alternating round by round. CPU per request is the benchmark process's
(the HTTP client; for the bare call, the client and the Ledger), the server
processes' and Postgres'; cores busy is their sum over the round's seconds: on
a machine shared with other work it shows how much CPU the three got. A new
connection goes to whichever server process accepts it first, so the split of
the connections between processes is shown too.

{api_table(result["api"])}

`Ledger.billing` called {result["billing_read"]["calls"]} times for a team with
{result["billing_read"]["charges"]:,} charges in its month: p50
{result["billing_read"]["p50_ms"]:.2f} ms, p99 {result["billing_read"]["p99_ms"]:.2f} ms.

## A command's start-up

`python -m bench cli-start` (bench/cli_start.py): the installed `tokens`
executable as a new process on a running embedded Postgres, interleaved run
by run with `python -c pass`, the floor.

{cli_table(result["cli"])}

## Not in this run

`python -m bench soak` (bench/soak.py, minutes): many leads over several
worker processes while Postgres crashes, Valkey is killed and a worker dies;
it checks that nothing is lost, doubled or left held. `python -m bench sql-ab
--base REV` (bench/sql_ab.py): a commit's money-path SQL functions against
the working tree's, call by call in one Postgres.
"""


def write_docs(result: dict[str, Any], path: Path) -> None:
    """docs/benchmarks.md, its plot beside it (or no stale one), the JSON beside it."""
    png = path.with_suffix(".png")
    drawn = plot(result["hold_capture"], png)
    if not drawn:
        png.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result, png.name if drawn else None))
