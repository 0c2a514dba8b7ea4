"""A table of bad inputs across every command, shared by tests/test_bad_input.py and bench/bad_inputs.py.

Each case builds its command line in a fresh folder (a "world") holding a trained checkpoint
``model.pt``, a scan of it in ``scan/`` and earlier results in ``out/``; it names the exit code
and a distinctive part of the one-line message the command must give. Nothing in the world
may change (the test hashes the tree before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.data import load_dataset
from prunescope.models import build_from_spec, model_spec
from prunescope.report.tables import save_scan
from prunescope.targets import find_targets

SHAPE = (1, 8, 8)  # digits


@dataclass(frozen=True)
class Case:
    """``argv(world)`` → command line; expected exit ``code`` and a substring of the one-line ``message``."""

    id: str
    argv: Callable[[Path], list[object]]
    message: str
    code: int = 2


def make_template(folder: Path) -> Path:
    """A world to copy per case: model.pt (untrained MLP on digits), scan/scan.json of it, out/ with a result."""
    from prunescope.checkpoint import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    spec = model_spec("mlp", SHAPE, 10)
    torch.manual_seed(0)
    model = build_from_spec(spec).eval()
    save_checkpoint(folder / "model.pt", model, spec, load_dataset("digits").spec)
    point = CurvePoint(0.0, 0.9, 0.85, 0.95, 144)
    curves = Curves(
        "accuracy",
        "magnitude",
        point,
        {
            t.name: Curve(t.name, t.numel, t.numel, [point, CurvePoint(0.5, 0.8, 0.75, 0.85, 144)])
            for t in find_targets(model)
        },
    )
    save_scan(
        folder / "scan",
        curves,
        model=model,
        checkpoint=str(folder / "model.pt"),
        model_spec=spec,
        dataset_spec={"name": "digits"},
        settings={"tolerance": 0.005},
    )
    (folder / "out").mkdir()
    (folder / "out" / "result.json").write_text('{"earlier": "results"}\n')
    return folder


def new_world(template: Path, folder: Path) -> Path:
    shutil.copytree(template, folder)
    # the scan names the template's checkpoint: point it at this world's copy
    scan = folder / "scan" / "scan.json"
    doc = json.loads(scan.read_text())
    doc["checkpoint"] = str(folder / "model.pt")
    scan.write_text(json.dumps(doc))
    return folder


def tree_hash(folder: Path) -> str:
    """Hash of every path and file content under ``folder`` (or of the file ``folder``)."""
    digest = hashlib.sha256()
    paths = [folder] if folder.is_file() else sorted(folder.rglob("*"))
    for path in paths:
        digest.update(str(path.relative_to(folder.parent)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- helpers building bad files


def _file(world: Path, name: str = "a-file", text: str = "x\n") -> Path:
    path = world / name
    path.write_text(text)
    return path


def _unwritable(world: Path) -> Path:
    """A directory this process cannot write in: read-only for a user, /proc for root (root ignores modes)."""
    if os.geteuid() == 0:
        return Path("/proc/prunescope-out")
    folder = world / "read-only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


def _state(world: Path, state: dict[str, torch.Tensor], name: str = "state.pt") -> Path:
    path = world / name
    torch.save(state, path)
    return path


def _json(world: Path, name: str, value: object) -> Path:
    path = world / name
    path.write_text(json.dumps(value))
    return path


def _scan_with(world: Path, change: Callable[[dict], object]) -> Path:
    """A copy of the world's scan whose scan.json is ``change(doc)`` (a new document or the edited one)."""
    folder = world / "bad-scan"
    shutil.copytree(world / "scan", folder)
    doc = json.loads((folder / "scan.json").read_text())
    new = change(doc)
    (folder / "scan.json").write_text(json.dumps(doc if new is None else new))
    return folder


def _nan_in_scan(doc: dict) -> None:
    first = next(iter(doc["curves"]["curves"].values()))
    first["points"][1]["value"] = float("nan")


def _checkpoint_with(world: Path, change: Callable[[dict], None]) -> Path:
    payload = torch.load(world / "model.pt", weights_only=True)
    change(payload)
    path = world / "bad.pt"
    torch.save(payload, path)
    return path


def _nan_weight(payload: dict) -> None:
    payload["state_dict"]["fc1.weight"][0, 0] = float("nan")


def _inf_weight(payload: dict) -> None:
    payload["state_dict"]["fc2.bias"][1] = float("inf")


