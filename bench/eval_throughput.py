"""Evaluation throughput under masks vs plain inference: same model, same split, one run.

Measures what one evaluation of a sweep/scan costs compared with evaluating the dense
model: the masked path zeroes the pruned weights in place (``masks.applied``), evaluates,
and restores them. Prints a table of examples per second, median of repeated runs with the
10th-90th percentile spread, and the ratio masked / plain.

    python bench/eval_throughput.py                      # digits, MLP (offline)
    python bench/eval_throughput.py --data mnist --data-dir ../shared/data --model lenet5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from prunescope.criteria import compute_scores
from prunescope.data import load_dataset
from prunescope.evaluate import Evaluator
from prunescope.masks import applied, compute_masks
from prunescope.models import build_model
from prunescope.pick.baselines import uniform
from prunescope.targets import find_targets


def _rates(step, examples: int, repeats: int) -> list[float]:
    step()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        rates.append(examples / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_dataset(args.data, data_dir=args.data_dir)
    model = build_model(args.model, data.input_shape, data.num_classes).eval()
    evaluator = Evaluator(model, data.val, device=args.device)
    targets = find_targets(model)
    masks = compute_masks(compute_scores(model, targets, "magnitude"), uniform(targets, args.sparsity))

    def masked() -> None:
        with applied(model, targets, masks):
            evaluator.evaluate()

    # Interleave the two so that machine noise hits both alike.
    plain_rates, masked_rates = [], []
    for _ in range(args.repeats):
        plain_rates += _rates(evaluator.evaluate, len(evaluator), 1)
        masked_rates += _rates(masked, len(evaluator), 1)

    table = Table(title=f"evaluation throughput: {args.model} on {args.data} val ({len(evaluator)} examples, "
                  f"{evaluator.device}, {args.repeats} runs)")
    for column in ("path", "examples/s (median)", "p10", "p90"):
        table.add_column(column, justify="right")
    for name, rates in (("plain inference", plain_rates), (f"masked at {args.sparsity:.0%}", masked_rates)):
        deciles = statistics.quantiles(rates, n=10)
        table.add_row(name, f"{statistics.median(rates):,.0f}", f"{deciles[0]:,.0f}", f"{deciles[-1]:,.0f}")
    console = Console()
    console.print(table)
    ratios = [m / p for m, p in zip(masked_rates, plain_rates, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    console.print(f"masked / plain throughput: {statistics.median(ratios):.3f} "
                  f"(interquartile {quartiles[0]:.3f}-{quartiles[-1]:.3f}, per interleaved pair)")


if __name__ == "__main__":
    main()
