"""Models: the zoo (:mod:`~prunescope.models.zoo`), models by name or spec (:mod:`~prunescope.models.build`), the
ecosystem's (:mod:`~prunescope.models.hub`), their outputs read as logits (:mod:`~prunescope.models.adapters`) and
starting weights from a file (:mod:`~prunescope.models.weights`).

A model name is a zoo name (:func:`available_models`), a user factory
``"package.module:function"``, or ``hf:DIR`` / ``timm:NAME`` / ``torchvision:NAME``;
:func:`model_spec` records how to build one again and :func:`build_from_spec` does it.
"""

from prunescope.models.adapters import as_logits
from prunescope.models.build import build_from_spec, build_model, factory_arguments, model_spec, spec_difference
from prunescope.models.weights import load_weights
from prunescope.models.zoo import MLP, ModelInfo, available_models

__all__ = ["MLP", "ModelInfo", "as_logits", "available_models", "build_from_spec", "build_model",
           "factory_arguments", "load_weights", "model_spec", "spec_difference"]
