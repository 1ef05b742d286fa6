"""NVIDIA's aiperf against `lp-jax serve`, and its figures beside the engine's own records of the
same requests (scripts/bench_serve.py).

aiperf runs from its own environment (it pins versions of prometheus-client, transformers and
more that need not match ours): `python3.12 -m venv .aiperf && .aiperf/bin/pip install aiperf`.
It needs no network: its tokenizer is a local folder (for a GGUF model, the documents built from
the file), and HF_HUB_OFFLINE is left unset, since aiperf treats a local path as a path.

Matching: aiperf sends an X-Request-ID with every request and records it; the server's
--request-log keeps it beside the engine's timestamps. Per request, with t0 = aiperf's request
start, a = the server's arrival (the HTTP handler's first line), f = the engine's first token:
    aiperf TTFT - engine TTFT = (a - t0) + (aiperf's first chunk - f)
                              = time to get the request to the server + time to get the first token back
aiperf reports the first part's pieces itself (http_req_blocked, dns_lookup, connecting,
sending). aiperf's ITL is (latency - TTFT) / (tokens - 1) per request; the engine's equivalent is
(last token - first token) / (tokens - 1) (bench.metrics' TPOT). Both machines' clocks are one
clock here (same host): aiperf's time.time_ns and the engine's perf_counter mapped to Unix time.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import numpy as np

from lp_jax.bench.metrics import distribution, latencies

INSTALL_HINT = "python3.12 -m venv .aiperf && .aiperf/bin/pip install aiperf"
PRE_SERVER = ("http_req_blocked", "http_req_dns_lookup", "http_req_connecting", "http_req_sending")


def aiperf_command(aiperf: str, url: str, model: str, tokenizer_dir, artifact_dir, *, requests: int,
                   concurrency: int, input_tokens: int, output_tokens: int, seed: int = 0) -> list[str]:
    """Streaming completions, fixed lengths (stddev 0), ignore_eos so every request gets exactly
    output_tokens tokens; token counts from the server's usage (re-encoding generated text can
    give another count, which would skew aiperf's ITL divisor); per-record export for the matching."""
    return [aiperf, "profile", "--model", model, "--url", url, "--endpoint-type", "completions", "--streaming",
            "--tokenizer", str(tokenizer_dir), "--request-count", str(requests), "--concurrency", str(concurrency),
            "--prompt-input-tokens-mean", str(input_tokens), "--prompt-input-tokens-stddev", "0",
            "--prompt-output-tokens-mean", str(output_tokens), "--prompt-output-tokens-stddev", "0",
            "--extra-inputs", "ignore_eos:true", "--use-server-token-count", "--random-seed", str(seed), "--output-artifact-dir",
            str(artifact_dir), "--ui-type", "none", "--no-gpu-telemetry", "--no-server-metrics",
            "--export-level", "records"]


def run_aiperf(command: list[str], artifact_dir, timeout_s: float = 3600) -> tuple[dict, list[dict]]:
    """Run aiperf; (its summary JSON, its per-request records). RuntimeError with its log's tail
    if it fails."""
    artifact_dir = pathlib.Path(artifact_dir)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(artifact_dir / "hf-home")  # nothing of the user's cache is read or written
    log = artifact_dir / "aiperf-console.log"
    artifact_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout_s)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"aiperf exited with {done.returncode}; its output ends:\n{tail}")
    summary = json.loads((artifact_dir / "profile_export_aiperf.json").read_text())
    records = [json.loads(line) for line in (artifact_dir / "profile_export.jsonl").read_text().splitlines() if line]
    return summary, records


def _value(record: dict, tag: str) -> float | None:
    entry = record["metrics"].get(tag)
    return None if entry is None else entry["value"]


