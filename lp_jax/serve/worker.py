"""The engine's own thread. The engine is single-threaded, so everything that touches it runs here;
HTTP handlers talk to it only through a thread-safe command queue (submit, abort) and get events
back through a callback each request brings (the app's callback hands them to the request's
asyncio queue with `loop.call_soon_threadsafe`).

Loop: take every queued command (blocking while the engine is idle), run one engine step, hand
each request the tokens that came back for it. Events a request receives, in order:
    Accepted, then Tokens... (the last one with finish_reason set); or a single Rejected
    (status 400 for input the engine refuses, 503 when --max-waiting requests already wait).
A request that ends by an abort (client gone, stop string seen) gets no more events.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from lp_jax.engine.request import SamplingParams

log = logging.getLogger("lp_jax.serve")


@dataclass
class Accepted:
    request_id: int


@dataclass
class Rejected:
    status: int
    message: str
    param: str | None = None


@dataclass
class Tokens:
    token_ids: list[int]
    finish_reason: str | None = None  # "length" or "stop" on the last event
    stop_token: int | None = None  # the token that stopped it, if one did


@dataclass(eq=False)
class Submission:
    """One request as a handler hands it over. `deliver(event)` must be thread-safe and quick."""

    prompt: list[int]
    params: SamplingParams
    arrival_s: float  # time.perf_counter() when the HTTP request arrived
    deliver: Callable[[object], None]
    label: str = ""  # the HTTP request's id (X-Request-ID, else ours), for the request log
    # Filled in on the engine thread.
    request: object | None = None
    sent: int = 0


@dataclass
class _Abort:
    submission: Submission
    reason: str  # "abort" (client gone) or "stop" (a stop string ended it)


class EngineWorker:
    """Runs `llm` (an lp_jax.LLM) on a daemon thread. `metrics` (ServerMetrics or None) is told
    about every step and every request that ends; `request_log` (a path or None) gets one JSON line
    per ended request with its engine timestamps."""

    def __init__(self, llm, max_waiting: int, metrics=None, request_log: str | None = None,
                 idle_poll_s: float = 0.05):
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.llm, self.engine = llm, llm.engine
        self.max_waiting, self.metrics = max_waiting, metrics
        self.idle_poll_s = idle_poll_s
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.active: dict[int, Submission] = {}  # engine request id -> submission (engine thread only)
        self.error: str | None = None  # set if the loop died; the server then reports unhealthy
        self._stop = threading.Event()
        self._log_file = open(request_log, "a", buffering=1) if request_log else None
        # Engine times are perf_counter seconds; this maps them to Unix time for the log.
        self._unix_offset = time.time() - time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="lp-jax-engine", daemon=True)

    # --- called from any thread --------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.commands.put(None)
        self._thread.join(timeout)
        if self._log_file:
            self._log_file.close()

    def submit(self, submission: Submission) -> None:
        self.commands.put(submission)

    def abort(self, submission: Submission, reason: str = "abort") -> None:
        self.commands.put(_Abort(submission, reason))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    # --- the engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._take_commands(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    self._step()
        except Exception:  # noqa: BLE001 - the loop must tell every waiting request, then stop
            self.error = traceback.format_exc()
            log.error("engine loop stopped:\n%s", self.error)
            for sub in self.active.values():
                sub.deliver(Rejected(500, "the engine stopped with an internal error; see the server log"))
            self.active.clear()
        for sub in self.active.values():  # shutting down with requests in flight
            sub.deliver(Rejected(503, "the server is shutting down"))
        self._reject_queued("the server is shutting down" if self.error is None else "the engine stopped")

    def _take_commands(self, block: bool) -> None:
        try:
            command = self.commands.get(timeout=self.idle_poll_s) if block else self.commands.get_nowait()
            while True:
                if isinstance(command, Submission):
                    self._admit(command)
                elif isinstance(command, _Abort):
                    self._abort(command)
                command = self.commands.get_nowait()
        except queue.Empty:
            pass
        if self.metrics is not None:
            self.metrics.on_step(self.engine)

    def _admit(self, sub: Submission) -> None:
        # Queued requests that the next step can admit (free running slots) do not count as waiting.
        free_slots = max(0, self.engine.config.max_num_seqs - len(self.engine.state.running))
        waiting = len(self.engine.state.waiting) - free_slots
        if waiting >= self.max_waiting:
            sub.deliver(Rejected(503, f"{waiting} requests are already waiting (--max-waiting {self.max_waiting}); "
                                      "retry later"))
            return
        try:
            rid = self.engine.add_request(sub.prompt, sub.params, sub.arrival_s)
        except ValueError as e:
            sub.deliver(Rejected(400, str(e), "prompt" if "prompt" in str(e) else None))
            return
        sub.request = self.engine.requests[rid]
        self.active[rid] = sub
        sub.deliver(Accepted(rid))

    def _abort(self, command: _Abort) -> None:
        sub = command.submission
        if sub.request is None or self.active.pop(sub.request.request_id, None) is None:
            return  # already ended (or never admitted)
        self.engine.abort(sub.request.request_id)
        self._ended(sub, "stop" if command.reason == "stop" else "abort")

    def _step(self) -> None:
        spent_before = self.engine.total_expert_bytes
        self.engine.step()
        for rid, sub in list(self.active.items()):
            req = sub.request
            new = req.output[sub.sent:]
            done = req.status.done
            if not new and not done:
                continue
            sub.sent = len(req.output)
            last = req.output[-1] if req.output else None
            stop_token = last if done and req.finish_reason == "stop" else None
            sub.deliver(Tokens(list(new), req.finish_reason if done else None, stop_token))
            if done:
                del self.active[rid]
                self._ended(sub, req.finish_reason)
        if self.metrics is not None:
            self.metrics.on_step(self.engine, self.engine.total_expert_bytes - spent_before)

    def _ended(self, sub: Submission, reason: str) -> None:
        req = sub.request
        if self.metrics is not None:
            self.metrics.on_request_end(req, reason)
        if self._log_file:
            self._log_file.write(json.dumps({
                "id": sub.label, "engine_id": req.request_id, "arrival_s": req.arrival_s,
                "arrival_unix_s": req.arrival_s + self._unix_offset, "prompt_tokens": len(req.prompt),
                "output_tokens": len(req.output), "token_times_s": req.token_times_s, "finish_reason": reason,
                "expert_bytes": req.expert_bytes, "num_preemptions": req.num_preemptions}) + "\n")

    def _reject_queued(self, message: str) -> None:
        try:
            while True:
                command = self.commands.get_nowait()
                if isinstance(command, Submission):
                    command.deliver(Rejected(503, message))
        except queue.Empty:
            pass
