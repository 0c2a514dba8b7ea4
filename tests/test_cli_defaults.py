"""Every command of ``prunescope --help`` run once from the entry point (``prunescope.cli.main``, what the
``prunescope`` script calls) with its defaults, ``--device auto`` added where it has the option, on
scikit-learn's digits and the zoo MLP: a default that only the command line passes (``--device auto``
reaching ``model.to`` unresolved, issue 24) is exercised. Only sizes are made small (epochs, trials,
seeds); every other option keeps its default.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from prunescope.cli import app


def _commands(group=None, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], set[str]]:
    """{command path: its option names} of the app: every command, and a group that runs without one."""
    group = group or typer.main.get_command(app)
    found = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            if command.invoke_without_command:
                found[(*path, name)] = {p.name for p in command.params}
            found |= _commands(command, (*path, name))
        else:
            found[(*path, name)] = {p.name for p in command.params}
    return found


COMMANDS = _commands()
SPACE = 'epochs = 1\n[lr]\nlow = 0.01\nhigh = 0.1\nlog = true\n[momentum]\nlow = 0.5\nhigh = 0.9\n'

# In order (each may read what an earlier one wrote, under the module's directory W): the command's
# path and its arguments beyond the defaults: inputs, outputs and sizes only.
STEPS: list[tuple[tuple[str, ...], list[str]]] = [
    (("train",), ["--epochs", "2", "--out", "W/dense"]),
    (("scan",), ["--checkpoint", "W/dense/model.pt", "--out", "W/scan"]),
    (("pick",), ["--scan", "W/scan"]),
    (("sweep",), ["--checkpoint", "W/dense/model.pt", "--out", "W/sweep"]),
    (("compare",), ["--checkpoint", "W/dense/model.pt", "--scan", "W/scan", "--out", "W/compare"]),
    (("prune",), ["--checkpoint", "W/dense/model.pt", "--allocation", "W/scan/pick.json", "--out", "W/pruned"]),
    (("gradual",), ["--checkpoint", "W/dense/model.pt", "--target-sparsity", "0.8", "--steps", "2",
                    "--out", "W/gradual"]),
    (("baseline",), ["--checkpoint", "W/pruned/model.pt", "--epochs", "2", "--out", "W/scratch"]),
    (("measure",), ["--checkpoint", "W/pruned/model.pt", "--repeats", "3"]),
    (("status",), ["--storage", "W/scan/study.journal"]),
    (("run",), ["--epochs", "2", "--finetune-epochs", "1", "--out", "W/run"]),
    (("report",), ["W/run"]),
    (("hparams",), ["--space", "W/space.toml", "--budget", "2", "--grid", "2x2", "--seeds", "2",
                    "--target-macs", "1,0.5", "--out", "W/hparams"]),
    (("regimes",), ["--values", "1,2", "--densities", "0.1", "--epochs", "1", "--finetune-epochs", "1",
                    "--out", "W/regimes"]),
    (("regimes", "select"), ["--checkpoints", "W/dense/model.pt", "W/run/model.pt", "--finetune-epochs", "1",
                             "--out", "W/select"]),
    (("models",), []),
    (("datasets",), []),
]


def argv(command: tuple[str, ...], arguments: list[str], work: Path) -> list[str]:
    """The command line: W replaced by ``work``, and ``--device auto`` where the command has the option."""
    words = [*command, *(a.replace("W", str(work), 1) if a.startswith("W") else a for a in arguments)]
    return [*words, "--device", "auto"] if "device" in COMMANDS[command] else words


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("defaults")
    (path / "space.toml").write_text(SPACE, encoding="utf-8")
    return path


def test_every_command_has_a_step() -> None:
    assert sorted(COMMANDS) == sorted(command for command, _ in STEPS)


@pytest.mark.parametrize(("command", "arguments"), STEPS, ids=[" ".join(c) for c, _ in STEPS])
def test_command_runs_with_its_defaults(cli, work: Path, command: tuple[str, ...], arguments: list[str]) -> None:
    code, out, err = cli(*argv(command, arguments, work))
    assert code == 0, f"{' '.join(command)} exited {code}:\n{err[-3000:]}"
    assert "Traceback" not in out + err
