"""Autoencoders whose encoders expose per-layer feature vectors (`encoder.features(x, layers)`), by name.

Every autoencoder has `.encoder` and `.decoder`, `forward(x) -> reconstruction`; every encoder has
`num_layers`, `layer_dims` (the vector size of each layer) and `features(x, layers) -> list of (B, D_k)`.
"""

from engine.models import lenet  # noqa: F401  (registers the LeNet family)
from engine.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
