"""Models: the log-weight protocol, its encoder/prior/decoder base class, built-in architectures.

See :mod:`evalkit.models.base` for the protocol every model follows, :mod:`evalkit.models.checkpoints`
for loading and saving, :mod:`evalkit.models.discrete` for the image decoders (torch Distributions).

May import :mod:`evalkit.errors` and :mod:`evalkit.atomic`; nothing else of evalkit.
"""
from .base import EncoderDecoderModel, LatentVariableModel, ModelCheck, check_model
from .bnn import BayesianMLP
from .conv import ConvVAE
from .iwae import IWAE
from .linear_gaussian import LinearGaussianModel
from .parameterisation import diagonal_normal
from .vae import MLPVAE

BUILTIN_MODELS = {cls.__name__: cls for cls in (MLPVAE, IWAE, LinearGaussianModel, BayesianMLP, ConvVAE)}
"""Built-in model classes by the name stored in evalkit checkpoints."""

__all__ = [
    "BUILTIN_MODELS",
    "BayesianMLP",
    "ConvVAE",
    "EncoderDecoderModel",
    "IWAE",
    "LatentVariableModel",
    "LinearGaussianModel",
    "MLPVAE",
    "ModelCheck",
    "check_model",
    "diagonal_normal",
]
