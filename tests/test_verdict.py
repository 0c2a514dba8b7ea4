"""Headline sentences: signs, impossible predictions, and a val too small for its tolerance."""

from __future__ import annotations

import re

from prunescope.report.verdict import method_sentence, predicted_drop_text, small_val_warning


def _method(name: str, accuracy: float) -> dict:
    return {"method": name, "test": {"accuracy": accuracy, "accuracy_ci": [accuracy - 0.01, accuracy + 0.01]}}


def test_a_method_above_dense_gains_instead_of_losing_a_negative_amount() -> None:
    sentence = method_sentence(0.9, {"accuracy": 0.90}, [_method("ours", 0.914), _method("global", 0.88),
                                                         _method("erk", 0.9001)])
    assert "ours gains 1.4 ± 1.0 pts" in sentence
    assert "global loses 2.0 ± 1.0 pts" in sentence
    assert "erk matches dense" in sentence
    assert re.search(r"[-−]\s?\d", sentence) is None  # no negative amounts


def test_a_predicted_drop_never_exceeds_the_dense_value() -> None:
    assert predicted_drop_text(0.012, 0.95) == "+1.20"
    assert predicted_drop_text(1.73, 0.95).startswith("over 95.0 ")  # 173 pts of a 95% model cannot be lost


def test_small_val_warning_names_the_step_and_what_helps() -> None:
    warning = small_val_warning(43, 0.005)  # one example is 2.3 points against a 0.5-point bound
    assert warning is not None and "2.3 pts" in warning and "200 examples" in warning and "--folds" in warning
    assert small_val_warning(200, 0.005) is None  # one example is exactly the tolerance
    assert small_val_warning(1000, 0.005) is None