def _allocation(world: Path, fc1: str) -> Path:
    """A complete {layer: sparsity} file for the world's MLP, fc1's value written as given (JSON text)."""
    return _file(world, "a.json", f'{{"fc1.weight": {fc1}, "fc2.weight": 0.5, "fc3.weight": 0.5}}')


def _config(world: Path, text: str) -> Path:
    return _file(world, "run.toml", text)


def _incomplete_result(world: Path) -> Path:
    folder = world / "run-out"
    folder.mkdir()
    _json(folder, "result.json", {"schema": "prunescope.result", "version": 2, "command": "run"})
    return folder


def _other_model_in_out(world: Path) -> Path:
    """An --out holding a training checkpoint of another model (the world's MLP; the case trains lenet300)."""
    folder = world / "train-out"
    folder.mkdir()
    shutil.copy(world / "model.pt", folder / "model.pt")
    return folder


DEEP = "[" * 100_000 + "]" * 100_000  # JSON nested deeper than the parser's recursion limit


def _bytes(world: Path, name: str, data: bytes) -> Path:
    path = world / name
    path.write_bytes(data)
    return path


def _deep_result(world: Path) -> Path:
    folder = world / "deep-out"
    folder.mkdir()
    _file(folder, "result.json", DEEP)
    return folder


def _deep_scan(world: Path) -> Path:
    folder = world / "deep-scan"
    shutil.copytree(world / "scan", folder)
    (folder / "scan.json").write_text(DEEP)
    return folder


def _other_architecture(world: Path) -> Path:
    """A checkpoint of the world's MLP with other hidden widths (another --model-arg)."""
    from prunescope.checkpoint import save_checkpoint

    spec = model_spec("mlp", SHAPE, 10, hidden=[32])
    save_checkpoint(world / "other.pt", build_from_spec(spec).eval(), spec, load_dataset("digits").spec)
    return world / "other.pt"


CKPT = ["--checkpoint"]
CPU = ["--device", "cpu"]


def _out(command: list[str]) -> Callable[[Path], list[object]]:
    """``command`` with --out a file where the directory should be."""
    return lambda w: [*command[:1], *[w / "model.pt" if a == "@ckpt" else a for a in command[1:]], "--out", _file(w)]


def _unwritable_out(command: list[str]) -> Callable[[Path], list[object]]:
    return lambda w: [
        *command[:1],
        *[w / "model.pt" if a == "@ckpt" else a for a in command[1:]],
        "--out",
        _unwritable(w) / "sub",
    ]


# Commands with an --out directory, each with the arguments it needs besides.
WITH_OUT = {
    "train": ["train", "--epochs", "1"],
    "sweep": ["sweep", "--checkpoint", "@ckpt"],
    "scan": ["scan", "--checkpoint", "@ckpt"],
    "compare": ["compare", "--checkpoint", "@ckpt"],
    "prune": ["prune", "--checkpoint", "@ckpt", "--allocation", "a.json"],
    "gradual": ["gradual", "--checkpoint", "@ckpt", "--target-sparsity", "0.5"],
    "baseline": ["baseline", "--checkpoint", "@ckpt"],
    "run": ["run"],
}

