"""Export a (physically pruned) model as a :mod:`torch.export` file that loads without prunescope.

A structurally pruned model has layer shapes its prunescope model spec cannot describe
without prunescope itself, so it is also saved as the program :func:`torch.export.export`
captures: the graph of ATen operators plus the weights, in one ``.pt2`` zip archive
written by :func:`torch.export.save`. Anyone with PyTorch runs it with (torch.export's
file format still changes between releases: use the version in ``torch_version``)::

    extra = {"prunescope.json": ""}
    program = torch.export.load("model.pt2", extra_files=extra)
    logits = program.module()(images)            # images: (N, *input_shape), any N >= 1
    metadata = json.loads(extra["prunescope.json"])

The batch dimension is dynamic (any N >= 1) when torch.export can capture it so; for a
model whose code fixes the batch (e.g. slices a buffer by it), the program is captured with
a static batch of ``STATIC_BATCH`` instead and ``"batch"`` in the metadata says which
(``"dynamic"`` or the number), with ``"batch_reason"`` saying why. The other dimensions are
fixed to ``input_shape``. The graph is captured in eval mode (BatchNorm uses its running statistics,
dropout is off) on the CPU; :func:`load_exported` moves it to another device.

Metadata (``prunescope.json`` inside the archive, a JSON object)::

    {"format": "prunescope-export", "version": 1,
     "input_shape": [C, H, W],                 # one sample, no batch dimension
     "torch_version": "2.13.0",                # the PyTorch that wrote the file
     "model_spec": {...},                      # the DENSE model (prunescope.models.model_spec)
     "num_classes": int,
     "removal": {group: [channel indices]},    # channels removed, as indices of the dense groups
     ...}                                      # callers may add more keys

:func:`export_model` always writes ``format``, ``version``, ``input_shape`` and ``torch_version``; the other
keys are the caller's (``prunescope prune --granularity channel --export`` writes them all).

Safety: unlike a prunescope checkpoint (``torch.load(weights_only=True)``), a
``torch.export`` file CAN run code when loaded, so load only files you made or trust.
PyTorch's docs for :func:`torch.export.load` say "uses pickle under the hood ... Never
load data from an untrusted source", and its source (torch 2.13,
``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``) reads
tensors flagged ``use_pickle`` with ``torch.load(weights_only=False)``, opaque constants
with ``pickle.loads``, sample inputs with a fallback to ``weights_only=False``, and parses
symbolic shape expressions with ``sympy.sympify`` (which evaluates the string as Python).
The files prunescope writes take none of the unsafe paths (tensors are raw bytes, sample
inputs load with ``weights_only=True``), but a crafted file can.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import types
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.passes import move_to_device_pass

from prunescope.checkpoint import load_checkpoint
from prunescope.device import resolve_device
from prunescope.errors import PrunescopeError, UsageError
from prunescope.io import atomic_write, parse_json
from prunescope.models import build_from_spec, spec_difference
from prunescope.trust import Trust, check_spec

FORMAT = "prunescope-export"
VERSION = 1
METADATA_FILE = "prunescope.json"
# torch.export specialises a dimension traced at size 1 to the constant 1: trace a batch of 2.
_TRACE_BATCH = 2
STATIC_BATCH = 1  # the batch of an export whose batch cannot be dynamic
_HOW_TO_WRITE = "write one with prunescope prune --granularity channel --export FILE.pt2"


@dataclass
class Exported:
    """A loaded export: ``module`` maps (N, *input_shape) to the model's output; ``metadata`` is prunescope.json."""

    module: nn.Module
    metadata: dict[str, Any]


