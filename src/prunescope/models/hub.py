"""Models from the ecosystem: ``hf:DIR``, ``timm:NAME`` and ``torchvision:NAME``, each an optional extra.

- ``hf:DIR``: a directory written by ``save_pretrained`` (or holding just a ``config.json``).
  The class is the one ``transformers`` registers for the configuration under a task prunescope
  serves (sequence or image classification, causal language modelling), named by the config's
  ``architectures`` or ``--model-arg architecture=…``; other ``--model-arg`` options set attributes
  of the configuration (``n_layer=2``). A classifier's ``num_labels`` is set to the data's number
  of classes (a pretrained head of another width is initialised afresh). Weights in the directory
  (safetensors, or a state dict read as tensors only) are loaded when the model is built for a
  command; without them, or when rebuilt from a spec (a checkpoint then supplies the weights), the
  model is initialised from the configuration. Never ``trust_remote_code``, never a download
  (``local_files_only``, ``HF_HUB_OFFLINE`` during the call).
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=…, in_chans=…)``.
- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, num_classes=…)``.

Every model is adapted to return logits (:func:`prunescope.models.adapters.as_logits`); its
parameters keep their library's names. Starting weights of any model come from ``--weights FILE``
(:func:`prunescope.models.weights.load_weights`). A name is looked up in the library's registry,
never imported, so a checkpoint naming one needs no trust (see :mod:`prunescope.trust`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from prunescope.errors import PrunescopeError, UsageError
from prunescope.models.adapters import as_logits
from prunescope.trust import HUB_SOURCES

# Tasks of transformers' auto mappings that prunescope builds, and whether a task's head is sized by num_classes.
_HF_TASKS = {
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING": True,
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING": True,
    "MODEL_FOR_CAUSAL_LM_MAPPING": False,
}
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_REFUSED = {"hf": ("trust_remote_code",), "timm": ("pretrained", "pretrained_cfg_overlay", "checkpoint_path"),
            "torchvision": ("weights",)}


def _one_line(error: BaseException) -> str:
    return (f"{type(error).__name__}: {error}".strip().splitlines() or [type(error).__name__])[0]


def _extra(module: str, source: str) -> ModuleType:
    """Import the optional library behind ``source``; a one-line UsageError naming the extra when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--model {source}:… needs the optional extra: pip install 'prunescope[{source}]'") from None
    except Exception as error:  # e.g. a torchvision built for another torch
        raise UsageError(f"--model {source}:… cannot import {module} ({_one_line(error)}): install the extra matching "
                         f"this torch: pip install 'prunescope[{source}]'") from None


def split(name: str) -> tuple[str, str]:
    """``"hf:DIR"`` → ``("hf", "DIR")``; a UsageError for an empty part."""
    source, _, what = name.partition(":")
    if source not in HUB_SOURCES or not what:
        raise UsageError(f"model {name!r} is not <source>:<name> with a source among {', '.join(HUB_SOURCES)}")
    return source, what


def _refuse_options(source: str, options: dict[str, Any]) -> None:
    for key in _REFUSED[source]:
        if key in options:
            raise UsageError(f"--model-arg {key} is refused for {source}: models: prunescope never downloads nor runs "
                             "code from a model directory; give starting weights with --weights FILE")


# --------------------------------------------------------------------------- Hugging Face


