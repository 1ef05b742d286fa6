"""Write a cost table for a model never timed on a device, from that device's table of another model
(lp_jax.sim.from_results.transferred_table), e.g. the dense Qwen3-8B on the H200 from the measured
Qwen3-30B-A3B table (docs/studies.md, Q3):

    .venv/bin/python scripts/transfer_cost_table.py h200 qwen3-30b-a3b qwen3-8b studies/tables/h200_qwen3-8b.json

Run it with `--executor sim:PATH` (the table is kept out of lp_jax/sim/tables/ so that `sim:h200`
never picks a table that was not measured with its model)."""

from __future__ import annotations

import argparse

from lp_jax.model.config import get_preset
from lp_jax.sim.cost_model import load_table
from lp_jax.sim.from_results import transferred_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("device", help="device of the base table (lp_jax/sim/tables/DEVICE_MODEL.json)")
    ap.add_argument("base_model", help="model of the base table")
    ap.add_argument("model", help="preset the new table is for")
    ap.add_argument("out", help="path of the table to write (.json)")
    args = ap.parse_args()
    table = transferred_table(load_table(args.device, args.base_model), get_preset(args.model))
    print(f"wrote {table.save(args.out)}: {table.source}")


if __name__ == "__main__":
    main()
