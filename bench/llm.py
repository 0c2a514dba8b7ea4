"""One-shot pruning of small causal language models: every allocation at equal sparsity, with Wanda masks and
with SparseGPT-style reconstruction, test perplexity read once per row.

For each architecture (a Llama-style model built from ``LlamaConfig``, a GPT-2-style one with ``Conv1D``
layers) and each seed: train it here on the offline corpus (the Python standard library's own sources, bytes,
blocks of ``--block`` tokens; split by document), cached in ``--work``; scan it (per matrix, Wanda masks,
adaptive, on val); then at every sparsity:

- masks: :func:`prunescope.pipeline.compare.compare` with the Wanda criterion for ``ours`` (the scan's budget
  pick or the best of every baseline on val, OWL and AlphaPruning included, refined on val), the scan's budget
  pick alone (``scan pick``), uniform, global, ERK, OWL and AlphaPruning with their published settings, and
  ``owl-tuned`` / ``alpha-tuned`` (their small grids chosen on val);
- reconstruction: the same allocations, each pruned once by layer-wise OBS reconstruction (``--reconstruct
  obs``: SparseGPT's mask selection and update) on ``--calibration`` train sequences; the allocations are the
  ones chosen with Wanda masks (nothing is selected again with reconstruction);
- 2:4: every prunable matrix at 2:4, Wanda and SparseGPT (N:M needs no allocation).

Embeddings and the output layer stay dense (prunescope's language-model default, as in Wanda, SparseGPT and
OWL). Val selects, test is read once per row. Prints mean ± sd over seeds of test perplexity per
architecture, mode and sparsity, the seconds each method took, OWL's measured outlier ratios, and checks
the goals; every per-seed number goes to ``--json``.

    python bench/llm.py --seeds 1 --train-tokens 200000            # a quick look
    python bench/llm.py --seeds 3 --json bench/results/llm.json     # the committed run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from prunescope.data import load_dataset
from prunescope.data.types import Dataset, Split
from prunescope.device import resolve_device
from prunescope.evaluate import Evaluator
from prunescope.models import build_model, model_spec
from prunescope.patterns import Pattern
from prunescope.pipeline.compare import compare
from prunescope.pipeline.sweep import sweep
from prunescope.reconstruct import reconstructing
from prunescope.scan import scan
from prunescope.scores import Score
from prunescope.train import TrainConfig, train
from prunescope.units import find_units

PERPLEXITY = Score("perplexity")
METHODS = ("ours", "uniform", "global", "erk", "owl", "alpha", "owl-tuned", "alpha-tuned")
SHOWN = ("ours", "scan pick", "uniform", "global", "erk", "owl", "owl-tuned", "alpha", "alpha-tuned")
LAYERWISE = ("owl", "alpha")


def config_dir(arch: str, work: Path, layers: int, width: int, block: int) -> Path:
    """A ``save_pretrained`` config folder of the architecture, built once (no weights, nothing downloaded)."""
    import transformers

    folder = work / "configs" / f"{arch}-{layers}x{width}-{block}"
    if not (folder / "config.json").exists():
        heads = max(1, width // 32)
        if arch == "llama":
            config = transformers.LlamaConfig(
                num_hidden_layers=layers, hidden_size=width, intermediate_size=8 * width // 3 // 8 * 8,
                num_attention_heads=heads, num_key_value_heads=heads, vocab_size=256, max_position_embeddings=block,
                tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, architectures=["LlamaForCausalLM"])
        else:
            config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=256,
                                             n_positions=block, bos_token_id=None, eos_token_id=None,
                                             architectures=["GPT2LMHeadModel"])
        config.save_pretrained(folder)
    return folder


def test_subset(split: Split, size: int, seed: int = 0) -> Split:
    """A seeded subset of the test split (every method is read on the same sequences)."""
    if size >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return Split(split.x[keep], split.y[keep])


def trained(arch: str, seed: int, data: Dataset, args: argparse.Namespace) -> tuple[torch.nn.Module, list[dict]]:
    """The model of ``arch`` trained with ``seed`` (resumed from ``--work``), and its per-epoch val perplexities."""
    name = f"hf:{config_dir(arch, args.work, args.layers, args.width, args.block)}"
    torch.manual_seed(seed)
    model = build_model(name, data.input_shape, data.num_classes)
    spec = model_spec(name, data.input_shape, data.num_classes)
    config = TrainConfig(epochs=args.epochs, optimizer="adamw", lr=args.lr, weight_decay=0.01, batch_size=32,
                         seed=seed)
    result = train(model, data, config, device=args.device, checkpoint=args.work / "models" / f"{arch}-{seed}.pt",
                   model_spec=spec)
    history = [{"epoch": r.epoch, "val_perplexity": r.val_perplexity, "seconds": r.seconds} for r in result.history]
    return result.model.eval(), history


def _timed_rows(model, data, sparsities, methods, **options) -> tuple[list, dict]:
    """compare()'s rows and the seconds spent on each (method, sparsity): between consecutive rows."""
    seconds: dict[tuple[str, float], float] = {}
    last = [time.perf_counter()]

    def tick(row) -> None:
        now = time.perf_counter()
        seconds[(row.method, row.sparsity)] = now - last[0]
        last[0] = now

    comparison = compare(model, data, sparsities, methods, criterion="wanda", on_row=tick, **options)
    return comparison.rows, seconds


