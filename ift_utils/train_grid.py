"""Train this shard's cells of the grid outside the notebooks, so that one cell can use several GPUs:

    python -m ift_utils.run params/paper.yaml --stages 01,02          # probe and build the groups first
    accelerate launch --num_processes 4 -m ift_utils.train_grid params/paper.yaml [-p key=value ...]
    python -m ift_utils.run params/paper.yaml                           # 03 finds the cells trained; 04, 05

Every process walks the same cells; accelerate splits each cell's batches over the processes (DDP). The
runner cannot be launched that way itself: each process would start its own notebooks and all but one
would stop at the run folder's lock. A cell trained here is the same cell stage 03 would train (same
fingerprint), so the notebook skips it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ift_utils.config import ParamError, load_params, parse_overrides
from ift_utils.models import resolve_model
from ift_utils.paths import open_run
from ift_utils.stages import grid
from ift_utils.stages import training as training_stage
from ift_utils.training import is_done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ift_utils.train_grid", description=__doc__.split("\n\n")[0])
    ap.add_argument("params", help="the params YAML file of the run, e.g. params/paper.yaml")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter, exactly as given to `python -m ift_utils.run`")
    args = ap.parse_args(argv)
    try:
        P = load_params(args.params, parse_overrides(args.param))
    except ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = open_run(P)
    cells = grid.my_cells(P)
    missing = [c.key for c in cells if not grid.cell_data(paths, c).exists()]
    if missing:
        print(f"error: {len(missing)} cell(s) have no training data in {paths.groups} (first: {missing[0]}); "
              f"run `python -m ift_utils.run {args.params} --stages 01,02` with the same parameters first",
              file=sys.stderr)
        return 1
    model_path = resolve_model(P.model, allow_network=P.allow_network, allow_pickle=P.allow_pickle)
    for i, cell in enumerate(cells, 1):
        logging.getLogger("ift_utils.train_grid").info("cell %d/%d: %s", i, len(cells), cell.key)
        training_stage.train_cell(P, paths, cell, model_path)
    done = sum(is_done(grid.cell_dir(paths, c)) for c in cells)
    print(f"{done} of {len(cells)} cell(s) of shard {P.shard_index + 1}/{P.num_shards} trained in {paths.train}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
