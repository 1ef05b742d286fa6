"""An `lp-jax serve` process on a loopback port, for the HTTP benchmarks (load test, aiperf):
started with the real command line, waited for through /health, read through /metrics, stopped
with SIGINT (uvicorn's graceful shutdown). The benchmarks reach the server over HTTP only, so
nothing here imports lp_jax.serve."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

STARTUP_TIMEOUT_S = 900  # weights + compilation on a 2-core CPU


def add_server_options(parser, default_model: str, default_engine: list[str]) -> None:
    """--model, --schedule and -o, as the benchmark scripts take them."""
    parser.add_argument("--model", default=default_model, help="default: %(default)s")
    parser.add_argument("--schedule", default="chunked", help="default: %(default)s")
    parser.add_argument("-o", "--engine-option", action="append", default=None, metavar="KEY=VALUE",
                        help=f"engine option (default: {' '.join(default_engine)})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, model: str, schedule: str, engine_options: list[str], *, request_log: str | None = None,
                 extra_args: tuple[str, ...] = (), log_path: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "lp_jax.cli", "serve", "--model", model, "--schedule", schedule,
                     "--host", "127.0.0.1", "--port", str(self.port), "--no-progress", "--log-level", "warning",
                     *(a for o in engine_options for a in ("-o", o)), *extra_args]
        if request_log:
            self.args += ["--request-log", request_log]
        self.log_path = log_path or os.devnull

    def __enter__(self) -> "ServeProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lp-jax serve exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"lp-jax serve did not become healthy in {STARTUP_TIMEOUT_S} s")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def metrics(self) -> dict[str, float]:
        """/metrics as {name{labels}: value}, e.g. 'lp_jax:kv_pages_used{model_name="m"}'."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r"^([\w:]+(?:\{[^}]*\})?) (\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def metric(self, name: str, **labels) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
        total = 0.0
        for key, value in self.metrics().items():
            base, _, rest = key.partition("{")
            have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            if base == name and all(have.get(k) == v for k, v in labels.items()):
                total += value
        return total
