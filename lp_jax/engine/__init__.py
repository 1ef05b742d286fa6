"""The serving engine: the loop (engine), the executor and its compile cache, the row batch, the
paged KV cache, memory planning, requests, sampling, engine options (config) and the schedules
(scheduler/). Nothing here imports the bench, the server or `lp_jax.llm`."""
