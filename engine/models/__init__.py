"""Autoencoders whose encoders expose per-layer feature vectors (`encoder.features(x, layers)`), by name.

Every autoencoder has `.encoder` and `.decoder`, `forward(x) -> reconstruction`; every encoder has
`num_layers`, `layer_dims` (the vector size of each layer) and `features(x, layers) -> list of (B, D_k)`.
Factories take `in_channels` and, when their size depends on the input (MVTec), `input_size` (the side of the
square network input); `engine.trial` passes both from the data.
"""

from engine.models import lenet, mvtec, video  # noqa: F401  (LeNet family, MVTec residual AE, video AE)
from engine.models.registry import create_model, list_models, model_options, register_model

__all__ = ["create_model", "list_models", "model_options", "register_model"]