CASES: list[Case] = [
    # --out that is a file, or a place that cannot be written: refused before any work
    *[Case(f"{name} --out is a file", _out(argv), "is a file, not a directory") for name, argv in WITH_OUT.items()],
    *[Case(f"{name} --out unwritable", _unwritable_out(argv), "cannot write in") for name, argv in WITH_OUT.items()],
    Case(
        "pick --out is a directory",
        lambda w: ["pick", "--scan", w / "scan", "--out", w / "out", *CPU],
        "is a directory",
    ),
    Case(
        "measure --json is a directory",
        lambda w: ["measure", *CKPT, w / "model.pt", "--json", w / "out"],
        "is a directory",
    ),
    # train
    Case("train --epochs 0", lambda w: ["train", "--epochs", "0", "--out", w / "t"], "epochs must be at least 1"),
    Case(
        "train --epochs abc", lambda w: ["train", "--epochs", "abc", "--out", w / "t"], "Invalid value for '--epochs'"
    ),
    Case("train unknown option", lambda w: ["train", "--epoch", "1", "--out", w / "t"], "No such option"),
    Case("train --lr nan", lambda w: ["train", "--lr", "nan", "--out", w / "t"], "--lr must be a finite number"),
    Case("train --lr -1", lambda w: ["train", "--lr", "-1", "--out", w / "t"], "learning rate must be positive"),
    Case(
        "train --weight-decay inf",
        lambda w: ["train", "--weight-decay", "inf", "--out", w / "t"],
        "--weight-decay must be a finite number",
    ),
    Case(
        "train --label-smoothing 1.5",
        lambda w: ["train", "--label-smoothing", "1.5", "--out", w / "t"],
        "label smoothing must be in [0, 1)",
    ),
    Case("train --batch-size 0", lambda w: ["train", "--batch-size", "0", "--out", w / "t"], "batch size"),
    Case(
        "train --optimizer adamx",
        lambda w: ["train", "--optimizer", "adamx", "--out", w / "t"],
        "unknown optimizer 'adamx'",
    ),
    Case(
        "train --data-dir missing",
        lambda w: ["train", "--data-dir", w / "nowhere", "--out", w / "t"],
        "is not a directory",
    ),
    Case("train --data unknown", lambda w: ["train", "--data", "imagenet", "--out", w / "t"], "unknown dataset"),
    Case("train --model unknown", lambda w: ["train", "--model", "alexnet", "--out", w / "t"], "alexnet"),
    Case("train --model hf: no directory", lambda w: ["train", "--model", f"hf:{w / 'nowhere'}", "--out", w / "t"],
         "no such directory"),
    Case("train --model hf: without config.json",
         lambda w: ["train", "--model", f"hf:{w / 'scan' / 'plots'}", "--out", w / "t"], "has no config.json"),
    Case("train --weights missing", lambda w: ["train", "--weights", w / "none.pt", "--out", w / "t", *CPU],
         "does not exist"),
    Case("train --weights not a torch file",
         lambda w: ["train", "--weights", _file(w, "w.pt", "garbage"), "--out", w / "t", *CPU],
         "is not a readable torch file"),
    Case("train --weights of another model",
         lambda w: ["train", "--weights", _state(w, {"fc9.weight": torch.zeros(2, 2)}), "--out", w / "t", *CPU],
         "does not fit the model: 'fc1.weight'"),
    Case("run --weights missing", lambda w: ["run", "--weights", w / "none.pt", "--out", w / "r"],
         "setting 'weights' must name an existing"),
    Case(
        "train another model into an --out",
        lambda w: ["train", "--model", "lenet300", "--epochs", "1", "--out", _other_model_in_out(w), *CPU],
        "holds a run of another model",
    ),
    Case("train --device tpu", lambda w: ["train", "--device", "tpu", "--out", w / "t"], "unknown device 'tpu'"),
    # checkpoints
    Case("sweep missing checkpoint", lambda w: ["sweep", *CKPT, w / "missing.pt", "--out", w / "out"], "missing.pt"),
    Case("sweep checkpoint is a folder", lambda w: ["sweep", *CKPT, w / "scan", "--out", w / "out"], "does not exist"),
    Case(
        "sweep corrupt checkpoint",
        lambda w: ["sweep", *CKPT, _file(w, "c.pt", "garbage"), "--out", w / "out"],
        "unsafe to load",
    ),
    Case(
        "sweep NaN weight",
        lambda w: ["sweep", *CKPT, _checkpoint_with(w, _nan_weight), "--out", w / "out"],
        "NaN or infinite values in 'fc1.weight'",
    ),
    Case(
        "scan inf weight",
        lambda w: ["scan", *CKPT, _checkpoint_with(w, _inf_weight), "--out", w / "out"],
        "NaN or infinite values in 'fc2.bias'",
    ),
    Case(
        "sweep state dict not a dict",
        lambda w: ["sweep", *CKPT, _checkpoint_with(w, lambda p: p.update(state_dict=[1])), "--out", w / "out"],
        "'state_dict' is a list",
    ),
    Case(
        "prune spec without name",
        lambda w: [
            "prune",
            *CKPT,
            _checkpoint_with(w, lambda p: p.update(model_spec={"input_shape": [1]})),
            "--allocation",
            "a.json",
            "--out",
            w / "out",
        ],
        "model spec has no name",
    ),
    # sweep
    Case(
        "sweep --sparsities 1.3",
        lambda w: ["sweep", *CKPT, w / "model.pt", "--sparsities", "0.5,1.3", "--out", w / "out"],
        "outside [0, 1)",
    ),
    Case(
        "sweep --sparsities nan",
        lambda w: ["sweep", *CKPT, w / "model.pt", "--sparsities", "nan", "--out", w / "out"],
        "outside [0, 1)",
    ),
    Case(
        "sweep --sparsities empty",
        lambda w: ["sweep", *CKPT, w / "model.pt", "--sparsities", ",", "--out", w / "out"],
        "--sparsities is empty",
    ),
    Case(
        "sweep --criterion l3",
        lambda w: ["sweep", *CKPT, w / "model.pt", "--criterion", "l3", "--out", w / "out"],
        "unknown --criterion",
    ),
    Case(
        "sweep --include nothing",
        lambda w: ["sweep", *CKPT, w / "model.pt", "--include", "conv*", "--out", w / "out", *CPU],
        "matches no prunable layer",
    ),
    Case(
        "sweep --subset 0",
        lambda w: ["sweep", *CKPT, w / "model.pt", "--subset", "0", "--out", w / "out", *CPU],
        "subset",
    ),
    # scan
    Case(
        "scan --tolerance nan",
        lambda w: ["scan", *CKPT, w / "model.pt", "--tolerance", "nan", "--out", w / "scan"],
        "--tolerance must be a finite number",
    ),
    Case(
        "scan --tolerance inf",
        lambda w: ["scan", *CKPT, w / "model.pt", "--tolerance", "inf", "--out", w / "scan"],
        "--tolerance must be a finite number",
    ),
    Case(
        "scan --tolerance 0",
        lambda w: ["scan", *CKPT, w / "model.pt", "--tolerance", "0", "--out", w / "scan"],
        "--tolerance must be a positive",
    ),
    Case(
        "scan --storage ''",
        lambda w: ["scan", *CKPT, w / "model.pt", "--storage", "", "--out", w / "scan"],
        "--storage is empty",
    ),
    Case(
        "scan --strategy foo",
        lambda w: ["scan", *CKPT, w / "model.pt", "--strategy", "foo", "--out", w / "scan"],
        "unknown --strategy",
    ),
    Case(
        "scan --granularity foo",
        lambda w: ["scan", *CKPT, w / "model.pt", "--granularity", "foo", "--out", w / "scan"],
        "unknown --granularity",
    ),
    Case(
        "scan --subset abc",
        lambda w: ["scan", *CKPT, w / "model.pt", "--subset", "abc", "--out", w / "scan"],
        "--subset must be a positive number",
    ),
    Case(
        "scan --workers 0",
        lambda w: ["scan", *CKPT, w / "model.pt", "--workers", "0", "--out", w / "scan", *CPU],
        "workers",
    ),
    # pick
    Case("pick no scan", lambda w: ["pick", "--scan", w / "nowhere"], "no scan in"),
    Case(
        "pick NaN in scan.json",
        lambda w: ["pick", "--scan", _scan_with(w, _nan_in_scan), *CPU],
        "NaN is not a finite number",
    ),
    Case("pick scan.json a list", lambda w: ["pick", "--scan", _scan_with(w, lambda d: [d]), *CPU], "is damaged"),
    Case(
        "pick scan.json without curves",
        lambda w: ["pick", "--scan", _scan_with(w, lambda d: d.pop("curves")), *CPU],
        "is damaged",
    ),
    Case(
        "pick --max-drop nan",
        lambda w: ["pick", "--scan", w / "scan", "--max-drop", "nan"],
        "--max-drop must be a finite number",
    ),
    Case("pick --picker foo", lambda w: ["pick", "--scan", w / "scan", "--picker", "foo"], "foo"),
    Case(
        "pick --target-sparsity 1.5",
        lambda w: ["pick", "--scan", w / "scan", "--picker", "budget", "--target-sparsity", "1.5", *CPU],
        "1.5",
    ),
    Case(
        "pick scan of another model",
        lambda w: ["pick", "--scan", w / "scan", *CKPT, _checkpoint_with(w, _perturbed), *CPU],
        "belongs to another model",
    ),
    Case("pick --round-to 0", lambda w: ["pick", "--scan", w / "scan", "--round-to", "0", *CPU], "round"),
    Case(
        "pick --latency-batch 0",
        lambda w: ["pick", "--scan", w / "scan", "--latency-batch", "0", *CPU],
        "--latency-batch must be at least 1",
    ),
    Case(
        "pick --target-params -5",
        lambda w: ["pick", "--scan", w / "scan", "--picker", "budget", "--target-params", "-5", *CPU],
        "-5",
    ),
    Case(
        "pick --target-macs 0",
        lambda w: ["pick", "--scan", w / "scan", "--picker", "budget", "--target-macs", "0", *CPU],
        "target MACs 0",
    ),
    Case(
        "sweep --subset -1",
        lambda w: ["sweep", *CKPT, w / "model.pt", "--subset", "-1", "--out", w / "out", *CPU],
        "subset",
    ),
    Case(
        "scan --subset -3",
        lambda w: ["scan", *CKPT, w / "model.pt", "--subset", "-3", "--out", w / "scan", *CPU],
        "subset",
    ),
    Case("pick --folds 1", lambda w: ["pick", "--scan", w / "scan", "--folds", "1", *CPU], "folds"),
    Case("pick --folds -1", lambda w: ["pick", "--scan", w / "scan", "--folds", "-1", *CPU], "folds"),
    # compare
    Case(
        "compare --sparsities 1",
        lambda w: ["compare", *CKPT, w / "model.pt", "--sparsities", "1", "--out", w / "out"],
        "outside [0, 1)",
    ),
    Case(
        "compare unknown allocation",
        lambda w: ["compare", *CKPT, w / "model.pt", "--allocations", "ours,foo", "--out", w / "out"],
        "unknown allocation 'foo'",
    ),
    Case(
        "compare --scan missing",
        lambda w: ["compare", *CKPT, w / "model.pt", "--scan", w / "nowhere", "--out", w / "out", *CPU],
        "no scan in",
    ),
    # prune
    Case(
        "prune allocation missing",
        lambda w: ["prune", *CKPT, w / "model.pt", "--allocation", w / "none.json", "--out", w / "out", *CPU],
        "does not exist",
    ),
    Case(
        "prune allocation 1.3",
        lambda w: ["prune", *CKPT, w / "model.pt", "--allocation", _allocation(w, "1.3"), "--out", w / "out", *CPU],
        "outside [0, 1)",
    ),
    Case(
        "prune allocation NaN",
        lambda w: ["prune", *CKPT, w / "model.pt", "--allocation", _allocation(w, "NaN"), "--out", w / "out", *CPU],
        "fc1.weight",
    ),
    Case(
        "prune allocation a list",
        lambda w: ["prune", *CKPT, w / "model.pt", "--allocation", _json(w, "a.json", [0.5]), "--out", w / "out", *CPU],
        "holds neither a pick",
    ),
    Case(
        "prune allocation unknown layer",
        lambda w: [
            "prune",
            *CKPT,
            w / "model.pt",
            "--allocation",
            _json(w, "a.json", {"conv9.weight": 0.5}),
            "--out",
            w / "out",
            *CPU,
        ],
        "conv9.weight",
    ),
    Case(
        "prune --importance without channels",
        lambda w: [
            "prune",
            *CKPT,
            w / "model.pt",
            "--allocation",
            _json(w, "a.json", {"fc1.weight": 0.5}),
            "--importance",
            "l1",
            "--out",
            w / "out",
        ],
        "does not rank weights",
    ),
    Case(
        "prune --finetune-epochs -1",
        lambda w: [
            "prune",
            *CKPT,
            w / "model.pt",
            "--allocation",
            _allocation(w, "0.5"),
            "--finetune-epochs",
            "-1",
            "--out",
            w / "out",
            *CPU,
        ],
        "--finetune-epochs must be at least 0",
    ),
    Case(
        "prune --recalibrate-bn -1",
        lambda w: [
            "prune",
            *CKPT,
            w / "model.pt",
            "--allocation",
            _allocation(w, "0.5"),
            "--granularity",
            "channel",
            "--recalibrate-bn",
            "-1",
            "--out",
            w / "out",
            *CPU,
        ],
        "--recalibrate-bn must be at least 0",
    ),
    Case(
        "prune --round-to 0",
        lambda w: [
            "prune",
            *CKPT,
            w / "model.pt",
            "--allocation",
            _allocation(w, "0.5"),
            "--granularity",
            "channel",
            "--round-to",
            "0",
            "--out",
            w / "out",
            *CPU,
        ],
        "--round-to must be at least 1",
    ),
    Case(
        "prune --patience 0",
        lambda w: [
            "prune",
            *CKPT,
            w / "model.pt",
            "--allocation",
            _allocation(w, "0.5"),
            "--patience",
            "0",
            "--out",
            w / "out",
            *CPU,
        ],
        "patience",
    ),
    # gradual
    Case(
        "gradual --target-sparsity 1",
        lambda w: ["gradual", *CKPT, w / "model.pt", "--target-sparsity", "1", "--out", w / "out"],
        "outside [0, 1)",
    ),
    Case(
        "gradual --schedule foo",
        lambda w: [
            "gradual",
            *CKPT,
            w / "model.pt",
            "--target-sparsity",
            "0.5",
            "--schedule",
            "foo",
            "--out",
            w / "out",
        ],
        "unknown --schedule",
    ),
    Case(
        "gradual --steps 0",
        lambda w: ["gradual", *CKPT, w / "model.pt", "--target-sparsity", "0.5", "--steps", "0", "--out", w / "out"],
        "at least 1 step",
    ),
    Case(
        "gradual --fraction nan",
        lambda w: [
            "gradual",
            *CKPT,
            w / "model.pt",
            "--target-sparsity",
            "0.5",
            "--schedule",
            "iterative",
            "--fraction",
            "nan",
            "--out",
            w / "out",
        ],
        "--fraction must be a finite number",
    ),
    Case(
        "gradual --epochs-per-step -1",
        lambda w: [
            "gradual",
            *CKPT,
            w / "model.pt",
            "--target-sparsity",
            "0.5",
            "--epochs-per-step",
            "-1",
            "--out",
            w / "out",
            *CPU,
        ],
        "epochs",
    ),
    Case(
        "gradual --initial-sparsity above target",
        lambda w: [
            "gradual",
            *CKPT,
            w / "model.pt",
            "--target-sparsity",
            "0.5",
            "--initial-sparsity",
            "0.8",
            "--out",
            w / "out",
            *CPU,
        ],
        "0.8",
    ),
    Case(
        "gradual --fraction 1.5",
        lambda w: [
            "gradual",
            *CKPT,
            w / "model.pt",
            "--target-sparsity",
            "0.5",
            "--schedule",
            "iterative",
            "--fraction",
            "1.5",
            "--out",
            w / "out",
        ],
        "fraction",
    ),
    # baseline
    Case(
        "baseline --scratch Q",
        lambda w: ["baseline", *CKPT, w / "model.pt", "--scratch", "Q", "--out", w / "out"],
        "unknown --scratch 'Q'",
    ),
    Case(
        "baseline --max-factor inf",
        lambda w: ["baseline", *CKPT, w / "model.pt", "--max-factor", "inf", "--out", w / "out"],
        "--max-factor must be a finite number",
    ),
    Case(
        "baseline --epochs 0",
        lambda w: ["baseline", *CKPT, w / "model.pt", "--epochs", "0", "--out", w / "out", *CPU],
        "epochs",
    ),
    # measure
    Case(
        "measure --batch-sizes 0",
        lambda w: ["measure", *CKPT, w / "model.pt", "--batch-sizes", "0"],
        "must list positive integers",
    ),
    Case("measure --repeats 0", lambda w: ["measure", *CKPT, w / "model.pt", "--repeats", "0"], "--repeats"),
    Case("measure --threads 0", lambda w: ["measure", *CKPT, w / "model.pt", "--threads", "0"], "--threads"),
    Case("measure .pt2 without trust", lambda w: ["measure", *CKPT, _file(w, "m.pt2", "zip"), *CPU], "m.pt2"),
    # report
    Case("report missing folder", lambda w: ["report", w / "nowhere"], "does not exist"),
    Case("report incomplete result", lambda w: ["report", _incomplete_result(w)], "is incomplete or damaged"),
    Case("report result of another command", lambda w: ["report", w / "out"], "not a prunescope run result"),
    # run: the whole config is checked before training
    Case(
        "run scratch = [Q]",
        lambda w: ["run", "--config", _config(w, 'scratch = ["Q"]\n'), "--out", w / "r"],
        "setting 'scratch'",
    ),
    Case(
        "run sparsities = [1.5]",
        lambda w: ["run", "--config", _config(w, "sparsities = [0.5, 1.5]\n"), "--out", w / "r"],
        "setting 'sparsities'",
    ),
    Case(
        "run folds = 1", lambda w: ["run", "--config", _config(w, "folds = 1\n"), "--out", w / "r"], "setting 'folds'"
    ),
    Case(
        "run tolerance = nan",
        lambda w: ["run", "--config", _config(w, "folds = 0\ntolerance = nan\n"), "--out", w / "r"],
        "setting 'tolerance' must be a finite number",
    ),
    Case(
        "run methods = [foo]",
        lambda w: ["run", "--config", _config(w, 'methods = ["ours", "foo"]\n'), "--out", w / "r"],
        "has unknown method 'foo'",
    ),
    Case(
        "run finetune_lr = -1",
        lambda w: ["run", "--config", _config(w, "finetune_lr = -1\n"), "--out", w / "r"],
        "learning rate must be positive",
    ),
    Case(
        "run optimizer = adamx",
        lambda w: ["run", "--config", _config(w, 'optimizer = "adamx"\n'), "--out", w / "r"],
        "unknown optimizer",
    ),
    Case(
        "run unknown key",
        lambda w: ["run", "--config", _config(w, "epoch = 3\n"), "--out", w / "r"],
        "unknown key 'epoch'",
    ),
    Case(
        "run config not TOML",
        lambda w: ["run", "--config", _config(w, "epochs = = 3\n"), "--out", w / "r"],
        "is not valid TOML",
    ),
    Case(
        "run --sparsity nan",
        lambda w: ["run", "--sparsity", "nan", "--out", w / "r"],
        "--sparsity must be a finite number",
    ),
    Case("run --epochs 0", lambda w: ["run", "--epochs", "0", "--out", w / "r"], "epochs must be at least 1"),
    # files that fail to parse (issue 25): nested too deeply, not a journal
    Case("prune allocation nested 100,000 deep",
         lambda w: ["prune", *CKPT, w / "model.pt", "--allocation", _file(w, "a.json", DEEP), "--out", w / "out", *CPU],
         "is not valid JSON (nested too deeply)"),
    Case("pick scan.json nested 100,000 deep", lambda w: ["pick", "--scan", _deep_scan(w), *CPU],
         "is not valid JSON"),
    Case("report result.json nested 100,000 deep", lambda w: ["report", _deep_result(w)],
         "is not valid JSON (nested too deeply)"),
    Case("run config nested 100,000 deep",
         lambda w: ["run", "--config", _config(w, f"sparsities = {DEEP}\n"), "--out", w / "r"],
         "is not valid TOML (nested too deeply)"),
    *[
        Case(f"scan --storage {what}",
             lambda w, make=make: ["scan", *CKPT, w / "model.pt", "--storage", make(w), "--out", w / "scan", *CPU],
             message)
        for what, make, message in [
            ("a text file", lambda w: _file(w, "afile", "hi\n"), "afile is not an Optuna journal (line 1 is not JSON)"),
            ("a directory", lambda w: w / "out", "is not an Optuna journal (not a regular file)"),
            ("a binary file", lambda w: _bytes(w, "blob", bytes(range(256)) * 4), "blob is not an Optuna journal"),
            ("a JSON line without op_code", lambda w: _file(w, "j.log", '{"worker_id": "w", "study_id": 0}\n'),
             "j.log is not an Optuna journal (line 1 is not a journal record)"),
        ]
    ],
    # empty target sets, another architecture (issue 25)
    Case("scan --exclude '*'", lambda w: ["scan", *CKPT, w / "model.pt", "--exclude", "*", "--out", w / "scan", *CPU],
         "--exclude '*' leaves no layer to prune"),
    Case("compare --exclude '*'",
         lambda w: ["compare", *CKPT, w / "model.pt", "--exclude", "*", "--out", w / "out", *CPU],
         "--exclude '*' leaves no layer to prune"),
    Case("measure --dense of another architecture",
         lambda w: ["measure", *CKPT, w / "model.pt", "--dense", _other_architecture(w), *CPU],
         "another architecture than the model's (hidden=[32], not hidden at its default)"),
    Case(
        "train another --model-arg into an --out",
        lambda w: ["train", "--model-arg", "hidden=32", "--epochs", "1", "--out", _other_model_in_out(w), *CPU],
        "another model (hidden at its default, not hidden=32)",
    ),
    # datasets
    Case("datasets --data-dir missing", lambda w: ["datasets", "--data-dir", w / "nowhere"], "is not a directory"),
]


def _perturbed(payload: dict) -> None:
    """Other weights, same architecture: a scan of the original must not be used for it."""
    payload["state_dict"]["fc1.weight"][0, 0] += 1.0
