"""Bad input across every command: one line saying what to do, exit code 2, no traceback,
and nothing on disk changed (issue 11). The table is tests/bad_inputs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import CASES, Case, make_template, new_world, tree_hash


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("bad-input") / "world")


def test_the_table_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 40
    commands = {case.id.split()[0] for case in CASES}
    assert commands >= {
        "train",
        "sweep",
        "scan",
        "pick",
        "compare",
        "prune",
        "gradual",
        "baseline",
        "measure",
        "report",
        "run",
        "datasets",
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(cli, template: Path, tmp_path: Path, case: Case) -> None:
    world = new_world(template, tmp_path / "world")
    argv = case.argv(world)  # creates the case's bad files first: they are part of the world
    before = tree_hash(world)
    code, out, err = cli(*argv)
    message = err.strip()
    assert "Traceback" not in out + err
    assert code == case.code, message
    assert message.startswith("error:") and "\n" not in message, message
    assert case.message in message
    assert tree_hash(world) == before, "the command changed files"