@dataclass
class ModelFile:
    """A model read from a file to be run: an exported archive or a prunescope checkpoint.

    ``module`` maps (N, *input_shape) to the output. ``dense_spec``: the dense architecture the
    model was pruned from (an export's ``model_spec``; a channel-pruned checkpoint's spec
    without ``removed_channels``), None when the file does not say or the model is itself
    dense. ``exported``: the module is a torch.export graph, else an eager module.
    ``architecture``: the spec of the dense architecture the model is (or was pruned from),
    None when the file does not say.
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    dense_spec: dict[str, Any] | None
    exported: bool
    static_batch: int | None = None  # an export captured for this batch size only
    architecture: dict[str, Any] | None = None


def export_program(model: nn.Module, input_shape: Sequence[int]) -> ExportedProgram:
    """Capture ``model`` in eval mode for inputs ``(N, *input_shape)``, any batch size N >= 1 if possible.

    Traced on zeros on the model's device and in its floating dtype; the model's training
    flags are restored afterwards. When a dynamic batch cannot be captured (the model's
    code fixes it), the program is captured for a batch of ``STATIC_BATCH``;
    :func:`static_batch` tells which. Raises PrunescopeError, naming the cause, for a model
    torch.export cannot capture at all (e.g. Python control flow on tensor values).
    """
    try:
        return _capture(model, input_shape, _TRACE_BATCH, dynamic=True)
    except Exception as error:  # torch.export raises many kinds: report the first line
        dynamic_error = error
    try:
        program = _capture(model, input_shape, STATIC_BATCH, dynamic=False)
    except Exception as error:
        raise PrunescopeError(
            f"torch.export cannot capture the model, neither for any batch size ({_first_line(dynamic_error)}) "
            f"nor for batch {STATIC_BATCH} ({_first_line(error)})"
        ) from error
    program.prunescope_batch_reason = _first_line(dynamic_error)  # read by export_model
    return program


def _capture(model: nn.Module, input_shape: Sequence[int], batch_size: int, *, dynamic: bool) -> ExportedProgram:
    parameter = next(model.parameters(), None)
    example = torch.zeros(
        (batch_size, *input_shape),
        device=parameter.device if parameter is not None else "cpu",
        dtype=parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32,
    )
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with warnings.catch_warnings():
            # nn.LSTM re-assigns its flat weight list in forward; the captured graph reads the
            # registered parameters all the same (the outputs match), so the warning is noise.
            warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
            return torch.export.export(model, (example,), dynamic_shapes=shapes)
    finally:
        for module, training in modes:
            module.training = training


def static_batch(program: ExportedProgram) -> int | None:
    """The batch size ``program`` is fixed to, or None when its batch dimension is dynamic."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    size = node.meta["val"].shape[0]
    return size if isinstance(size, int) else None


def exported_module(
    model: nn.Module, input_shape: Sequence[int], device: str | torch.device | None = None
) -> nn.Module:
    """``model`` as the graph module a file from :func:`export_model` would load to, without writing one.

    Runs the way an exported file does (same per-call overhead), e.g. to time a dense
    reference fairly against an exported pruned model. ``device`` as in :func:`load_exported`.
    """
    return _runnable(export_program(model, input_shape), device)


def export_model(
    model: nn.Module, input_shape: Sequence[int], path: str | os.PathLike[str], metadata: dict[str, Any]
) -> Path:
    """Write ``model`` as a torch.export archive with ``metadata`` in ``prunescope.json``; returns the path.

    ``input_shape``: one sample, no batch dimension. The program is saved on the CPU and the
    file written atomically. ``metadata`` must be JSON-serialisable; ``format``, ``version``,
    ``input_shape`` and ``torch_version`` are set here (see the module docstring for the rest).
    """
    shape = [int(d) for d in input_shape]
    captured = export_program(model, shape)
    fixed = static_batch(captured)
    document = {
        **metadata,
        "format": FORMAT,
        "version": VERSION,
        "input_shape": shape,
        "torch_version": torch.__version__,
        "batch": "dynamic" if fixed is None else fixed,
    }
    if fixed is not None:
        document["batch_reason"] = getattr(captured, "prunescope_batch_reason", "")
    extra = {METADATA_FILE: json.dumps(document)}
    program = move_to_device_pass(captured, "cpu")  # loadable without a GPU
    return atomic_write(path, lambda file: torch.export.save(program, file, extra_files=extra))


