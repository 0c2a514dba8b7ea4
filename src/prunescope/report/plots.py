"""PNG plots of results (matplotlib, headless). Draws what it is given; computes nothing.

Each plot has a ``*_figure`` function that builds a :class:`~matplotlib.figure.Figure` and a
``*_plot`` function that writes it to a PNG file; :func:`png_bytes` renders a figure to PNG
bytes in memory (for pages that embed their plots).

One module for every figure (a little over 400 lines): they share the axes helpers, the colour
scale and the PNG writer, and splitting them by section would scatter those.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Figure objects without pyplot: no global state and no display needed on servers and CI.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from prunescope.curves import Curves
from prunescope.io import atomic_write

DPI = 110

# (sparsity, value, low, high): a point with an asymmetric interval (a Wilson interval, a fold spread).
IntervalPoint = tuple[float, float, float, float]


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=DPI))
    return path


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes, laid out as the ``*_plot`` functions save it."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def curves_figure(curves: Curves, tolerance: float | None = None) -> Figure:
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
    return figure


def curves_plot(curves: Curves, path: Path, tolerance: float | None = None) -> Path:
    """:func:`curves_figure` as a PNG file."""
    return _save(curves_figure(curves, tolerance), path)


def allocation_figure(allocations: Mapping[str, Mapping[str, float]], title: str) -> Figure:
    """Grouped bars: per target, the sparsity each method gives it."""
    methods = list(allocations)
    targets = list(next(iter(allocations.values())))
    width = 0.8 / max(len(methods), 1)
    # Wide enough for the labels, but never wider than a page: many targets get vertical labels.
    figure = Figure(figsize=(min(max(6, 1.2 * len(targets)), 16), 4.5 if len(targets) > 12 else 4))
    axes = figure.subplots()
    for i, method in enumerate(methods):
        xs = [t + (i - (len(methods) - 1) / 2) * width for t in range(len(targets))]
        axes.bar(xs, [allocations[method].get(name, 0.0) for name in targets], width, label=method)
    if len(targets) > 12:
        axes.set_xticks(range(len(targets)), targets, rotation=90, fontsize="x-small")
    else:
        axes.set_xticks(range(len(targets)), targets, rotation=30, ha="right", fontsize="small")
    axes.set_ylabel("sparsity")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    # Beside the bars, never over them: the bars reach the top of the axes.
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return figure


def allocation_plot(allocations: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path:
    """:func:`allocation_figure` as a PNG file."""
    return _save(allocation_figure(allocations, title), path)


def metric_vs_sparsity_figure(series: Mapping[str, Sequence[tuple[float, float, float]]], ylabel: str,
                              title: str) -> Figure:
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
    return figure


def metric_vs_sparsity_plot(
    series: Mapping[str, Sequence[tuple[float, float, float]]], path: Path, ylabel: str, title: str
) -> Path:
    """:func:`metric_vs_sparsity_figure` as a PNG file."""
    return _save(metric_vs_sparsity_figure(series, ylabel, title), path)


def recovered_figure(
    series: Mapping[str, Sequence[tuple[float, float]]],
    dense: float,
    bound: float,
    answer: float | None,
    marks: Mapping[str, tuple[float, float]] | None = None,
    metric: str = "accuracy",
) -> Figure:
    """The metric after fine-tuning vs global sparsity, one line per method, with the bound and the answer marked.

    ``series``: ``{method: [(sparsity, val metric)]}``; ``dense``: the dense val metric
    (black line); ``bound``: the worst value within the allowed drop (dashed red line, the
    region beyond it shaded); ``answer``: the sparsity answered (a dotted vertical line; None or
    0: none); ``marks``: single points labelled by their key, e.g. the test metric at the answer.
    ``metric``: ``accuracy`` (a fraction, higher is better) or ``perplexity`` (lower is better).
    """
    shown = "{:.3f}" if metric == "perplexity" else "{:.2%}"
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for method, points in series.items():
        points = sorted(points)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    for i, (label, (x, y)) in enumerate((marks or {}).items()):
        axes.plot([x], [y], marker="*^Dsv"[i % 5], markersize=10, linestyle="none", label=label)
    axes.axhline(dense, color="black", linewidth=0.9, label=f"dense ({shown.format(dense)})")
    axes.axhline(bound, color="C3", linestyle="--", linewidth=1.1, label=f"bound ({shown.format(bound)})")
    if answer:
        axes.axvline(answer, color="C2", linestyle=":", linewidth=1.5, label=f"answer ({answer:.1%})")
    low, high = axes.get_ylim()
    axes.axhspan(*((bound, high) if metric == "perplexity" else (low, bound)), color="C3", alpha=0.06)  # outside
    axes.set_ylim(low, high)
    axes.set_xlabel("global sparsity")
    axes.set_ylabel(f"val {metric} after fine-tuning")
    axes.set_title("how far after fine-tuning")
    axes.legend(fontsize="small")
    return figure


def interval_panels_figure(
    panels: Sequence[tuple[str, Mapping[str, Sequence[IntervalPoint]], tuple[float, float, float] | None]],
    ylabel: str,
) -> Figure:
    """Side-by-side panels of metric vs global sparsity, one line per method with interval error bars.

    ``panels``: ``(title, {method: [(sparsity, value, low, high)]}, reference)``; ``reference``
    ``(value, low, high)`` (the dense model) is drawn as a black line with a grey band. A method
    keeps its colour in every panel; methods at the same sparsity are drawn a little apart so
    that their bars do not hide each other. Each panel has its own y scale.
    """
    methods = list(dict.fromkeys(method for _, series, _ in panels for method in series))
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    xs = sorted({p[0] for _, series, _ in panels for points in series.values() for p in points})
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 0.0
    step = max(span, 0.1) * 0.03
    figure = Figure(figsize=(max(3.7 * len(panels), 6), 4.2))
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    for axes, (title, series, reference) in zip(axes_list, panels, strict=True):
        if reference is not None:
            value, low, high = reference
            axes.axhline(value, color="black", linewidth=0.9, label="dense")
            axes.axhspan(low, high, color="black", alpha=0.07)
        for method, points in series.items():
            points = sorted(points)
            offset = (methods.index(method) - (len(methods) - 1) / 2) * step
            axes.errorbar([p[0] + offset for p in points], [p[1] for p in points],
                          yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                          marker="o", capsize=3, color=colours[method], label=method)
        if xs:
            margin = max(span * 0.08, 0.04)
            axes.set_xlim(max(xs[0] - margin, -0.02), min(xs[-1] + margin, 1.02))
            axes.set_xticks(xs, [f"{x:.0%}" for x in xs])
        axes.set_xlabel("global sparsity")
        axes.set_ylabel(ylabel)
        axes.set_title(title, fontsize="medium")
        axes.legend(fontsize="small")
    return figure


def interval_panels_plot(
    panels: Sequence[tuple[str, Mapping[str, Sequence[IntervalPoint]], tuple[float, float, float] | None]],
    path: Path,
    ylabel: str,
) -> Path:
    """:func:`interval_panels_figure` as a PNG file."""
    return _save(interval_panels_figure(panels, ylabel), path)


def training_figure(history: Sequence[Mapping[str, float | None]], title: str) -> Figure:
    """A training run per epoch: val accuracy (left axis) and train / val loss (right axis).

    ``history``: epoch records ``{"epoch", "train_loss", "val_accuracy", "val_loss", ...}``;
    a missing or null value leaves a gap.
    """
    figure = Figure(figsize=(7, 4))
    accuracy_axes = figure.subplots()
    loss_axes = accuracy_axes.twinx()
    epochs = [record.get("epoch", i + 1) for i, record in enumerate(history)]

    def values(key: str) -> list[float]:
        return [float("nan") if record.get(key) is None else record[key] for record in history]

    lines = accuracy_axes.plot(epochs, values("val_accuracy"), marker="o", color="C0", label="val accuracy")
    lines += loss_axes.plot(epochs, values("train_loss"), linestyle="--", color="C1", label="train loss")
    lines += loss_axes.plot(epochs, values("val_loss"), linestyle=":", color="C3", label="val loss")
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    accuracy_axes.set_ylabel("val accuracy")
    loss_axes.set_ylabel("loss (nats)")
    accuracy_axes.set_title(title)
    accuracy_axes.legend(lines, [line.get_label() for line in lines], fontsize="small", loc="center right")
    return figure


def training_plot(history: Sequence[Mapping[str, float | None]], path: Path, title: str) -> Path:
    """:func:`training_figure` as a PNG file."""
    return _save(training_figure(history, title), path)


def epoch_curves_figure(
    series: Mapping[str, Sequence[tuple[float, float]]],
    ylabel: str,
    title: str,
    reference: float | None = None,
    reference_label: str = "dense",
    dashed: Sequence[str] = (),
) -> Figure:
    """One line per run: ``(epoch, value)`` points, e.g. val accuracy while fine-tuning each method.

    ``reference`` is drawn as a black horizontal line; runs named in ``dashed`` are dashed.
    """
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for name, points in series.items():
        points = sorted(points)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                  linestyle="--" if name in dashed else "-", label=name)
    if reference is not None:
        axes.axhline(reference, color="black", linewidth=0.9, label=reference_label)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small")
    return figure


def epoch_curves_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: Path,
    ylabel: str,
    title: str,
    reference: float | None = None,
    reference_label: str = "dense",
) -> Path:
    """:func:`epoch_curves_figure` as a PNG file."""
    return _save(epoch_curves_figure(series, ylabel, title, reference, reference_label), path)


def phase_figure(
    temperatures: Sequence[float],
    densities: Sequence[float],
    panels: Mapping[str, Sequence[Sequence[float | None]]],
    regimes: Sequence[Sequence[str]],
    temperature: str,
) -> Figure:
    """Heatmaps of temperature (rows, rising upwards) × density (columns), one per panel, regime boundaries drawn.

    ``panels``: ``{title: values[i][j]}`` for ``temperatures[i]`` and ``densities[j]`` (None: no value);
    ``regimes[i][j]``: each cell's regime label, written in the cell; a thick black line separates
    neighbouring cells of different regimes.
    """
    figure = Figure(figsize=(max(4.2 * len(panels), 6), 0.5 * len(temperatures) + 3))
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    rows, cols = len(temperatures), len(densities)
    for axes, (title, values) in zip(axes_list, panels.items(), strict=True):
        grid = [[float("nan") if v is None else v for v in row] for row in values]
        image = axes.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        for i in range(rows):
            for j in range(cols):
                axes.text(j, i, regimes[i][j], ha="center", va="center", fontsize="small", color="white",
                          bbox={"facecolor": "black", "alpha": 0.35, "pad": 1, "linewidth": 0})
                if j + 1 < cols and regimes[i][j] != regimes[i][j + 1]:
                    axes.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color="black", linewidth=2.5)
                if i + 1 < rows and regimes[i][j] != regimes[i + 1][j]:
                    axes.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color="black", linewidth=2.5)
        axes.set_xticks(range(cols), [f"{d:g}" for d in densities])
        axes.set_yticks(range(rows), [f"{t:g}" for t in temperatures])
        axes.set_xlim(-0.5, cols - 0.5)
        axes.set_ylim(-0.5, rows - 0.5)
        axes.set_xlabel("density (fraction of weights kept)")
        axes.set_ylabel(f"temperature: {temperature}")
        axes.set_title(title, fontsize="medium")
    return figure


def phase_plot(
    temperatures: Sequence[float],
    densities: Sequence[float],
    panels: Mapping[str, Sequence[Sequence[float | None]]],
    regimes: Sequence[Sequence[str]],
    temperature: str,
    path: Path,
) -> Path:
    """:func:`phase_figure` as a PNG file."""
    return _save(phase_figure(temperatures, densities, panels, regimes, temperature), path)


def heatmaps_figure(
    panels: Sequence[tuple[str, Sequence[Sequence[float]]]],
    axes_names: tuple[str, str],
    ticks: tuple[Sequence[str], Sequence[str]],
    marks: Sequence[tuple[int, int] | None] = (),
    reference_mark: tuple[int, int] | None = None,
) -> Figure:
    """Side-by-side heatmaps on ONE colour scale, e.g. a val-accuracy landscape per degree of pruning.

    ``panels``: ``(title, values)`` with ``values[i][j]`` at row ``i`` (first axis, ``ticks[0]``)
    and column ``j`` (second axis, ``ticks[1]``). ``marks``: per panel the (row, column) of its
    best cell, drawn as a white star; ``reference_mark``: a cell drawn as a black circle on every
    panel (e.g. the dense optimum).
    """
    low = min(min(min(row) for row in values) for _, values in panels)
    high = max(max(max(row) for row in values) for _, values in panels)
    figure = Figure(figsize=(max(3.2 * len(panels), 5), 3.6))
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for k, (axes, (title, values)) in enumerate(zip(axes_list, panels, strict=True)):
        image = axes.imshow(values, origin="lower", cmap="viridis", vmin=low, vmax=high, aspect="auto")
        axes.set_xticks(range(len(ticks[1])), ticks[1], rotation=45, fontsize="x-small")
        axes.set_yticks(range(len(ticks[0])), ticks[0], fontsize="x-small")
        axes.set_xlabel(axes_names[1], fontsize="small")
        if k == 0:
            axes.set_ylabel(axes_names[0], fontsize="small")
        axes.set_title(title, fontsize="medium")
        if reference_mark is not None:
            axes.plot(reference_mark[1], reference_mark[0], "o", markersize=11, markerfacecolor="none",
                      markeredgecolor="black", markeredgewidth=1.5)
        if k < len(marks) and marks[k] is not None:
            axes.plot(marks[k][1], marks[k][0], "*", color="white", markersize=11, markeredgecolor="black")
    if image is not None:
        figure.colorbar(image, ax=list(axes_list), shrink=0.85, label="val accuracy")
    return figure


def search_history_figure(trials: Sequence[Mapping[str, Any]]) -> Figure:
    """Val accuracy of each search trial against the epochs spent so far, with the running best.

    ``trials``: in the order run, each ``{"value", "epochs", "state", "intermediate"}``; a trial
    stopped early (``state == "PRUNED"``, no value) is drawn hollow at its last reported value.
    """
    figure = Figure(figsize=(6, 3.6))
    axes = figure.subplots()
    spent, best, xs, bests = 0, float("-inf"), [], []
    for trial in trials:
        spent += trial.get("epochs") or 0
        complete = trial["state"] == "COMPLETE"
        reported = list((trial.get("intermediate") or {}).values())
        value = trial["value"] if complete else (reported[-1] if reported else None)
        if value is None:
            continue
        axes.plot([spent], [value], "o", color="C0", fillstyle="full" if complete else "none")
        if complete and value > best:
            best = value
        xs.append(spent)
        bests.append(best if best > float("-inf") else value)
    axes.step(xs, bests, where="post", color="C1", label="best so far")
    axes.set_xlabel("epochs spent")
    axes.set_ylabel("val accuracy")
    axes.legend(fontsize="small")
    return figure


def shift_figure(
    panels: Sequence[tuple[str, Sequence[tuple[float, float, float, float]], bool]],
    xlabel: str,
) -> Figure:
    """One panel per measure vs the degree of pruning: mean ± sd as error bars, the noise floor as a grey band.

    ``panels``: ``(title, [(x, mean, sd, floor)], lower_is_shift)``; the band runs from 0 up to the
    floor, or from the floor up to 1 when lower values mean a shift (rank agreement).
    """
    figure = Figure(figsize=(max(3.6 * len(panels), 6), 3.6))
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    for axes, (title, points, lower) in zip(axes_list, panels, strict=True):
        points = sorted(points)
        xs = [p[0] for p in points]
        floors = [p[3] for p in points]
        if lower:
            axes.fill_between(xs, floors, [1.0] * len(xs), color="black", alpha=0.08, label="noise floor")
        else:
            axes.fill_between(xs, [0.0] * len(xs), floors, color="black", alpha=0.08, label="noise floor")
        axes.errorbar(xs, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3)
        axes.set_xlabel(xlabel)
        axes.set_title(title, fontsize="medium")
        axes.legend(fontsize="small")
    return figure
