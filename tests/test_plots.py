"""Figures: what they draw, checked on their matplotlib artists."""


def test_search_history_shows_every_trial_and_the_running_best():
    from prunescope.report.plots import search_history_figure

    trials = [
        {"value": 0.5, "epochs": 3, "state": "COMPLETE", "intermediate": {"2": 0.5}},
        {"value": None, "epochs": 1, "state": "PRUNED", "intermediate": {"0": 0.2}},
        {"value": 0.7, "epochs": 3, "state": "COMPLETE", "intermediate": {"2": 0.7}},
    ]
    axes = search_history_figure(trials).axes[0]
    points = [line for line in axes.lines if line.get_marker() == "o"]
    assert [tuple(p.get_xdata()) + tuple(p.get_ydata()) for p in points] == [(3, 0.5), (4, 0.2), (7, 0.7)]
    assert [p.get_fillstyle() for p in points] == ["full", "none", "full"]
    best = next(line for line in axes.lines if line.get_label() == "best so far")
    assert list(best.get_ydata()) == [0.5, 0.5, 0.7]
