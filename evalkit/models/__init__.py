"""Models: the log-weight protocol, its encoder/prior/decoder base class, built-in architectures.

See :mod:`evalkit.models.base` for the protocol every model follows.
"""
from .base import EncoderDecoderModel, LatentVariableModel
from .conv import ConvVAE
from .iwae import IWAE
from .linear_gaussian import LinearGaussianModel
from .base import check_model
from .vae import MLPVAE

BUILTIN_MODELS = {cls.__name__: cls for cls in (MLPVAE, IWAE, LinearGaussianModel, ConvVAE)}
"""Built-in model classes by the name stored in evalkit checkpoints."""

__all__ = [
    "BUILTIN_MODELS",
    "ConvVAE",
    "EncoderDecoderModel",
    "IWAE",
    "LatentVariableModel",
    "LinearGaussianModel",
    "MLPVAE",
    "check_model",
]
