"""K packed LeNet autoencoders behave exactly like K separate ones: outputs, features, gradients, BatchNorm
statistics and an Adam step (engine/models/packed.py)."""

import pytest
import torch

from engine.models import create_model
from engine.models.packed import pack, pack_inputs, unpack, unpack_outputs

K = 3
TOL = dict(rtol=1e-5, atol=1e-5)


def _separate(name: str) -> list:
    models = []
    for seed in range(K):  # separately initialised: different weights per model
        torch.manual_seed(seed)
        models.append(create_model(name))
    return models


def _inputs(model, batch: int = 5) -> torch.Tensor:
    enc = model.encoder
    side = enc.final_size * 2 ** len(enc.convs)
    return torch.rand(K, batch, enc.convs[0].in_channels, side, side, generator=torch.Generator().manual_seed(7))


def _losses(reconstruction: torch.Tensor, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
    """A per-model loss touching the reconstruction and every layer: (B, C, H, W), list of (B, D) -> scalar."""
    loss = ((reconstruction - x) ** 2).flatten(1).sum(1).mean()
    return loss + sum(((f - 0.1) ** 2).sum(1).mean() for f in features)


@pytest.mark.parametrize("name", ["lenet_digits", "lenet_cifar10"])
def test_packed_matches_separate_models(name):
    models = _separate(name)
    packed = pack(models)
    assert packed.k == K and not torch.equal(models[0].encoder.fc.weight, models[1].encoder.fc.weight)
    xs = _inputs(models[0])  # (K, B, C, H, W): every model gets its own batch
    layers = tuple(range(models[0].encoder.num_layers))

    # train mode: BatchNorm normalises with batch statistics and updates its running statistics
    sep_out = [m(x) for m, x in zip(models, xs, strict=True)]
    sep_feats = [m.encoder.features(x, layers) for m, x in zip(models, xs, strict=True)]
    packed_in = pack_inputs(xs)
    packed_out = unpack_outputs(packed(packed_in), K)  # (K, B, C, H, W)
    packed_feats = packed.encoder.features(packed_in, layers)  # list of (B, K, D)
    for k in range(K):
        torch.testing.assert_close(packed_out[k], sep_out[k], **TOL)
        for layer in layers:
            torch.testing.assert_close(packed_feats[layer][:, k], sep_feats[k][layer], **TOL)

    # gradients: the sum of per-model losses gives every model the gradient of its own loss
    for m in models:
        m.zero_grad()
    for m, x in zip(models, xs, strict=True):
        _losses(m(x), x, m.encoder.features(x, layers)).backward()
    packed.zero_grad()
    rec = unpack_outputs(packed(packed_in), K)
    feats = packed.encoder.features(packed_in, layers)
    sum(_losses(rec[k], xs[k], [f[:, k] for f in feats]) for k in range(K)).backward()
    grads = {n: p.grad for n, p in packed.named_parameters()}
    for k, m in enumerate(models):
        for n, p in m.named_parameters():
            g = grads[n][k] if n == "encoder.fc.weight" else grads[n].chunk(K)[k]
            # float32 sums over B*H*W terms in another order: agree to ~1e-5 of the gradient's scale
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-4 * scale, msg=f"gradient of {n}, model {k}")

    # running statistics are kept per model: unpacking gives back each model's own state
    for k, m in enumerate(models):
        back = unpack(packed, k)
        for n, value in m.state_dict().items():
            torch.testing.assert_close(back.state_dict()[n], value, **TOL, msg=f"{n}, model {k}")

    # eval mode (running statistics) agrees too
    packed.eval()
    for m in models:
        m.eval()
    out = unpack_outputs(packed(packed_in), K)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(xs[k]), **TOL)


def test_one_adam_step_on_the_packed_model_is_k_separate_steps():
    models = _separate("lenet_digits")
    packed = pack(models)
    xs = _inputs(models[0], batch=8)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3) for m in models]
    for m, opt, x in zip(models, opts, xs, strict=True):
        ((m(x) - x) ** 2).flatten(1).sum(1).mean().backward()
        opt.step()
    opt = torch.optim.Adam(packed.parameters(), lr=1e-2, weight_decay=1e-3)
    rec = unpack_outputs(packed(pack_inputs(xs)), K)
    ((rec - xs) ** 2).flatten(2).sum(2).mean(1).sum().backward()  # sum over models of each model's mean loss
    opt.step()
    for k, m in enumerate(models):
        back = unpack(packed, k)
        for n, value in m.state_dict().items():
            torch.testing.assert_close(back.state_dict()[n], value, **TOL, msg=f"{n}, model {k}")


def test_packing_models_of_different_architectures_is_refused():
    with pytest.raises(ValueError, match="one architecture"):
        pack([create_model("lenet_digits"), create_model("lenet_digits", code_size=16)])
