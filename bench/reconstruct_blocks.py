"""Block-by-block vs whole-model reconstruction: seconds, block inputs held, and the difference of the results.

For the zoo ``gpt`` (causal LM, width 64, 4 heads, 64 positions, 256 tokens) at 2, 4 and 8
blocks, seeds of the initialisation: :func:`prunescope.reconstruct.reconstruct` (OBS masks,
every block matrix at 50%, 128 calibration sequences of random tokens, batches of 32) block by
block and with ``blockwise=False`` (every layer fed through the whole model). Prints per depth
the seconds of each path (mean ± std over seeds), the block inputs held at most, and the largest
weight difference between the two results; raw per-seed numbers go to ``--out``.

    OMP_NUM_THREADS=1 python bench/reconstruct_blocks.py --seeds 3
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from prunescope.models import build_model
from prunescope.reconstruct import reconstruct
from prunescope.targets import chosen_targets

VOCAB, LENGTH, WIDTH, CALIBRATION, BATCH = 256, 64, 64, 128, 32


def one(depth: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model("gpt", (LENGTH,), VOCAB, width=WIDTH, layers=depth, heads=4).eval()
    targets = chosen_targets(model, VOCAB)[0]
    allocation = {t.name: 0.5 for t in targets}
    x = torch.randint(0, VOCAB, (CALIBRATION, LENGTH), generator=torch.Generator().manual_seed(seed)).float()
    by_block, whole = copy.deepcopy(model), copy.deepcopy(model)
    first = reconstruct(by_block, targets, allocation, x, batch_size=BATCH)
    second = reconstruct(whole, targets, allocation, x, batch_size=BATCH, blockwise=False)
    with torch.no_grad():
        difference = max(float((p - q).abs().max()) for p, q in zip(by_block.parameters(), whole.parameters(),
                                                                      strict=True))
    return {"depth": depth, "seed": seed, "layers": len(targets), "block_seconds": first.seconds,
            "whole_seconds": second.seconds, "block_inputs_peak_bytes": first.block_inputs_peak_bytes,
            "max_weight_difference": difference, "plan": first.plan}


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--depths", default="2,4,8")
    parser.add_argument("--out", type=Path, default=Path("bench/results/reconstruct_blocks.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = [one(int(d), s) for d in args.depths.split(",") for s in range(args.seeds)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.datetime.now(datetime.UTC).isoformat(),
                                    "platform": platform.platform(), "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "runs": runs}, indent=1))
    table = Table(title=f"gpt width {WIDTH}, {CALIBRATION} sequences of {LENGTH}, 50% OBS, "
                        f"seconds mean ± std over {args.seeds} seeds (1 CPU thread)")
    for column in ("blocks", "layers", "block by block (s)", "whole model (s)", "block inputs held (MiB)",
                   "max |Δw| between paths"):
        table.add_column(column, justify="right")
    for depth in dict.fromkeys(r["depth"] for r in runs):
        rows = [r for r in runs if r["depth"] == depth]
        table.add_row(str(depth), str(rows[0]["layers"]), spread([r["block_seconds"] for r in rows]),
                      spread([r["whole_seconds"] for r in rows]),
                      f"{max(r['block_inputs_peak_bytes'] for r in rows) / 2**20:.2f}",
                      f"{max(r['max_weight_difference'] for r in rows):.1e}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
