"""Models: the zoo (:mod:`~prunescope.models.zoo`) and models by name or spec (:mod:`~prunescope.models.build`).

A model name is either a zoo name (:func:`available_models`) or a user factory
``"package.module:function"``; :func:`model_spec` records how to build one again and
:func:`build_from_spec` does it.
"""

from prunescope.models.build import build_from_spec, build_model, factory_arguments, model_spec
from prunescope.models.zoo import MLP, ModelInfo, available_models

__all__ = ["MLP", "ModelInfo", "available_models", "build_from_spec", "build_model", "factory_arguments",
           "model_spec"]
