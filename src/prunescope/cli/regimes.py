"""``prunescope regimes``: the three-regime phase diagram, and ``regimes select`` for a family of checkpoints.

A thin layer over :mod:`prunescope.regimes`: parse, check, run, then write ``result.json``,
``regimes.csv``, the phase-diagram PNGs in ``plots/`` and ``report.html``, and print a
table per cell and the advice per density.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from prunescope.cli.options import (
    Device,
    ExecutorKind,
    GpusPerWorker,
    GracePeriod,
    HeartbeatInterval,
    RayAddress,
    Storage,
    StudyName,
    Workers,
    numbers,
)
from prunescope.cli.terminal import console, print_prunable
from prunescope.errors import UsageError
from prunescope.io import write_csv, write_json
from prunescope.prunable import spec_share
from prunescope.regimes.classify import DEFAULT_DELTA, DEFAULT_EPSILON
from prunescope.regimes.select import select
from prunescope.regimes.study import PAIRINGS, TEMPERATURES, RegimeSettings, dataset_of, model_spec_of, study
from prunescope.report.html import write_html
from prunescope.report.plots import phase_plot
from prunescope.report.schema import document
from prunescope.report.tables import listing_table
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL

app = typer.Typer(help="Three-regime model of pruning (Zhou et al., ICML 2023): which way to move a temperature, "
                       "which model to prune.")

Epsilon = Annotated[float, typer.Option(help="Barrier (nats) beyond which a cell is regime I: mc < -epsilon.")]
Delta = Annotated[float, typer.Option(help="Output CKA below which a connected cell is regime II-A.")]


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.2%}"


def _pm(value: Any, spread: Any, fmt: str) -> str:
    """``value ± spread`` (the spread left out when there is none, e.g. one pair of models)."""
    if value is None:
        return "-"
    return format(value, fmt) + ("" if spread is None else f" ± {format(spread, fmt.lstrip('+'))}")


def _cell_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in summary["cells"]:
        rows.append([f"{c['temperature']:g}", f"{c['density']:g}", _pct(c["dense_error"]),
                     _pm(c["error"], c["error_std"], ".2%"), f"{c['loss']:.3f}", _pm(c["mc"], c["mc_std"], "+.3f"),
                     _pm(c["cka_outputs"], None, ".3f"), _pm(c["cka_features"], None, ".3f"), c["regime"],
                     _pm(c["scratch_error"], c["scratch_error_std"], ".2%")])
    return rows


def _advice_sentence(a: dict[str, Any], temperature: str) -> str:
    checks = a["checks"]
    right = sum(c["outcome"] == "right" for c in checks)
    wrong = sum(c["outcome"] == "wrong" for c in checks)
    verdict = "within the seed spread of" if a["within_spread"] else "worse than"
    return (f"density {a['density']:g}: at {temperature} {a['start']:g} {a['advice_at_start']} it; following the rule "
            f"{' → '.join(f'{t:g}' for t in a['walk'])} stops at {a['chosen']:g} ({a['reason']}): val error "
            f"{_pm(a['chosen_error'], a['chosen_error_std'], '.2%')}, {verdict} the measured best {a['best']:g} "
            f"({_pm(a['best_error'], a['best_error_std'], '.2%')}); each step's advice was right {right}, "
            f"wrong {wrong}, a tie {len(checks) - right - wrong} of {len(checks)} times")


def _plots(out: Path, summary: dict[str, Any]) -> list[Path]:
    temps, densities = summary["temperatures"], summary["densities"]
    cell = {(c["temperature"], c["density"]): c for c in summary["cells"]}

    def grid(key: str) -> list[list[Any]]:
        return [[cell[t, d][key] for d in densities] for t in temps]

    regimes = grid("regime")
    eps = summary["epsilon"]
    panels = {"phase-error.png": ("val error of the pruned models", "error"),
              "phase-barrier.png": (f"mode connectivity mc (nats; < -{eps:g}: barrier)", "mc"),
              "phase-cka.png": ("CKA of the outputs", "cka_outputs")}
    return [phase_plot(temps, densities, {title: grid(key)}, regimes, summary["temperature"], out / "plots" / name)
            for name, (title, key) in panels.items()]


def _write(out: Path, doc: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    write_json(out / "result.json", doc)
    write_csv(out / "regimes.csv", rows)
    write_html(out, doc)


@app.callback(invoke_without_command=True)
def regimes_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Zoo model or package.module:factory.")] = "mlp",
    data: Annotated[str, typer.Option(help="Dataset name or package.module:factory.")] = "digits",
    data_dir: Annotated[str | None, typer.Option(help="Folder with the dataset files (or PRUNESCOPE_DATA_DIR).")]
    = None,
    limit_train: Annotated[int | None, typer.Option(help="Train on a stratified subset of this many examples.")]
    = None,
    temperature: Annotated[str, typer.Option(help=f"The swept hyperparameter: {', '.join(TEMPERATURES)}.")]
    = "epochs",
    values: Annotated[str, typer.Option(help="Comma-separated values of the temperature.")] = "1,3,10,30",
    densities: Annotated[str, typer.Option(help="Comma-separated densities (fractions kept) in (0, 1].")]
    = "0.02,0.05,0.1,0.3",
    seeds: Annotated[int, typer.Option(help="Pruned models per cell (at least 2: every pair is compared).")] = 2,
    epochs: Annotated[int, typer.Option(help="Dense training epochs (unless swept).")] = 10,
    lr: Annotated[float, typer.Option(help="Dense peak learning rate (unless swept).")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Batch size (unless swept).")] = 128,
    optimizer: Annotated[str, typer.Option(help="sgd, adamw, sam or sam-adamw (sam* for --temperature sam-rho).")]
    = "sgd",
    finetune_epochs: Annotated[int, typer.Option(help="Recovery epochs of every pruned model.")] = 10,
    finetune_lr: Annotated[float, typer.Option(help="Recovery peak learning rate (SGD, cosine).")] = 0.1,
    recovery_temperature: Annotated[bool, typer.Option(help="The temperature also sets the recovery (its epochs, "
                                                            "lr, batch size or SAM radius), as the paper's code.")]
    = False,
    dense_seed: Annotated[int, typer.Option(help="Seed of the dense models (one-mask pairing); another value "
                                                  "replicates the diagram.")] = 0,
    allocation: Annotated[str, typer.Option(help="How the sparsity is split over layers.")] = "global",
    pairing: Annotated[str, typer.Option(help=f"{' or '.join(PAIRINGS)}: one dense model and mask recovered with "
                                               "several seeds (the paper's), or dense models of several seeds.")]
    = "one-mask",
    scratch: Annotated[bool, typer.Option(help="Also train each cell's mask from scratch (Rethinking, scratch-E).")]
    = False,
    epsilon: Epsilon = DEFAULT_EPSILON,
    delta: Delta = DEFAULT_DELTA,
    start: Annotated[float | None, typer.Option(help="Temperature the advice starts from [middle of the grid].")]
    = None,
    workers: Workers = 1,
    executor: ExecutorKind = None,
    storage: Storage = None,
    study_name: StudyName = "regimes",
    ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = 0.0,
    heartbeat_interval: HeartbeatInterval = HEARTBEAT_INTERVAL,
    grace_period: GracePeriod = GRACE_PERIOD,
    out: Annotated[Path, typer.Option(help="Output directory; rerunning with the same one resumes.")]
    = Path("regimes-out"),
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the train/val split.")] = 0,
) -> None:
    """Phase diagram of temperature × density: error, mode connectivity, CKA and regime per cell."""
    if ctx.invoked_subcommand is not None:
        return
    settings = RegimeSettings(
        model=model, data=data, data_dir=data_dir, limit_train=limit_train, temperature=temperature,
        values=numbers("--values", values), densities=numbers("--densities", densities), seeds=seeds,
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr, allocation=allocation, pairing=pairing, scratch=scratch, seed=seed, device=device,
        recovery_temperature=recovery_temperature, dense_seed=dense_seed,
    )
    with console.status("regime study") as status:
        summary = study(settings, out, workers=workers, epsilon=epsilon, delta=delta, start=start,
                        on_job=lambda key, done, total: status.update(f"regime study: {done}/{total} jobs ({key})"),
                        storage=storage, study_name=study_name, executor_kind=executor, ray_address=ray_address,
                        gpus_per_worker=gpus_per_worker, heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period)
    dataset = dataset_of(settings)
    spec = model_spec_of(settings, dataset)
    prunable = print_prunable(spec_share(spec))
    doc = document("regimes", settings.identity() | {"workers": workers, "executor": executor, "storage": storage,
                                                      "study_name": study_name, "epsilon": epsilon, "delta": delta},
                   model=spec, dataset=dataset.spec, prunable=prunable, regimes=summary)
    rows = [{k: v for k, v in c.items() if k not in ("pairs", "errors")} for c in summary["cells"]]
    plots = _plots(out, summary)
    _write(out, doc, rows)
    columns = ["T", "density", "dense err", "pruned err (±sd)", "loss", "mc (±sd)", "CKA out", "CKA feat", "regime",
               "scratch-E err"]
    console.print(listing_table(f"{model} on {data}: {temperature} × density, {seeds} models per cell (val)",
                                columns, _cell_rows(summary)))
    for a in summary["advice"]:
        console.print(f"• {_advice_sentence(a, temperature)}", highlight=False)
    console.print(f"wrote {out / 'result.json'}, {out / 'regimes.csv'}, {out / 'report.html'} and "
                  f"{', '.join(str(p) for p in plots)}", highlight=False)


@app.command("select")
def select_command(
    files: Annotated[list[Path] | None, typer.Argument(help="The family's checkpoints.", show_default=False)] = None,
    checkpoints: Annotated[bool, typer.Option("--checkpoints", help="The checkpoint files follow (a.pt b.pt ...).")]
    = False,
    density: Annotated[float, typer.Option(help="Density (fraction of weights kept) in (0, 1].")] = 0.1,
    seeds: Annotated[int, typer.Option(help="Recovery seeds per checkpoint (at least 2).")] = 2,
    finetune_epochs: Annotated[int, typer.Option(help="Recovery epochs.")] = 10,
    finetune_lr: Annotated[float, typer.Option(help="Recovery peak learning rate.")] = 0.1,
    allocation: Annotated[str, typer.Option(help="How the sparsity is split over layers.")] = "global",
    epsilon: Epsilon = DEFAULT_EPSILON,
    delta: Delta = DEFAULT_DELTA,
    data_dir: Annotated[str | None, typer.Option(help="Folder with the dataset files.")] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("regimes-select"),
    device: Device = "auto",
    trust_factory: Annotated[bool, typer.Option(help="Import a package.module:function factory named in the "
                                                     "checkpoints (that runs its code): only for files you trust.")]
    = False,
) -> None:
    """Choose, from regime metrics, the dense checkpoint that prunes best at --density."""
    del checkpoints  # only marks where the files start
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a directory")
    with console.status("measuring the family") as status:
        result = select(files or [], density, out, seeds=seeds, finetune_epochs=finetune_epochs,
                        finetune_lr=finetune_lr, allocation=allocation, epsilon=epsilon, delta=delta,
                        data_dir=data_dir, device=device, trust_factory=trust_factory,
                        on_member=lambda done, total: status.update(f"measuring the family: {done}/{total}"))
    settings = {"checkpoints": [str(f) for f in files or []], "density": density, "seeds": seeds,
                "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr, "allocation": allocation,
                "epsilon": epsilon, "delta": delta}
    write_json(out / "result.json", document("regimes-select", settings, select=result))
    rows = [[("→ " if i == result["chosen"] else "") + m["checkpoint"], _pct(m["dense_error"]),
             _pm(m["error"], m["error_std"], ".2%"), f"{m['mc']:+.3f}", f"{m['cka_outputs']:.3f}", m["regime"]]
            for i, m in enumerate(result["members"])]
    console.print(listing_table(f"family at density {density:g} (val)", ["checkpoint", "dense err",
                                "pruned err (±sd)", "mc", "CKA out", "regime"], rows))
    chosen = result["members"][result["chosen"]]
    console.print(f"• the regime rule chooses {chosen['checkpoint']} (regime {chosen['regime']}): pruned val error "
                  f"{result['chosen_error']:.2%}, rank {result['rank']} of {len(result['members'])}; family best "
                  f"{result['best_error']:.2%}, median {result['median_error']:.2%}", highlight=False)
    console.print(f"wrote {out / 'result.json'}")
