"""pytest-timeout's thread method inside a pytest-xdist worker (scripts/test.sh runs 2): a test
past its timeout prints every thread's stack where the run's log shows it, and is not run again.

Why this exists: pytest-timeout writes its stack dump to the worker's terminal writer, which
xdist discards, and after the worker exits xdist hands the unfinished file (the hung test
included) to a fresh worker, so one hang would cost up to 8 x the timeout and show no stack.
Here a worker writes the dump to its stderr (the controller's, once capture is suspended) and
records the test in a file of this run; a worker given the test again fails it at once.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
import threading

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# One file per run, shared by its workers (xdist gives them all the same run id).
HUNG_FILE = os.path.join(tempfile.gettempdir(), f"lp-jax-hung-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID')}")


def _hung_before() -> set[str]:
    try:
        with open(HUNG_FILE) as f:
            return set(f.read().splitlines())
    except FileNotFoundError:
        return set()


def _dump_and_exit(item, timeout: float) -> None:
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman:
        capman.suspend_global_capture(item)  # sys.stderr is the worker's real stderr again
    with open(HUNG_FILE, "a") as f:
        f.write(item.nodeid + "\n")
    sys.stderr.write(f"\n{'+' * 30} Timeout (worker {WORKER}) {'+' * 30}\n{item.nodeid} ran past {timeout:g} s; "
                     "every thread's stack, most recent call first:\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(1)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    if WORKER is None or settings.method != "thread":
        return None  # pytest-timeout's own timer: its dump reaches the terminal there
    timer = threading.Timer(settings.timeout, _dump_and_exit, (item, settings.timeout))
    timer.name = f"timeout {item.nodeid}"
    timer.daemon = True

    def cancel():
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel
    timer.start()
    return True


def pytest_runtest_setup(item):
    if WORKER is not None and item.nodeid in _hung_before():
        pytest.fail("hung earlier in this run (its stacks are in the log, after '+++ Timeout'): not run again",
                    pytrace=False)
