"""The README is a test: every ``prunescope`` command line and every python snippet that README.md and
docs/ show runs, in document order, in one temporary directory, through the CLI entry point in a
subprocess (``python -m prunescope``, this checkout's src first on PYTHONPATH).

The docs' placeholders are filled by small real files: DIR is a folder of small MNIST / Fashion-MNIST
IDX files and CIFAR-10 batches (tests/docs_commands.py), and every checkpoint, scan, pick, allocation,
pruned model and export is the one an earlier documented command wrote, as for a reader who types them
in order. RUNS says how each command runs: the options it replaces to take seconds (fewer epochs,
trials, seeds); SKIPS says, with a reason, which the test cannot run here. A command shown in the docs
with neither fails the test, so that a command added to the docs without a run fails; so does an entry
no document shows any more. SNIPPETS does the same for the python blocks. A step fails on a non-zero
exit or a traceback in its output.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from docs_commands import (
    ROOT,
    Command,
    Outcome,
    Run,
    Snippet,
    replaced,
    run_command,
    run_snippet,
    steps,
    write_small_data,
)

# The real MNIST files where present (CI: PRUNESCOPE_DATA_DIR), else stand-ins of the same shape.
SOURCE = Path(os.environ.get("PRUNESCOPE_DATA_DIR") or ROOT.parent / "shared" / "data")
TIMEOUT = 600  # seconds a step may take before it counts as hung


def _family(cwd: Path) -> None:
    """runs/family/*.pt for ``regimes select``: the dense LeNet-5s on MNIST that earlier commands trained."""
    family = cwd / "runs" / "family"
    family.mkdir(parents=True, exist_ok=True)
    for name in ("lenet5", "lenet5-run"):
        shutil.copy(cwd / "runs" / name / "model.pt", family / f"{name}.pt")


def _space(cwd: Path) -> None:
    """space.toml for ``hparams``: one epoch, two searched knobs (a 2x2 grid needs two axes)."""
    (cwd / "space.toml").write_text(
        'epochs = 1\n[lr]\nlow = 0.01\nhigh = 0.1\nlog = true\n[momentum]\nlow = 0.5\nhigh = 0.9\n', encoding="utf-8"
    )


def _run_config(cwd: Path) -> None:
    """small-run.toml for ``run``: the settings the command line has no option for, made small (scratch-B
    capped at twice the dense epochs, two levels of the recovered sweep)."""
    (cwd / "small-run.toml").write_text("scratch_max_factor = 2.0\nrecovered_sparsities = [0.5, 0.9]\n",
                                        encoding="utf-8")


# Small settings shared by the commands that train.
ONE_EPOCH = {"--epochs": "1"}
MEASURE = {"--repeats": "3"}
HPARAMS = {"--space": "space.toml", "--budget": "2", "--grid": "2x2", "--seeds": "2", "--limit-train": "500"}
REGIMES = {"--values": "1,2", "--densities": "0.1", "--seeds": "2", "--finetune-epochs": "1", "--epochs": "1"}
# A language model on a few documents of short blocks (the checkpoint keeps them for compare and prune; the
# last --data-arg of a key is the one that counts).
LM_RUN = {"--epochs": "1", "--sparsities": "0.5", "--data-arg": ("max_documents=12", "block=32"),
          "--limit-train": "400", "--limit-val": "48", "--methods": "ours,uniform,owl,alpha",
          "--config": "small-run.toml"}
RUN = {"--epochs": "2", "--finetune-epochs": "1", "--sparsities": "0.5,0.9", "--config": "small-run.toml"}

# How each command the docs show runs here, by its text (tests/docs_commands.py: Command.text).
RUNS: dict[str, Run] = {
    # README.md
    "prunescope run": Run(RUN, before=_run_config),
    "prunescope train --model lenet5 --data mnist --data-dir DIR --epochs 3 --out runs/lenet5": Run(ONE_EPOCH),
    "prunescope scan --checkpoint runs/lenet5/model.pt --out scans/lenet5 --data-dir DIR": Run(),
    "prunescope pick --scan scans/lenet5 --picker ensemble --max-drop 0.5 --data-dir DIR": Run(),
    "prunescope compare --checkpoint runs/lenet5/model.pt --scan scans/lenet5 --sparsities 0.8,0.9,0.95,0.98 "
    "--data-dir DIR --out compare/lenet5": Run(),
    "prunescope prune --checkpoint runs/lenet5/model.pt --allocation scans/lenet5/pick.json --finetune-epochs 5 "
    "--out pruned/lenet5 --data-dir DIR": Run({"--finetune-epochs": "1"}),
    "prunescope measure --checkpoint pruned/lenet5/model.pt --batch-sizes 1,256": Run(MEASURE),
    "PYTHONPATH=examples prunescope train --model my_model:build --data my_model:data --model-arg width=16 "
    "--epochs 3 --out runs/mine": Run(ONE_EPOCH),
    "PYTHONPATH=examples prunescope scan --checkpoint runs/mine/model.pt --trust-factory --out scans/mine": Run(),
    "prunescope scan --checkpoint wrapped/model.pt --trust-factory --out scans/wrapped": Run(),
    "prunescope run --data python-source --data-arg max_documents=200 --limit-train 2000 --limit-val 200 "
    "--model gpt --model-arg width=64 --model-arg layers=2 --epochs 3 --optimizer adamw --lr 0.003 --sparsity 0.5 "
    "--sparsities 0.5,0.7 --finetune-epochs 1 --out lm-run":
        Run(LM_RUN, before=_run_config, slow=True),  # minutes even this small: reconstruction per method
    # docs/commands
    "prunescope sweep --checkpoint runs/lenet5/model.pt --sparsities 0.5,0.7,0.9,0.95 --criterion magnitude "
    "--allocation uniform --data-dir DIR --out sweep/lenet5": Run(),
    "prunescope compare --checkpoint runs/lenet5/model.pt --scan scans/lenet5 --sparsities 0.8,0.9,0.95,0.98 "
    "--allocations ours,uniform,uniform+,global,erk,lamp --data-dir DIR --out compare/lenet5": Run(),
    "prunescope baseline --checkpoint pruned/lenet5/model.pt --scratch B --epochs 3 --data-dir DIR "
    "--out scratch/lenet5": Run({"--epochs": "1", "--max-factor": "2"}),
    "prunescope models": Run(),
    "prunescope datasets --data-dir DIR": Run(),
    "prunescope measure --checkpoint pruned/lenet5/model.pt --device auto --batch-sizes 1,256": Run(MEASURE),
    "prunescope run --model lenet5 --data mnist --data-dir DIR --out runs/lenet5-run": Run(RUN, before=_run_config),
    "prunescope report prunescope-out/": Run(),
    "prunescope scan --checkpoint runs/lenet5/model.pt --out scans/lenet5 --strategy adaptive --subset 2000 "
    "--data-dir DIR": Run(),
    "prunescope status --storage scans/lenet5/study.journal": Run(),
    "prunescope pick --scan scans/lenet5 --picker budget --target-sparsity 0.9 --data-dir DIR "
    "--out scans/lenet5/pick-90.json": Run(),
    "prunescope gradual --checkpoint runs/lenet5/model.pt --target-sparsity 0.95 --schedule polynomial --steps 10 "
    "--out gradual/lenet5 --data-dir DIR": Run({"--steps": "3"}),
    "prunescope baseline --checkpoint gradual/lenet5/model.pt --scratch E --epochs 3 --data-dir DIR "
    "--out scratch/gradual-lenet5": Run(ONE_EPOCH),
    # docs/cross-validation.md, hparams.md, reconstruction.md, regimes.md
    "prunescope pick --scan scans/lenet5 --folds 3 --max-drop 0.5 --data-dir DIR": Run(),
    "prunescope pick --scan scans/lenet5 --folds 0 --max-drop 0.5 --data-dir DIR "
    "--out scans/lenet5/pick-in-sample.json": Run(),
    "prunescope hparams": Run(HPARAMS | {"--target-macs": "1,0.5"}, before=_space),
    "prunescope hparams --model lenet5 --data fashion-mnist --data-dir DIR --search tpe --budget 40 --grid 5x5 "
    "--seeds 3 --target-macs 1,0.7,0.5,0.35,0.25 --out hp/lenet5": Run(HPARAMS | {"--target-macs": "1,0.5"},
                                                                      before=_space),
    "prunescope hparams --model lenet5 --data fashion-mnist --data-dir DIR --granularity weight "
    "--sparsities 0,0.5,0.7,0.8,0.9,0.95 --allocator global --recover scratch --out hp/lenet5-weight":
        Run(HPARAMS | {"--sparsities": "0,0.9"}, before=_space),
    "prunescope compare --checkpoint runs/lenet5/model.pt --scan scans/lenet5 --sparsities 0.9,0.95 "
    "--allocations global,erk,lamp --reconstruct mask --calibration 1024 --data-dir DIR "
    "--out compare/lenet5-refit": Run({"--sparsities": "0.9", "--calibration": "128"}),
    "prunescope compare --checkpoint runs/lenet5/model.pt --scan scans/lenet5 --sparsities 0.9,0.95 "
    "--allocations global --reconstruct obs --data-dir DIR --out compare/lenet5-obs":
        Run({"--sparsities": "0.9", "--calibration": "128"}),
    "prunescope sweep --checkpoint runs/lenet5/model.pt --sparsities 0.8,0.9 --criterion wanda --allocation global "
    "--data-dir DIR --out sweep/lenet5-wanda": Run(),
    "prunescope regimes": Run(REGIMES),
    "prunescope regimes --model cnn --data fashion-mnist --data-dir DIR --temperature epochs --values 1,2,4,8 "
    "--densities 0.05,0.1,0.2,0.4 --seeds 2 --out regimes-cnn --scratch": Run(REGIMES),
    "prunescope regimes select --checkpoints 'runs/family/*.pt' --density 0.1":
        Run({"--finetune-epochs": "1", "--data-dir": "DIR"}, before=_family),
    # docs/language-models.md
    "prunescope compare --checkpoint lm-run/model.pt --scan lm-run/scan --sparsities 0.5,0.7 "
    "--allocations ours,uniform,owl,alpha --criterion wanda --out lm-compare": Run(),
    "prunescope prune --checkpoint lm-run/model.pt --pattern 2:4 --criterion wanda --finetune-epochs 0 "
    "--out lm-24": Run(),
    # docs/scale-out.md, structured.md
    "prunescope scan --checkpoint runs/lenet5/model.pt --out scans/lenet5 --executor processes --workers 2 "
    "--data-dir DIR": Run(),
    "prunescope train --model resnet20 --data cifar10 --data-dir DIR --epochs 30 --out runs/resnet20":
        Run(ONE_EPOCH | {"--limit-train": "500", "--limit-val": "100"}),
    "prunescope scan --checkpoint runs/resnet20/model.pt --out scans/r20 --granularity channel --criterion l2 "
    "--data-dir DIR": Run(),
    "prunescope pick --scan scans/r20 --picker budget --target-macs 0.5 --round-to 8 --data-dir DIR": Run(),
    "prunescope compare --checkpoint runs/resnet20/model.pt --scan scans/r20 --granularity channel "
    "--sparsities 0.3,0.5,0.67 --data-dir DIR --out compare/r20": Run(),
    "prunescope prune --checkpoint runs/resnet20/model.pt --allocation scans/r20/pick.json --granularity channel "
    "--export pruned.pt2 --out pruned/r20 --data-dir DIR": Run({"--finetune-epochs": "1"}),
    "prunescope measure --checkpoint pruned/r20/model.pt --device auto --batch-sizes 1,256": Run(MEASURE),
}

# Commands the docs show that cannot run here, each with its reason (the tests that cover what they need).
_SHARED = "a PostgreSQL server and a Ray cluster of several machines, and model.pt stands for any checkpoint"
SKIPS: dict[str, str] = {
    "prunescope scan --checkpoint model.pt --out scans/lenet5 --storage postgresql://user@host/db "
    "--study-name lenet5-scan --executor ray --ray-address auto --workers 8 --gpus-per-worker 0.25":
        f"{_SHARED} (tests/test_postgres.py and tests/test_study_executors.py, -m slow, run both)",
    "prunescope scan --checkpoint model.pt --out scans/lenet5 --storage postgresql://user@host/db "
    "--study-name lenet5-scan": f"{_SHARED} (tests/test_postgres.py, -m slow)",
    "prunescope status --storage postgresql://user@host/db --study-name lenet5-scan":
        f"{_SHARED} (tests/test_postgres.py, -m slow)",
}

# How each python block runs, by (document, index among its python blocks): replacements of its text that
# keep it to seconds (each must still occur in the block).
SNIPPETS: dict[tuple[str, int], dict[str, str]] = {
    ("README.md", 0): {},
    ("docs/output.md", 0): {},
    ("docs/python.md", 0): {"TrainConfig(epochs=30)": "TrainConfig(epochs=3)"},
    ("docs/python.md", 1): {"RunConfig(epochs=5, finetune_epochs=2, folds=0)":
                            "RunConfig(epochs=2, finetune_epochs=1, folds=0, sparsities=(0.5, 0.9), "
                            "scratch_max_factor=2.0, recovered_sparsities=(0.5, 0.9))"},
    ("docs/your-model.md", 0): {},
}

STEPS = steps()


def _first(step: Command | Snippet) -> int:
    """Index of the first step the same as ``step`` (the same command line, or the same code)."""
    same = [i for i, s in enumerate(STEPS) if type(s) is type(step) and _content(s) == _content(step)]
    return same[0]


def _content(step: Command | Snippet) -> str:
    return step.text if isinstance(step, Command) else step.code


def _slow(step: Command | Snippet) -> bool:
    """README.md's steps run in the default suite, docs/'s (and a README step marked slow) under ``-m slow``.
    README.md comes first, so the default suite never needs a slow step's output."""
    return step.doc != "README.md" or (isinstance(step, Command) and step.text in RUNS and RUNS[step.text].slow)


def _missing(step: Command | Snippet) -> str | None:
    """Why the test has no way to run ``step`` (None when it has)."""
    if isinstance(step, Command):
        if step.text in RUNS or step.text in SKIPS:
            return None
        return f"{step.where}: `{step.text}` has no entry in RUNS (how to run it) or SKIPS (why not): add one"
    if step.key in SNIPPETS:
        return None
    return f"{step.where}: python block {step.key} has no entry in SNIPPETS: add one"


class Workspace:
    """The temporary directory the steps run in, in order, and what each run gave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = write_small_data(path / "data", SOURCE if SOURCE.is_dir() else None, n_train=2000, n_test=500)
        (path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
        self.outcomes: dict[int, Outcome | None] = {}

    def through(self, index: int) -> Outcome | None:
        """Run every step up to ``index`` not run yet (those ``-k`` or ``-m`` deselected are another step's
        inputs), and return step ``index``'s outcome (None: not run, a repeat, skipped or without entry)."""
        for i in range(index + 1):
            if i not in self.outcomes:
                self.outcomes[i] = self._run(STEPS[i]) if _first(STEPS[i]) == i and not _missing(STEPS[i]) else None
        return self.outcomes[index]

    def _run(self, step: Command | Snippet) -> Outcome | None:
        if isinstance(step, Snippet):
            return run_snippet(replaced(step.code, SNIPPETS[step.key]), self.path, TIMEOUT)
        if step.text in SKIPS:
            return None
        run = RUNS[step.text]
        if run.before is not None:
            run.before(self.path)
        return run_command(step, run, self.path, {"DIR": str(self.data)}, TIMEOUT)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("docs"))


def _param(index: int, step: Command | Snippet):
    label = step.text if isinstance(step, Command) else f"python block {step.index}"
    return pytest.param(index, id=f"{step.where} {label[:60]}", marks=[pytest.mark.slow] if _slow(step) else [])


# A step's test also runs the earlier steps deselected (their outputs are its inputs): README.md's, minutes.
@pytest.mark.timeout(4 * TIMEOUT)
@pytest.mark.parametrize("index", [_param(i, s) for i, s in enumerate(STEPS)])
def test_docs_step(workspace: Workspace, index: int) -> None:
    step = STEPS[index]
    missing = _missing(step)
    if missing:
        pytest.fail(missing)
    if isinstance(step, Command) and step.text in SKIPS:
        pytest.skip(SKIPS[step.text])
    first = _first(step)
    outcome = workspace.through(first)
    assert outcome is not None
    failure = outcome.failure()
    repeat = "" if first == index else f" (the same as {STEPS[first].where}, run there)"
    assert failure is None, f"{step.where}{repeat}: {failure}\n{outcome.output[-4000:]}"


def test_every_entry_is_in_the_docs() -> None:
    """An entry of RUNS, SKIPS or SNIPPETS that no document shows any more is stale: the docs changed."""
    texts = {s.text for s in STEPS if isinstance(s, Command)}
    keys = {s.key for s in STEPS if isinstance(s, Snippet)}
    assert sorted((RUNS.keys() | SKIPS.keys()) - texts) == []
    assert sorted(SNIPPETS.keys() - keys) == []
    assert not RUNS.keys() & SKIPS.keys()
    # A default-suite step after a slow one could need its output, which the default suite never makes.
    slow = [_slow(s) for s in STEPS]
    assert slow == sorted(slow), [s.where for s, later in zip(STEPS, slow, strict=True) if not later]


def test_extraction_reads_what_a_shell_runs(tmp_path: Path) -> None:
    """Continuations, prompts, comments, ``&&`` chains and environment prefixes, as a shell reads them;
    console output lines and other programs are not commands."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "```bash\npip install -e . && prunescope run --out a\n"
        "PYTHONPATH=examples prunescope scan --checkpoint x.pt \\\n    --out b   # a comment\n"
        "python bench/x.py --seeds 3\n```\n"
        "```console\n$ python -m prunescope models\nname  description\nprunescope is not a prompt\n```\n"
        "```python\nprint(1)\n```\n",
        encoding="utf-8",
    )
    found = steps(tmp_path)
    commands = [(s.line, s.text, s.env) for s in found if isinstance(s, Command)]
    assert commands == [
        (2, "prunescope run --out a", {}),
        (3, "PYTHONPATH=examples prunescope scan --checkpoint x.pt --out b", {"PYTHONPATH": "examples"}),
        (8, "prunescope models", {}),
    ]
    assert [(s.line, s.code) for s in found if isinstance(s, Snippet)] == [(13, "print(1)\n")]
