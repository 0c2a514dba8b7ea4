"""The three case studies of Zhou et al. (ICML 2023), scored on measured phase diagrams.

Input: summaries of :func:`prunescope.regimes.study.summarise`, one per replicate of the
diagram (the same grid, dense models of another seed: ``RegimeSettings.dense_seed``).
Decisions use val only; the outcome that judges them is the test error (``metric``), so
the regime boundaries ε, δ chosen on val (:func:`calibrate`) are not read off the errors
that score them.

The spread rule, everywhere: two cells (or two choices) differ when their mean errors are
further apart than the larger of their seed-to-seed standard deviations; otherwise a tie.

1. :func:`direction`: at every cell whose advice points to a neighbouring temperature
   (regime I: raise, II-A: lower), is the neighbour's error lower (right), higher (wrong)
   or a tie? And :func:`walks`: from every start, does following the rule end within the
   spread of the best temperature more often than staying put?
2. :func:`selection`: per replicate and density, the dense models of the temperatures are a
   family; the rule's pick (:func:`prunescope.regimes.select.choose`, from mc and CKA only)
   against a uniformly random member (its expected error) and against the member with the
   lowest dense val error.
3. :func:`tuning`: a temperature (e.g. SAM's ρ) tuned by walking the rule from a start,
   against the grid search that measures every value and keeps the lowest val error.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from prunescope.errors import UsageError
from prunescope.regimes.classify import ADVICE, check_directions, classify, walk
from prunescope.regimes.select import choose

Cell = dict[str, Any]


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def differs(a: float, spread_a: float, b: float, spread_b: float) -> int:
    """-1 if ``a`` is lower than ``b`` beyond the larger spread, +1 if higher, 0 for a tie."""
    if abs(a - b) <= max(spread_a, spread_b):
        return 0
    return -1 if a < b else 1


def combine(summaries: Sequence[dict[str, Any]]) -> list[Cell]:
    """One cell per (temperature, density) over the replicates: means, and sds across replicates.

    The sd of a replicated cell is that of its replicates' mean errors (dense seeds); with one
    replicate it is the sd over its recovery seeds. ``runs`` keeps every replicate's cell.
    """
    if not summaries:
        raise UsageError("no phase diagram to combine: give at least one replicate")
    grid = [(c["temperature"], c["density"]) for c in summaries[0]["cells"]]
    for other in summaries[1:]:
        if [(c["temperature"], c["density"]) for c in other["cells"]] != grid:
            raise UsageError("the replicates have different grids: combine diagrams of one temperature × density grid")
    combined = []
    for k, (temperature, density) in enumerate(grid):
        runs = [s["cells"][k] for s in summaries]
        cell: Cell = {"temperature": temperature, "density": density, "replicates": len(runs), "runs": runs}
        for name in ("error", "test_error", "mc", "cka_outputs", "cka_features", "dense_error", "dense_test_error"):
            values = [r.get(name) for r in runs]
            known = [v for v in values if v is not None]
            cell[name] = statistics.fmean(known) if known else None
            if len(runs) > 1:
                cell[f"{name}_std"] = _sd(known) if known else None
            else:
                cell[f"{name}_std"] = runs[0].get(f"{name}_std") or 0.0
        combined.append(cell)
    return combined


def columns(cells: Sequence[Cell]) -> dict[float, list[Cell]]:
    """``{density: its cells in order of rising temperature}`` (cells come in that order from the study)."""
    out: dict[float, list[Cell]] = {}
    for cell in cells:
        out.setdefault(cell["density"], []).append(cell)
    return out


def regimes_of(column: Sequence[Cell], epsilon: float, delta: float) -> list[str]:
    return [classify(c["mc"], c["cka_outputs"], epsilon, delta) for c in column]


def direction(cells: Sequence[Cell], epsilon: float, delta: float, metric: str = "test_error") -> dict[str, Any]:
    """Every step the rule advises, right / wrong / tie on ``metric`` (mean and ``metric_std`` of each cell)."""
    steps = []
    for density, column in columns(cells).items():
        regimes = regimes_of(column, epsilon, delta)
        checks = check_directions([c["temperature"] for c in column], regimes, [c[metric] for c in column],
                                  [c[f"{metric}_std"] or 0.0 for c in column])
        steps += [{"density": density, **check.to_dict()} for check in checks]
    counts = {o: sum(s["outcome"] == o for s in steps) for o in ("right", "wrong", "tie")}
    return {"metric": metric, "steps": steps, **counts, "total": len(steps)}


def walks(cells: Sequence[Cell], epsilon: float, delta: float, metric: str = "test_error") -> dict[str, Any]:
    """From every (density, start): where the rule's walk stops, against staying at the start.

    Each is scored against the best temperature of its density on ``metric``: within the
    spread of the best, or worse beyond it.
    """
    rows = []
    for density, column in columns(cells).items():
        regimes = regimes_of(column, epsilon, delta)
        errors = [c[metric] for c in column]
        spreads = [c[f"{metric}_std"] or 0.0 for c in column]
        best = min(range(len(column)), key=errors.__getitem__)
        for start in range(len(column)):
            route = walk(regimes, start)
            chosen = route.chosen
            rows.append({"density": density, "start": column[start]["temperature"],
                         "advice": ADVICE[regimes[start]], "path": [column[i]["temperature"] for i in route.path],
                         "chosen": column[chosen]["temperature"], "best": column[best]["temperature"],
                         "regret": errors[chosen] - errors[best], "stay_regret": errors[start] - errors[best],
                         "within_spread": differs(errors[chosen], spreads[chosen], errors[best], spreads[best]) <= 0,
                         "stay_within_spread": differs(errors[start], spreads[start], errors[best],
                                                       spreads[best]) <= 0,
                         "against_staying": differs(errors[chosen], spreads[chosen], errors[start],
                                                    spreads[start])})
    return {"metric": metric, "walks": rows, "total": len(rows),
            "within_spread": sum(w["within_spread"] for w in rows),
            "stay_within_spread": sum(w["stay_within_spread"] for w in rows),
            "better_than_staying": sum(w["against_staying"] < 0 for w in rows),
            "worse_than_staying": sum(w["against_staying"] > 0 for w in rows)}


def _candidates(values: Iterable[float], low: float, high: float) -> list[float]:
    """Thresholds that split ``values`` every way they can be split: the ends and each midpoint."""
    points = sorted({min(max(v, low), high) for v in values})
    return sorted({low, high, *((a + b) / 2 for a, b in itertools.pairwise(points))})


def calibrate(cells: Sequence[Cell], metric: str = "error") -> dict[str, Any]:
    """ε and δ that make the most right and fewest wrong steps on ``metric`` (val error).

    Candidates: every threshold that splits the measured −mc (for ε ≥ 0) or output CKA (δ in
    [0, 1]) values differently; the score is right − wrong of :func:`direction`. Ties go to
    the smallest ε, then the smallest δ (the fewest cells moved out of II-B).
    """
    epsilons = _candidates((-c["mc"] for c in cells), 0.0, max([0.0, *(-c["mc"] for c in cells)]) + 1.0)
    deltas = _candidates((c["cka_outputs"] for c in cells), 0.0, 1.0)
    best: tuple[int, float, float] | None = None
    for epsilon in epsilons:
        for delta in deltas:
            scored = direction(cells, epsilon, delta, metric)
            score = scored["right"] - scored["wrong"]
            if best is None or score > best[0]:
                best = (score, epsilon, delta)
    assert best is not None  # both candidate lists hold their two ends
    score, epsilon, delta = best
    return {"metric": metric, "epsilon": epsilon, "delta": delta, "score": score,
            "candidates": {"epsilon": len(epsilons), "delta": len(deltas)}}


def selection(summaries: Sequence[dict[str, Any]], epsilon: float, delta: float,
              metric: str = "test_error") -> list[dict[str, Any]]:
    """Per density: the rule's pick of a family against random choice and the best dense model.

    Every replicate is one family (its dense models, one per temperature); each strategy's
    ``metric`` is averaged over the replicates, with its sd across them. ``rule_vs_random``
    and ``rule_vs_best_dense``: -1 the rule is lower beyond the spread, +1 higher, 0 a tie.
    """
    rows = []
    for density in summaries[0]["densities"]:
        rule, random, dense, oracle = [], [], [], []
        picks = []
        for summary in summaries:
            column = [c for c in summary["cells"] if c["density"] == density]
            errors = [c[metric] for c in column]
            chosen = choose(column, epsilon, delta)
            best_dense = min(range(len(column)), key=lambda i: column[i]["dense_error"])
            rule.append(errors[chosen])
            random.append(statistics.fmean(errors))
            dense.append(errors[best_dense])
            oracle.append(min(errors))
            picks.append({"rule": column[chosen]["temperature"], "best_dense": column[best_dense]["temperature"],
                          "best": column[min(range(len(column)), key=errors.__getitem__)]["temperature"]})
        row = {"density": density, "picks": picks}
        for name, values in (("rule", rule), ("random", random), ("best_dense", dense), ("best", oracle)):
            row[name] = statistics.fmean(values)
            row[f"{name}_std"] = _sd(values)
            row[f"{name}_runs"] = values
        row["rule_vs_random"] = differs(row["rule"], row["rule_std"], row["random"], row["random_std"])
        row["rule_vs_best_dense"] = differs(row["rule"], row["rule_std"], row["best_dense"], row["best_dense_std"])
        rows.append(row)
    return rows


def tuning(cells: Sequence[Cell], epsilon: float, delta: float, metric: str = "test_error") -> list[dict[str, Any]]:
    """Per density and start: the value the rule's walk reaches against the grid's val-best value.

    Cost is counted in cells measured: the walk measures the cells it visits (and the one
    beyond where it stopped at the edge or turned back, to know its regime), the grid all of
    them. ``rule_vs_grid``: -1 / 0 / +1 on ``metric`` by the spread rule.
    """
    rows = []
    for density, column in columns(cells).items():
        regimes = regimes_of(column, epsilon, delta)
        grid = min(range(len(column)), key=lambda i: column[i]["error"])  # val picks the grid's value
        errors = [c[metric] for c in column]
        spreads = [c[f"{metric}_std"] or 0.0 for c in column]
        for start in range(len(column)):
            route = walk(regimes, start)
            chosen = route.chosen
            seen = set(route.path)
            if route.reason == "advice turns back":
                seen.add(chosen + {"raise": 1, "lower": -1}[ADVICE[regimes[chosen]]])
            rows.append({"density": density, "start": column[start]["temperature"],
                         "rule": column[chosen]["temperature"], "grid": column[grid]["temperature"],
                         "rule_error": errors[chosen], "rule_error_std": spreads[chosen],
                         "grid_error": errors[grid], "grid_error_std": spreads[grid],
                         "rule_cells": len(seen), "grid_cells": len(column),
                         "rule_vs_grid": differs(errors[chosen], spreads[chosen], errors[grid], spreads[grid])})
    return rows


def _step(low: Cell, high: Cell, metric: str) -> dict[str, Any]:
    """The change in ``metric`` from ``low`` to ``high`` (one density) and whether it is beyond the spread."""
    return {"density": low["density"], "from": low["temperature"], "to": high["temperature"],
            "change": high[metric] - low[metric],
            "spread": max(low[f"{metric}_std"] or 0.0, high[f"{metric}_std"] or 0.0),
            "effect": differs(high[metric], high[f"{metric}_std"] or 0.0, low[metric], low[f"{metric}_std"] or 0.0)}


def temperature_effect(cells: Sequence[Cell], metric: str = "test_error") -> list[dict[str, Any]]:
    """Per density and step up the temperature grid: the change in ``metric`` and whether it is beyond the spread.

    The paper's transition: raising the temperature lowers the error at one load (``-1``)
    and raises it at another (``+1``).
    """
    return [_step(low, high, metric) for column in columns(cells).values() for low, high in itertools.pairwise(column)]


def transitions(cells: Sequence[Cell], metric: str = "test_error") -> list[dict[str, Any]]:
    """Every raise of the temperature (any two grid values, not only neighbours) that helps beyond the spread
    at some density and hurts beyond it at another: the paper's sharp transition, with those densities.
    """
    by_pair: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for column in columns(cells).values():
        for low, high in itertools.combinations(column, 2):
            by_pair.setdefault((low["temperature"], high["temperature"]), []).append(_step(low, high, metric))
    found = []
    for (low, high), steps in by_pair.items():
        helps = [s for s in steps if s["effect"] < 0]
        hurts = [s for s in steps if s["effect"] > 0]
        if helps and hurts:
            found.append({"from": low, "to": high, "helps": helps, "hurts": hurts})
    return found
