"""Pallas Mosaic GPU kernels (grouped MoE, paged attention), their pure-jnp references, and the
one dispatch that picks between them (`pallas_kernels.dispatch`)."""