def _perplexities(metrics) -> float | None:
    return None if metrics is None else metrics.get("perplexity")


def one_model(arch: str, seed: int, args: argparse.Namespace, console: Console) -> dict:
    """Every row of one trained model (cached in ``--work``)."""
    cached = args.work / "results" / f"{arch}-{seed}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    data = load_dataset("python-source", block=args.block, max_documents=args.documents,
                        limit_train=args.train_tokens // args.block, limit_val=args.val_sequences)
    data = Dataset(data.name, data.train, data.val, test_subset(data.test, args.test_sequences), data.input_shape,
                   data.num_classes, data.spec)
    start = time.perf_counter()
    model, history = trained(arch, seed, data, args)
    trained_s = time.perf_counter() - start
    by_epoch = ", ".join(f"{h['val_perplexity']:.3f}" for h in history)
    console.print(f"{arch} seed {seed}: val perplexity by epoch {by_epoch} ({trained_s:.0f} s)")
    start = time.perf_counter()
    curves = scan(model, data, criterion="wanda", tolerance=PERPLEXITY.allowed(args.tolerance), device=args.device,
                  calibration=args.calibration)
    scan_s = time.perf_counter() - start
    levels = [float(s) for s in args.sparsities.split(",")]
    options = {"curves": curves, "calibration": args.calibration, "device": args.device}
    rows, seconds = _timed_rows(model, data, levels, list(METHODS), **options)
    pick_rows, pick_seconds = _timed_rows(model, data, levels, ["ours"], refiner=None, starts=(), **options)
    for row in pick_rows:
        row.method = "scan pick"
    seconds |= {("scan pick", s): t for (_, s), t in pick_seconds.items()}
    out: list[dict] = []
    units = find_units(model, data, "weight", "wanda", seed=0)
    rebuilt = reconstructing(units, data.train, "obs", args.calibration)
    val_eval = Evaluator(model, data.val, device=args.device)
    test_eval = Evaluator(model, data.test, device=args.device)
    for row in [*rows, *pick_rows]:
        entry = {"method": row.method, "sparsity": row.sparsity, "error": row.error, "allocation": row.allocation,
                 "wanda": {"val": _perplexities(row.val), "test": _perplexities(row.test),
                           "seconds": seconds.get((row.method, row.sparsity))}}
        if row.method in LAYERWISE or row.method.endswith("-tuned"):
            entry["details"] = {k: v for k, v in row.details.items() if k not in ("candidates",)}
        if row.method == "ours":
            entry["details"] = {"start": row.details.get("start"), "candidates": row.details.get("candidates"),
                                "val_evaluations": row.details.get("val_evaluations")}
        if row.error is None:
            start = time.perf_counter()
            with rebuilt.applied(row.allocation):
                val, test = val_eval.evaluate(), test_eval.evaluate()
            entry["sparsegpt"] = {"val": val.get("perplexity"), "test": test.get("perplexity"),
                                  "seconds": time.perf_counter() - start}
        out.append(entry)
        console.print(f"  {row.method:12s} {row.sparsity:.0%}: wanda test {entry['wanda']['test']}, "
                      f"sparsegpt test {entry.get('sparsegpt', {}).get('test')}", highlight=False)
    for mode, reconstruct in (("wanda", None), ("sparsegpt", "obs")):
        start = time.perf_counter()
        point = sweep(model, data, [], criterion="wanda", patterns=[Pattern(2, 4)], split="test", device=args.device,
                      reconstruct=reconstruct, calibration=args.calibration).points[-1]
        out.append({"method": "2:4", "sparsity": 0.5, "error": None, mode: {
            "val": None, "test": point.metrics.get("perplexity"), "seconds": time.perf_counter() - start}})
    dense_val, dense_test = val_eval.evaluate(), test_eval.evaluate()
    record = {"arch": arch, "seed": seed, "history": history, "train_seconds": trained_s, "scan_seconds": scan_s,
              "scan_evaluations": curves.evaluations, "params": sum(p.numel() for p in model.parameters()),
              "dense": {"val": dense_val.get("perplexity"), "test": dense_test.get("perplexity")}, "rows": out}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(record))
    return record


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, sd = _mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}" if len(values) > 1 else f"{mean:.3f}"