def is_exported(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a zip archive laid out by torch.export.save (a ``pt2`` archive with a model).

    Reads only the zip directory and the 3-byte ``archive_format`` entry: cheap on big files.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            marker = next((n for n in names if n.count("/") == 1 and n.endswith("/archive_format")), None)
            if marker is None or archive.read(marker) != b"pt2":
                return False
            root = marker.split("/")[0]
            return any(n.startswith(f"{root}/models/") and n.endswith(".json") for n in names)
    except (OSError, zipfile.BadZipFile, KeyError):
        return False


def load_exported(
    path: str | os.PathLike[str], device: str | torch.device | None = None, *, trusted: bool = False
) -> Exported:
    """Load a file written by :func:`export_model`, onto ``device`` (auto, cpu, cuda...; None: the CPU).

    Give the device here rather than calling ``module.to(device)``: that moves the weights but
    not devices written into the graph (an LSTM's initial state is created on the CPU).

    ``module`` is ``ExportedProgram.module()``, except that ``module.eval()`` is allowed (a
    no-op: the graph was captured in eval mode) so that code which puts a model in eval mode
    before running it works; ``module.train()`` still raises NotImplementedError.
    ``torch.export.load`` can run code from a crafted file (see the module docstring), so
    the file is read only with ``trusted=True``: a file you wrote yourself. Otherwise reload
    the prunescope checkpoint (``weights_only=True``) instead.

    Raises UsageError for a missing file, a file that is not a torch.export archive, a damaged
    one, one without prunescope metadata or of another format version, or an unusable device.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"exported model {path} does not exist: check the path, or {_HOW_TO_WRITE}")
    if not is_exported(path):
        raise UsageError(f"{path} is not a torch.export archive (.pt2 zip from torch.export.save): {_HOW_TO_WRITE}")
    if not trusted:
        raise UsageError(
            f"{path} is a torch.export archive, whose loader can run code from a crafted file: pass --trust-export "
            "(trusted=True) if you wrote it, or use the prunescope checkpoint (model.pt, loaded with weights_only=True)"
        )
    target = resolve_device(device) if device is not None else None
    extra = {METADATA_FILE: ""}
    try:
        with _quiet_torch_export(), path.open("rb") as file:  # a file object: torch warns on names not ending .pt2
            program = torch.export.load(file, extra_files=extra)
    except Exception as error:  # damage surfaces as RuntimeError, OSError, JSONDecodeError, KeyError...
        raise UsageError(
            f"{path} is a damaged torch.export archive ({type(error).__name__}): re-export it; {_HOW_TO_WRITE}"
        ) from error
    return Exported(_runnable(program, target), _metadata(path, extra[METADATA_FILE]))


def max_output_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between ``a(x)`` and ``b(x)`` (same units as the outputs, e.g. logits).

    Both run as they are, under ``torch.no_grad``: put ordinary modules in eval mode first.
    """
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def load_model_file(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    trust_export: bool = False,
    trust_factory: bool = False,
    model_args: Mapping[str, Any] | None = None,
) -> ModelFile:
    """An exported archive (by content, or by a ``.pt2`` name) via :func:`load_exported` on ``device``
    (only with ``trust_export``), else a prunescope checkpoint via
    :func:`prunescope.checkpoint.load_checkpoint` (CPU, eval mode). A model factory named in
    the file is imported only with ``trust_factory`` (see :mod:`prunescope.trust`);
    ``model_args`` replace a checkpoint's stored factory arguments (``--model-arg``).

    Raises UsageError, naming the path, for a file that is neither.
    """
    path = Path(path)
    if is_exported(path) or path.suffix == ".pt2":
        loaded = load_exported(path, device, trusted=trust_export)
        shape = tuple(loaded.metadata["input_shape"])
        dense_spec = loaded.metadata.get("model_spec")
        if dense_spec is not None:  # rebuilt later as the dense reference
            check_spec(dense_spec, "model", f"exported model {path}", Trust(everything=trust_factory))
        batch = loaded.metadata.get("batch")
        return ModelFile(loaded.module, shape, dense_spec, exported=True,
                         static_batch=batch if isinstance(batch, int) else None, architecture=dense_spec)
    saved = load_checkpoint(path, trust_factory=trust_factory, model_args=model_args)
    spec = saved.model_spec
    architecture = {k: v for k, v in spec.items() if k != "removed_channels"}
    dense_spec = architecture if spec.get("removed_channels") else None
    return ModelFile(saved.model, tuple(spec["input_shape"]), dense_spec, exported=False, architecture=architecture)


def dense_reference(
    model: ModelFile,
    dense: str | os.PathLike[str] | None,
    device: str | torch.device | None = None,
    *,
    trust_export: bool = False,
    trust_factory: bool = False,
) -> ModelFile | None:
    """The dense model to time ``model`` against: file ``dense``, else ``model.dense_spec`` rebuilt, else None.

    The rebuilt model has freshly initialised weights, which do not change its latency.
    Raises UsageError if ``dense`` takes another input shape, is another architecture (another
    model name or model argument: a speed-up over it says nothing about pruning) or the spec
    cannot be rebuilt here.
    """
    if dense is not None:
        reference = load_model_file(dense, device, trust_export=trust_export, trust_factory=trust_factory)
        if reference.input_shape != model.input_shape:
            raise UsageError(
                f"dense model {dense} takes inputs of shape {reference.input_shape} but the model "
                f"takes {model.input_shape}: compare models of the same input"
            )
        if model.architecture is not None and reference.architecture is not None and (
            difference := spec_difference(reference.architecture, model.architecture)
        ):
            raise UsageError(f"dense model {dense} is another architecture than the model's ({difference}): "
                             "compare with the dense model it was pruned from")
        return reference
    if model.dense_spec is None:
        return None
    try:
        rebuilt = build_from_spec(model.dense_spec).eval()
    except UsageError as error:  # e.g. a model factory that cannot be imported here
        raise UsageError(f"cannot rebuild the dense model to compare with ({error}): pass --dense FILE") from error
    return ModelFile(rebuilt, model.input_shape, None, exported=False)


def comparable_modules(
    model: ModelFile, reference: ModelFile | None, device: str | torch.device
) -> tuple[nn.Module, nn.Module | None]:
    """``model`` and ``reference`` as modules to time alike: both as torch.export graphs if either is one.

    A graph module spends more per call than an eager one (guards, generated Python; on a CPU
    about 30% more for ResNet-20 at batch 1), which would bias a speed-up. Converted graphs
    are placed on ``device``.
    """
    if reference is None or model.exported == reference.exported:
        return model.module, reference.module if reference is not None else None
    graphs = [m.module if m.exported else exported_module(m.module, m.input_shape, device) for m in (model, reference)]
    return graphs[0], graphs[1]


def _runnable(program: ExportedProgram, device: torch.device | str | None) -> nn.Module:
    """``program.module()`` on ``device`` (None: where it is), with ``eval()`` allowed."""
    if device is not None:
        # Moves the weights and the devices written into the graph (e.g. an LSTM's zero
        # initial state); Module.to() on the graph module would move only the weights.
        program = move_to_device_pass(program, device)
    module = program.module()
    module.train = types.MethodType(_train_eval_only, module)
    module.eval = types.MethodType(lambda self: self.train(False), module)
    return module


def _train_eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    """``Module.train`` for a graph captured in eval mode: eval is a no-op, training is refused."""
    if mode:
        raise NotImplementedError(  # as torch.export's own module does: the graph has no training mode
            "an exported model is frozen in eval mode and cannot be trained: fine-tune the prunescope checkpoint"
        )
    return nn.Module.train(self, False)


def _metadata(path: Path, text: str) -> dict[str, Any]:
    """prunescope.json of archive ``path``, checked; UsageError if absent, unreadable or of another version."""
    if not text:
        raise UsageError(
            f"{path} is a torch.export archive but not a prunescope export (no {METADATA_FILE}): {_HOW_TO_WRITE}"
        )
    try:
        metadata = parse_json(text, METADATA_FILE)
    except UsageError:
        raise UsageError(f"{path} has a damaged {METADATA_FILE}: re-export it; {_HOW_TO_WRITE}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise UsageError(f"{path} is a torch.export archive but not a prunescope export: {_HOW_TO_WRITE}")
    if metadata.get("version") != VERSION:
        raise UsageError(
            f"{path} has prunescope export version {metadata.get('version')!r}, but this prunescope "
            f"reads version {VERSION}: use the prunescope version that wrote it"
        )
    shape = metadata.get("input_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 1 for d in shape)):
        raise UsageError(f"{path} has no valid input_shape in {METADATA_FILE}: re-export it; {_HOW_TO_WRITE}")
    return metadata


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """Silence torch.export's logger: on a damaged file it logs a traceback before raising."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
