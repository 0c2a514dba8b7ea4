"""PNG plots of results (matplotlib, headless). Draws what it is given; computes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

# Figure objects without pyplot: no global state and no display needed on servers and CI.
from matplotlib.figure import Figure

from prunescope.curves import Curves
from prunescope.io import atomic_write


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=110))
    return path


def curves_plot(curves: Curves, path: Path, tolerance: float | None = None) -> Path:
    """One line per target: metric vs that target's sparsity, others dense; interval as a band."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for name, curve in curves.curves.items():
        points = curve.sorted_points()
        x = [p.sparsity for p in points]
        line = axes.plot(x, [p.value for p in points], marker=".", label=name)[0]
        axes.fill_between(x, [p.low for p in points], [p.high for p in points], color=line.get_color(), alpha=0.15)
    axes.axhline(curves.dense.value, color="black", linewidth=0.8, label="dense")
    if tolerance is not None:
        axes.axhspan(curves.dense.value - tolerance, curves.dense.value, color="green", alpha=0.08,
                     label=f"tolerance ({tolerance * 100:.2g} pts)")
    axes.set_xlabel("sparsity of the layer (others dense)")
    axes.set_ylabel(f"val {curves.metric}")
    axes.set_title(f"sensitivity ({curves.criterion})")
    axes.legend(fontsize="small", ncol=2)
    return _save(figure, path)


def allocation_plot(allocations: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path:
    """Grouped bars: per target, the sparsity each method gives it."""
    methods = list(allocations)
    targets = list(next(iter(allocations.values())))
    width = 0.8 / max(len(methods), 1)
    figure = Figure(figsize=(max(6, 1.2 * len(targets)), 4))
    axes = figure.subplots()
    for i, method in enumerate(methods):
        xs = [t + (i - (len(methods) - 1) / 2) * width for t in range(len(targets))]
        axes.bar(xs, [allocations[method].get(name, 0.0) for name in targets], width, label=method)
    axes.set_xticks(range(len(targets)), targets, rotation=30, ha="right", fontsize="small")
    axes.set_ylabel("sparsity")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.legend(fontsize="small")
    return _save(figure, path)


def metric_vs_sparsity_plot(
    series: Mapping[str, Sequence[tuple[float, float, float]]], path: Path, ylabel: str, title: str
) -> Path:
    """One line per method; each point (sparsity, mean, spread) drawn with an error bar."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for method, points in series.items():
        points = sorted(points)
        axes.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                      capsize=3, label=method)
    axes.set_xlabel("global sparsity")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small")
    return _save(figure, path)
