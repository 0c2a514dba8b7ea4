"""Which ``package.module:function`` factories named in a file may be imported.

A model or dataset name with a colon is a factory: importing it runs the module's code and
calling it runs the function with arguments from the same place. A checkpoint, a scan or
pick file, a stage cache or an exported model's metadata can come from anybody, so a
factory named there is never imported unless the user vouches for it:

- the user named the same factory themselves (``--model``/``--data`` on the command line, a
  name passed in Python), or
- the user passed ``--trust-factory`` (``trust_factory=True`` in Python); each factory then
  imported is said on stderr first.

Zoo models and built-in datasets (names without a colon) need no trust: building them runs
only prunescope's own code. Nor do the model sources of the ecosystem (:data:`HUB_SOURCES`), whose
names are data, not code paths: ``hf:DIR`` reads a directory's ``config.json`` (and weights as
tensors only) and builds the class ``transformers`` registers for that configuration, never code
from the directory (``trust_remote_code`` is always off); ``timm:NAME`` / ``torchvision:NAME`` look
a name up in the installed library's registry of models. Nothing named in a file is imported.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from prunescope.errors import UsageError

TrustFactory = bool | Collection[str]
"""``trust_factory`` arguments: True trusts every factory, a collection those names, False none."""


HUB_SOURCES = ("hf", "timm", "torchvision")
"""Model names ``<source>:<what>`` built from the ecosystem (:mod:`prunescope.models.hub`), not imported."""


def is_hub(name: str) -> bool:
    """Whether a model ``name`` is ``hf:DIR``, ``timm:NAME`` or ``torchvision:NAME``."""
    return name.partition(":")[0] in HUB_SOURCES and ":" in name


def is_factory(name: str, kind: str = "model") -> bool:
    """Whether a model or dataset (``kind``) ``name`` is a ``package.module:function`` factory (a model source of
    :data:`HUB_SOURCES` is not; a dataset name with a colon always is)."""
    return ":" in name and not (kind == "model" and is_hub(name))


@dataclass(frozen=True)
class Trust:
    """The factories that may be imported when named in a file."""

    everything: bool = False  # the user passed --trust-factory
    names: frozenset[str] = frozenset()  # factories the user named themselves

    @classmethod
    def of(cls, trust_factory: TrustFactory | Trust) -> Trust:
        if isinstance(trust_factory, Trust):
            return trust_factory
        if isinstance(trust_factory, bool):
            return cls(everything=trust_factory)
        if isinstance(trust_factory, str):  # one name, not a collection of its characters
            return cls(names=frozenset({trust_factory}))
        return cls(names=frozenset(trust_factory))

    @classmethod
    def of_specs(cls, *specs: Mapping[str, Any] | None) -> Trust:
        """Trust the factories named by specs the user built (e.g. from their own ``--model``)."""
        return cls(names=frozenset(s["name"] for s in specs if s and isinstance(s.get("name"), str)))


def check_spec(spec: Any, kind: str, source: object, trust: Trust) -> None:
    """Raise UsageError unless ``spec`` (a model or dataset spec read from ``source``) may be built.

    ``kind`` is "model" or "dataset". Any spec whose name is not a string is refused as damaged.
    A factory named in the file is refused unless ``trust`` covers it; with ``--trust-factory``
    the import is announced on stderr, since the user may not have read the file.
    """
    if not isinstance(spec, Mapping):
        raise UsageError(f"{source} is damaged: its {kind} spec is a {type(spec).__name__}, not an object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"{source} is damaged: its {kind} spec has no name (got {name!r})")
    if not is_factory(name, kind) or name in trust.names:
        return
    if not trust.everything:
        raise UsageError(
            f"{source} names the {kind} factory {name!r}, which prunescope does not import from a file "
            f"(it would run that code): pass --trust-factory if you trust this file"
        )
    print(f"--trust-factory: importing {kind} factory {name!r} named in {source}", file=sys.stderr)
