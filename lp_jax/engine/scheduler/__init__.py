"""Host scheduling policies: `schedule(state) -> IterationPlan`."""

from lp_jax.engine.scheduler.base import IterationPlan, PrefillWork, SchedulerState, Segment
from lp_jax.engine.scheduler.chunked import ChunkedScheduler
from lp_jax.engine.scheduler.layered import LayeredScheduler
from lp_jax.engine.scheduler.prefill_first import PrefillFirstScheduler

SCHEDULERS = {"prefill_first": PrefillFirstScheduler, "chunked": ChunkedScheduler, "layered": LayeredScheduler}


def make_scheduler(name: str):
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULERS)}") from None


__all__ = ["IterationPlan", "PrefillWork", "SchedulerState", "Segment", "make_scheduler", "SCHEDULERS"]
