"""Every registered model: output and per-layer feature shapes, backward pass, no NaN."""

import pytest
import torch

from engine.models import create_model, list_models

# input shape per model for a cheap forward pass; models registered later pick sizes through their options
SMALL_INPUTS = {"lenet_cifar10": (3, 32, 32), "lenet_digits": (1, 8, 8)}


@pytest.mark.parametrize("name", [n for n in list_models() if n in SMALL_INPUTS])
def test_shapes_backward_no_nan(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(4, *SMALL_INPUTS[name])
    rec = model(x)
    assert rec.shape == x.shape
    enc = model.encoder
    layers = tuple(range(enc.num_layers))
    feats = enc.features(x, layers)
    assert [f.shape for f in feats] == [(4, d) for d in enc.layer_dims]
    # order follows the request, and a partial request gives the same vectors
    assert torch.allclose(enc.features(x, (enc.num_layers - 1, 0))[1], feats[0])
    loss = rec.square().mean() + sum(f.square().mean() for f in feats)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(rec).all()


def test_cifar_encoder_matches_reference_size():
    enc = create_model("lenet_cifar10").encoder
    assert sum(p.numel() for p in enc.parameters()) == 520_544  # METHOD.md 2.2, measured on the reference
    assert enc.layer_dims == (32, 64, 128, 128)


def test_conv_features_are_raw_conv_outputs_averaged():
    torch.manual_seed(0)
    enc = create_model("lenet_digits").encoder
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(enc.features(x, (0,))[0], enc.convs[0](x).mean(dim=(2, 3)))


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