def compare(records: list[dict], request_log: list[dict]) -> dict:
    """Per request (matched by X-Request-ID): aiperf's TTFT and ITL, the engine's, and the HTTP
    overheads, with distributions (ms), and how many requests have the engine's TTFT window nested
    in aiperf's (request reaches the server after aiperf started it; first token reaches aiperf
    after the engine had it)."""
    engine = {row["id"]: row for row in request_log}
    rows = []
    for rec in records:
        rid = rec["metadata"]["x_request_id"]
        if rid not in engine or _value(rec, "time_to_first_token") is None:
            continue
        e = engine[rid]
        lat = latencies(e["arrival_s"], e["token_times_s"])
        offset = e["arrival_unix_s"] - e["arrival_s"]  # engine clock -> Unix seconds
        start_s = rec["metadata"]["request_start_ns"] / 1e9
        ttft_ms = _value(rec, "time_to_first_token")
        pre_ms = sum(_value(rec, t) or 0.0 for t in PRE_SERVER)
        rows.append({
            "id": rid, "tokens": len(e["token_times_s"]), "aiperf_tokens": _value(rec, "output_sequence_length"),
            "aiperf_chunks": _value(rec, "http_req_chunks_received"),
            "aiperf_ttft_ms": ttft_ms, "engine_ttft_ms": lat.ttft * 1e3,
            "ttft_diff_ms": ttft_ms - lat.ttft * 1e3,
            "aiperf_pre_server_ms": pre_ms,
            "to_server_ms": (e["arrival_s"] + offset - start_s) * 1e3,
            "first_token_back_ms": (start_s + ttft_ms / 1e3 - (e["token_times_s"][0] + offset)) * 1e3,
            "aiperf_itl_ms": _value(rec, "inter_token_latency"),
            "engine_itl_ms": None if lat.tpot is None else lat.tpot * 1e3,
            "aiperf_latency_ms": _value(rec, "request_latency"), "engine_e2e_ms": lat.e2e * 1e3,
            "aiperf_chunk_gaps_ms": _value(rec, "inter_chunk_latency") or [],
            "engine_gaps_ms": list(np.asarray(lat.gaps) * 1e3),
        })
    if not rows:
        raise ValueError("no aiperf record matched a request of the server's log (X-Request-ID)")
    col = lambda key: [r[key] for r in rows if r[key] is not None]  # noqa: E731
    itl_diff = [r["aiperf_itl_ms"] - r["engine_itl_ms"] for r in rows
                if r["aiperf_itl_ms"] is not None and r["engine_itl_ms"] is not None]
    # The engine's window [arrival, first token] must lie inside aiperf's [request start, first chunk].
    nested = sum(r["to_server_ms"] >= 0 and r["first_token_back_ms"] >= 0 for r in rows)
    return {
        "matched_requests": len(rows), "aiperf_records": len(records), "engine_requests": len(request_log),
        "token_counts_agree": all(r["tokens"] == r["aiperf_tokens"] for r in rows),
        "ms": {key: distribution(col(key)) for key in (
            "aiperf_ttft_ms", "engine_ttft_ms", "ttft_diff_ms", "aiperf_pre_server_ms", "to_server_ms",
            "first_token_back_ms", "aiperf_itl_ms", "engine_itl_ms", "aiperf_latency_ms", "engine_e2e_ms")}
        | {"itl_diff_ms": distribution(itl_diff),
           "aiperf_chunk_gap_ms": distribution([g for r in rows for g in r["aiperf_chunk_gaps_ms"]]),
           "engine_gap_ms": distribution([g for r in rows for g in r["engine_gaps_ms"]])},
        "ttft_window_nested": nested,
        "requests": [{k: v for k, v in r.items() if not k.endswith("gaps_ms")} for r in rows],
    }


AIPERF_SUMMARY_KEYS = ("time_to_first_token", "inter_token_latency", "inter_chunk_latency", "request_latency",
                       "output_sequence_length", "input_sequence_length", "request_throughput",
                       "output_token_throughput", "benchmark_duration", "request_count", "http_req_blocked",
                       "http_req_connecting", "http_req_sending", "http_req_waiting", "http_req_receiving",
                       "http_req_duration", "http_req_connection_overhead")


