"""The page's sections of the two studies: three regimes and hyperparameter sensitivity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunescope.report.blocks import Items, Section, figure_of, note_of, table_of
from prunescope.report.formats import fixed, pct, setting
from prunescope.report.plots import (
    heatmaps_figure,
    phase_figure,
    search_history_figure,
    shift_figure,
)


def _regimes(doc: Mapping[str, Any]) -> Section | None:
    """The three-regime study (``prunescope regimes``): phase diagrams, cells, advice per density."""
    study = doc.get("regimes")
    if not isinstance(study, Mapping):
        return None
    temps, densities = study["temperatures"], study["densities"]
    cells = {(c["temperature"], c["density"]): c for c in study["cells"]}
    regimes = [[cells[t, d]["regime"] for d in densities] for t in temps]
    parts = [note_of(f"{study['temperature']} × density, {study['seeds']} pruned models per cell ({study['pairing']} "
                   f"pairing); regime I: mc < -{study['epsilon']:g} nats; II-A: connected, output CKA < "
                   f"{study['delta']:g}; II-B: connected and similar. Val split only.")]
    for title, key in (("val error of the pruned models", "error"), ("mode connectivity mc (nats)", "mc"),
                       ("CKA of the outputs", "cka_outputs")):
        values = {title: [[cells[t, d][key] for d in densities] for t in temps]}
        parts.append(figure_of(lambda v=values: phase_figure(temps, densities, v, regimes, study["temperature"]),
                             f"phase diagram: {title}"))
    rows = [(f"{c['temperature']:g}", f"{c['density']:g}", f"{pct(c['error'])} ± {pct(c['error_std'])}",
             f"{c['mc']:+.3f}" + (f" ± {c['mc_std']:.3f}" if c.get("mc_std") is not None else ""),
             fixed(c["cka_outputs"], 3), c["regime"],
             pct(c.get("scratch_error")) if c.get("scratch_error") is not None else "-")
            for c in study["cells"]]
    parts.append(table_of(("T", "density", "pruned error ± sd", "mc ± sd", "CKA", "regime", "scratch-E error"), rows,
                        left=2))
    items = [f"density {a['density']:g}: rule {' → '.join(f'{t:g}' for t in a['walk'])} stops at {a['chosen']:g} "
             f"({pct(a['chosen_error'])}); measured best {a['best']:g} ({pct(a['best_error'])})"
             for a in study["advice"]]
    parts.append(Items(items, "verdict"))
    return Section("regimes", "Three regimes", parts)


def _hparams(doc: Mapping[str, Any]) -> Section | None:
    """The hyperparameter study (``prunescope hparams`` or ``run --hparams``): landscapes, shifts, verdict."""
    study = doc.get("hparams")
    if not isinstance(study, Mapping) or "landscapes" not in study:
        return None
    grid, search, landscapes = study["grid"], study["search"], study["landscapes"]
    settings = study.get("settings", {})
    parts = [note_of(f"Dense search: {search['method']}, {len(search['trials'])} trials, {search['epochs_spent']} "
                   f"epochs, best val {pct(search['best_value'])} at {setting(search['best'])}. Grid "
                   f"{' × '.join(grid['axes'])} around it ({len(study['seeds'])} seeds per point; other knobs at the "
                   f"optimum), recovered by {settings.get('recover', '?')} at every degree; val split only. "
                   f"Distributions softmax(acc / τ), τ = {study['temperature']:.3g} (the dense seed-to-seed spread); "
                   "floors: the same measure between dense seeds (95th percentile; 5th for rank agreement).")]
    parts.append(figure_of(lambda: search_history_figure(search["trials"]), "dense search history",
                         "Val accuracy of every dense search trial against the epochs spent so far (hollow: "
                         "stopped early by the pruner), and the best so far."))
    if len(grid["axes"]) <= 2:
        means = [_as_rows(ls["mean"]) for ls in landscapes]
        names = (grid["axes"][0], grid["axes"][1] if len(grid["axes"]) > 1 else "")
        ticks = ([f"{v:.3g}" if isinstance(v, float) else str(v) for v in grid["values"][0]],
                 [f"{v:.3g}" if isinstance(v, float) else str(v) for v in grid["values"][1]]
                 if len(grid["axes"]) > 1 else [""])
        panels = [(ls["degree"]["label"], m) for ls, m in zip(landscapes, means, strict=True)]
        marks = [_argmax(m) for m in means]
        parts.append(figure_of(lambda: heatmaps_figure(panels, names, ticks, marks, marks[0]),
                             "val accuracy landscapes per degree",
                             "Mean val accuracy over seeds per degree, one colour scale; star: each degree's best "
                             "point, ring: the dense optimum."))
    measures = (("Wasserstein-1 distance", "distance", 1), ("transfer regret (pts)", "regret", 100),
                ("weighted Kendall tau", "rank", 1))
    curves = []
    for title, key, scale in measures:
        judged = [(ls["degree"]["removed"], ls["shift"][key]) for ls in landscapes]
        curves.append((title, [(x, j["mean"] * scale, j["std"] * scale, j["floor"] * scale) for x, j in judged],
                       key == "rank"))
    parts.append(figure_of(lambda: shift_figure(curves, "fraction removed"), "landscape shift vs pruning",
                         "Mean ± sd over seed pairs; grey band: the noise floor."))
    rows = []
    for ls in landscapes:
        shift, degree = ls["shift"], ls["degree"]
        moved = "; ".join(f"{axis} {j['mean']:+.2g}{' *' if j['significant'] else ''}"
                          for axis, j in shift["displacement"].items())
        rows.append((degree["label"], pct(degree["removed"], 0), pct(degree["one_shot_val_accuracy"]),
                     pct(max(max(r) for r in _as_rows(ls["mean"]))),
                     *(_judged(shift[key], scale) for _, key, scale in measures), moved))
    parts.append(table_of(("degree", "removed", "one-shot val", "best recovered val", "W1 (floor)",
                           "regret pts (floor)", "weighted tau (floor)",
                           f"optimum moved ({', '.join(study['units'].values())})"), rows,
                        caption="* beyond the noise floor", css="wide"))
    parts.append(Items([study["verdict"]["sentence"]], "verdict"))
    return Section("hparams", "Hyperparameter sensitivity under pruning", parts)


def _judged(judged: Mapping[str, Any], scale: float) -> str:
    mark = " *" if judged["significant"] else ""
    return f"{judged['mean'] * scale:.3g} ± {judged['std'] * scale:.2g} ({judged['floor'] * scale:.3g}){mark}"


def _as_rows(values: Any) -> list[list[float]]:
    """A landscape's mean as rows: 1 axis → one row per point, 3+ axes → averaged over the axes after two."""
    if not isinstance(values[0], list):
        return [[float(v)] for v in values]
    return [[sum(_flatten(cell)) / len(_flatten(cell)) for cell in row] for row in values]


def _flatten(values: Any) -> list[float]:
    return [x for v in values for x in _flatten(v)] if isinstance(values, list) else [float(values)]


def _argmax(rows: list[list[float]]) -> tuple[int, int]:
    return max(((i, j) for i, row in enumerate(rows) for j in range(len(row))), key=lambda ij: rows[ij[0]][ij[1]])


SECTIONS = (_regimes, _hparams)