@contextlib.contextmanager
def _offline_and_quiet() -> Iterator[ModuleType]:
    """transformers imported and called with no network (HF_HUB_OFFLINE) and without its progress bars or
    info logs; the environment and transformers' logging are restored after."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        transformers = _extra("transformers", "hf")
        logging = transformers.utils.logging
        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        try:
            yield transformers
        finally:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hf_directory(what: str) -> Path:
    path = Path(what).expanduser()
    if not path.is_dir():
        raise UsageError(f"--model hf:{what}: no such directory: give a folder written by save_pretrained")
    if not (path / "config.json").is_file():
        raise UsageError(f"--model hf:{what} has no config.json: give a folder written by save_pretrained, or one "
                         "holding the model's config.json")
    return path


def _hf_config(transformers: ModuleType, path: Path, options: dict[str, Any]) -> Any:
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as error:  # unknown model_type, code the directory asks to run, malformed JSON, ...
        raise UsageError(f"--model hf:{path}: cannot read its config.json ({_one_line(error)})") from None
    for key, value in options.items():
        if not hasattr(config, key):
            raise UsageError(f"--model hf:{path}: its {type(config).__name__} has no setting {key!r} "
                             "(--model-arg sets attributes of config.json)")
        setattr(config, key, value)
    return config


def _hf_class(transformers: ModuleType, config: Any, architecture: str | None, path: Path) -> tuple[type, bool]:
    """The model class for ``config`` named ``architecture`` (else the config's ``architectures[0]``), among the
    classes transformers registers for the config's type under prunescope's tasks; and whether its head is sized
    by the number of classes."""
    named = architecture or next(iter(getattr(config, "architectures", None) or ()), None)
    registered: dict[str, tuple[type, bool]] = {}
    for mapping, by_classes in _HF_TASKS.items():
        with contextlib.suppress(KeyError, ValueError, AttributeError):
            classes = getattr(transformers, mapping)[type(config)]
            for cls in classes if isinstance(classes, (tuple, list)) else (classes,):
                registered[cls.__name__] = (cls, by_classes)
    choices = ", ".join(registered) or "none for this model type"
    if named is None:
        raise UsageError(f"--model hf:{path}: config.json names no architecture: add \"architectures\": [...] to it, "
                         f"or pass --model-arg architecture=NAME (one of: {choices})")
    if named not in registered:
        raise UsageError(f"--model hf:{path}: unknown architecture {named!r} for model type "
                         f"{getattr(config, 'model_type', '?')!r}: prunescope builds {choices}")
    return registered[named]


def _has_weights(path: Path) -> bool:
    return any((path / name).is_file() for name in _HF_WEIGHTS)


def _check_language_model(path: Path, config: Any, input_shape: tuple[int, ...], vocabulary: int) -> None:
    """A causal LM must have a position for every token of a block and an embedding for every token id."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if len(input_shape) == 1 and positions is not None and input_shape[0] > positions:
        raise UsageError(f"--model hf:{path} has {positions} positions, fewer than the data's blocks of "
                         f"{input_shape[0]} tokens: give --data-arg block={positions} or less")
    size = getattr(config, "vocab_size", None)
    if len(input_shape) == 1 and size is not None and vocabulary > size:
        raise UsageError(f"the data has {vocabulary} token ids but --model hf:{path} embeds {size}: tokenise with "
                         "the model's own tokenizer (--data-arg tokenizer=DIR)")


def _hf(what: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any], pretrained: bool
        ) -> nn.Module:
    path = _hf_directory(what)
    options = dict(options)
    architecture = options.pop("architecture", None)
    with _offline_and_quiet() as transformers:
        config = _hf_config(transformers, path, options)
        cls, by_classes = _hf_class(transformers, config, architecture, path)
        if not by_classes:
            _check_language_model(path, config, input_shape, num_classes)
        resized = by_classes and config.num_labels != num_classes
        if by_classes:
            config.num_labels = num_classes
        if not (pretrained and _has_weights(path)):
            return cls(config)
        try:
            model = cls.from_pretrained(str(path), config=config, local_files_only=True, trust_remote_code=False,
                                        ignore_mismatched_sizes=resized)
        except Exception as error:  # weights of another shape, a damaged file, ...
            raise UsageError(f"--model hf:{path}: its weights do not load ({_one_line(error)})") from None
    return model.float()  # prunescope computes in float32, whatever dtype the directory stores


def _hf_check(what: str, options: dict[str, Any]) -> str:
    """The canonical name (absolute directory) of ``hf:what``, checked without building the model."""
    path = _hf_directory(what)
    options = dict(options)
    architecture = options.pop("architecture", None)
    with _offline_and_quiet() as transformers:
        _hf_class(transformers, _hf_config(transformers, path, options), architecture, path)
    return f"hf:{path.resolve()}"


# --------------------------------------------------------------------------- timm and torchvision


def _timm(what: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any], _pretrained: bool
          ) -> nn.Module:
    timm = _timm_check(what)
    call = {"pretrained": False, "num_classes": num_classes, **({"in_chans": input_shape[0]} if len(input_shape) == 3
                                                                else {}), **options}
    return _called(f"timm model {what!r}", lambda: timm.create_model(what, **call), call)


def _timm_check(what: str) -> ModuleType:
    timm = _extra("timm", "timm")
    if not timm.is_model(what):
        raise UsageError(f"unknown timm model {what!r}: choose one of timm.list_models()")
    return timm


def _torchvision(what: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any],
                 _pretrained: bool) -> nn.Module:
    models = _torchvision_check(what)
    call = {"weights": None, "num_classes": num_classes, **options}
    return _called(f"torchvision model {what!r}", lambda: models.get_model(what, **call), call)


def _torchvision_check(what: str) -> ModuleType:
    models = _extra("torchvision.models", "torchvision")
    if what not in models.list_models():
        raise UsageError(f"unknown torchvision model {what!r}: choose one of torchvision.models.list_models()")
    return models


def _called(what: str, build: Callable[[], Any], call: dict[str, Any]) -> nn.Module:
    try:
        model = build()
    except Exception as error:  # the library refusing an option or a shape is the user's input
        shown = ", ".join(f"{k}={v!r}" for k, v in call.items())
        raise PrunescopeError(f"{what} failed when built with {shown}: {_one_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise UsageError(f"{what} built a {type(model).__name__}, not a torch.nn.Module")
    return model


_BUILDERS = {"hf": _hf, "timm": _timm, "torchvision": _torchvision}


def canonical(name: str, options: dict[str, Any]) -> str:
    """``name`` as a spec records it, checked (extra installed, directory or name known) without building:
    ``hf:`` with the directory made absolute, so that the spec rebuilds from anywhere."""
    source, what = split(name)
    _refuse_options(source, options)
    if source == "hf":
        return _hf_check(what, options)
    (_timm_check if source == "timm" else _torchvision_check)(what)
    return name


def build_hub(name: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any], *,
              pretrained: bool = True) -> nn.Module:
    """The model ``name`` (``hf:DIR``, ``timm:NAME``, ``torchvision:NAME``) for inputs (N, *input_shape) and
    ``num_classes`` classes, adapted to return logits. ``pretrained``: load the weights an ``hf:`` directory holds
    (False: initialise from its config, as when rebuilt from a spec)."""
    source, what = split(name)
    _refuse_options(source, options)
    model = _BUILDERS[source](what, tuple(input_shape), num_classes, dict(options), pretrained)
    return as_logits(model)