def aiperf_markdown(section: dict) -> list[str]:
    c, ms = section["comparison"], section["comparison"]["ms"]
    run = section["run"]

    def row(label, key, note=""):
        d = ms[key]
        if d["mean"] is None:
            return f"| {label} | n/a | n/a | n/a | {note} |"
        return f"| {label} | {d['mean']:.1f} | {d['p50']:.1f} | {d['p99']:.1f} | {note} |"

    return [
        f"## aiperf {section['aiperf_version']} against the engine's own records: {section['model']}, "
        f"{section['schedule']} schedule", "",
        f"aiperf: {run['requests']} streaming completions at concurrency {run['concurrency']}, "
        f"{run['input_tokens']} prompt tokens and exactly {run['output_tokens']} output tokens each (ignore_eos); "
        f"engine options `{' '.join(section['engine_options'])}`. {c['matched_requests']} of "
        f"{c['aiperf_records']} aiperf records matched the server's request log by X-Request-ID; aiperf's token "
        f"counts (the server's usage) {'agree' if c['token_counts_agree'] else 'DISAGREE'} with the engine's.", "",
        "| per request, ms | mean | p50 | p99 | what it is |", "| --- | --- | --- | --- | --- |",
        row("aiperf TTFT", "aiperf_ttft_ms", "request start to first token chunk, at the client"),
        row("engine TTFT", "engine_ttft_ms", "handler arrival to first token, engine clock"),
        row("difference", "ttft_diff_ms", "aiperf - engine"),
        row("aiperf's pre-server overhead", "aiperf_pre_server_ms", "its http_req_blocked + dns + connecting + "
                                                                     "sending"),
        row("request to the server", "to_server_ms", "server arrival - aiperf request start (one clock)"),
        row("first token back to aiperf", "first_token_back_ms", "aiperf's first chunk - engine's first token"),
        row("aiperf ITL", "aiperf_itl_ms", "(latency - TTFT) / (tokens - 1)"),
        row("engine ITL", "engine_itl_ms", "(last - first token) / (tokens - 1)"),
        row("ITL difference", "itl_diff_ms", "aiperf - engine"),
        row("aiperf inter-chunk gap", "aiperf_chunk_gap_ms", "every gap between SSE chunks"),
        row("engine token gap (TBT)", "engine_gap_ms", "every gap between tokens"),
        row("aiperf request latency", "aiperf_latency_ms", ""),
        row("engine E2E", "engine_e2e_ms", ""), "",
        f"Per request, aiperf's TTFT = engine TTFT + the request's way to the server + the first token's way "
        f"back, all on one clock: the engine's window lies inside aiperf's for {c['ttft_window_nested']} of "
        f"{c['matched_requests']} requests. The difference, {ms['ttft_diff_ms']['mean']:.1f} ms on average "
        f"({ms['ttft_diff_ms']['mean'] / ms['aiperf_ttft_ms']['mean']:.1%} of TTFT), is HTTP overhead: of its "
        f"{ms['to_server_ms']['mean']:.1f} ms way in, aiperf itself reports {ms['aiperf_pre_server_ms']['mean']:.1f} "
        "ms (its connection is pooled, so connecting is mostly 0; the rest is uvicorn reading and routing the "
        "request); the way back (engine thread to the event loop, detokenizing, SSE framing, loopback, aiperf's "
        "parsing) is not among the figures aiperf reports. ITL differs by "
        f"{ms['itl_diff_ms']['mean']:.1f} ms on average ({ms['itl_diff_ms']['mean'] / ms['engine_itl_ms']['mean']:.1%}).", "",
        f"aiperf's own summary of the run is `serve_cpu_aiperf.json` beside this file; aiperf ran as "
        f"`aiperf {run['command']}`.",
    ]
