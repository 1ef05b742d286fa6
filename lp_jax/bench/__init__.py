"""The research bench: workloads, serving metrics, the bench runner, schedule comparisons, plots,
energy, soak runs, and the engine benchmark's ceilings, floors and reports."""