def summarise(records: list[dict], console: Console) -> dict:
    """Tables of test perplexity (mean ± sd over seeds) and the goal checks, per architecture and mode."""
    goals: dict = {}
    for arch in dict.fromkeys(r["arch"] for r in records):
        mine = [r for r in records if r["arch"] == arch]
        dense = [r["dense"]["test"] for r in mine]
        for mode in ("wanda", "sparsegpt"):
            levels = sorted({row["sparsity"] for r in mine for row in r["rows"] if row["method"] != "2:4"})
            table = Table(title=f"{arch} ({mine[0]['params']:,} params): test perplexity, {mode}, mean ± sd over "
                          f"{len(mine)} seeds; dense {_cell(dense)}")
            table.add_column("method")
            for level in levels:
                table.add_column(f"{level:.0%}", justify="right")
            table.add_column("s / row (mean)", justify="right")

            def values(method: str, level: float, records: list[dict] = mine, mode: str = mode) -> list[float]:
                return [row[mode]["test"] for r in records for row in r["rows"]
                        if row["method"] == method and row["sparsity"] == level and row.get(mode)
                        and row[mode]["test"] is not None]

            for method in SHOWN:
                times = [row[mode]["seconds"] for r in mine for row in r["rows"] if row["method"] == method
                         and row.get(mode) and row[mode].get("seconds") is not None]
                table.add_row(method, *(_cell(values(method, level)) for level in levels),
                              f"{statistics.fmean(times):.1f}" if times else "-")
            pattern = values("2:4", 0.5)
            table.add_row("2:4 (50%)", _cell(pattern), *[""] * (len(levels) - 1), "")
            console.print(table)
            goals[f"{arch}/{mode}"] = _goals(values, levels)
    for key, checks in goals.items():
        for check, verdict in checks.items():
            console.print(f"{key}: {check}: {verdict}", highlight=False)
    return goals


def _goals(values, levels) -> dict[str, str]:
    """The issue's goals, each judged on the per-seed numbers: beyond the spread means by more than the larger
    of the two standard deviations (paired over seeds)."""
    out = {}
    for level in (0.7, 0.8):
        if level not in levels:
            continue
        ours = values("ours", level)
        others = {m: values(m, level) for m in SHOWN if m not in ("ours", "scan pick") and values(m, level)}
        if not ours or not others:
            continue
        best = min(others, key=lambda m: statistics.fmean(others[m]))
        gaps = [b - o for o, b in zip(ours, others[best], strict=False)]
        spread = max(_mean_sd(ours)[1], _mean_sd(others[best])[1])
        mean_gap = statistics.fmean(gaps)
        out[f"ours lowest at {level:.0%}"] = (f"{'yes' if mean_gap > spread else 'no'}: ours {_cell(ours)} vs best "
                                              f"other {best} {_cell(others[best])} (gap {mean_gap:+.3f}, spread "
                                              f"{spread:.3f})")
        for rival in LAYERWISE:
            if others.get(rival):
                worse = [o > r for o, r in zip(ours, others[rival], strict=False)]
                out[f"never above {rival} at {level:.0%}"] = (f"{'yes' if not any(worse) else 'no'}: above in "
                                                              f"{sum(worse)} of {len(worse)} seeds")
    if 0.7 in levels and values("uniform", 0.7) and values("ours", 0.7):
        ratio = [o / u for o, u in zip(values("ours", 0.7), values("uniform", 0.7), strict=False)]
        mean, sd = _mean_sd(ratio)
        out["ours ≥ 20% lower than uniform at 70%"] = f"{'yes' if mean <= 0.8 else 'no'}: ours / uniform = " \
                                                        f"{mean:.3f} ± {sd:.3f}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="llama,gpt2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--documents", type=int, default=None, help="first N standard-library files (all: None)")
    parser.add_argument("--train-tokens", type=int, default=2_000_000)
    parser.add_argument("--val-sequences", type=int, default=256)
    parser.add_argument("--test-sequences", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--tolerance", type=float, default=0.05, help="the scan's, as a relative perplexity increase")
    parser.add_argument("--sparsities", default="0.5,0.6,0.7,0.8")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("bench-work/llm"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.device = str(resolve_device(args.device))
    console = Console(width=200)
    started = time.perf_counter()
    records = [one_model(arch, seed, args, console) for arch in args.archs.split(",") for seed in range(args.seeds)]
    goals = summarise(records, console)
    minutes = (time.perf_counter() - started) / 60
    console.print(f"{minutes:.1f} min on {args.device} ({platform.processor() or platform.machine()}, "
                  f"{args.threads} thread(s)), torch {torch.__version__}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({
            "command": "python bench/llm.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items()
                                                       if v is not None and k not in ("json", "work")),
            "date": datetime.date.today().isoformat(), "device": args.device, "torch": torch.__version__,
            "threads": args.threads, "minutes": minutes, "settings": settings, "goals": goals, "records": records,
        }, indent=1, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v)))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
