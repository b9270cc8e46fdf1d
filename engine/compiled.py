"""torch.compile for training runs, with the compile cost paid once per worker process, not once per run.

Compiling an autoencoder costs seconds on a GPU and minutes on a small CPU (inductor generates and builds
kernels), more than a whole digits run. A sweep worker trains many runs of one architecture one after the other, so
this module keeps one model instance per (architecture, device, memory format) per process, compiled once, and
each run re-initialises that instance's weights *in place* from a model freshly built under the run's seed:

- the weights are exactly an eager run's (building the fresh model draws the same random numbers);
- the parameters and buffers keep their identity and memory, so the compiled graphs, whose guards (and on a GPU,
  CUDA graphs) refer to those tensors, stay valid and read the new values; replacing the tensors instead would
  recompile or, with CUDA graphs, replay stale memory;
- BatchNorm running statistics and batch counters are buffers of the state dict, so they are reset as well;
- the optimiser (Adam moments, step counts) is built per run by the training loop, so nothing else carries over.

Stage 2 compiles one function that returns *every* encoder layer and selects the run's layers afterwards: a layer
tuple passed into the compiled code would be a guard, one recompile per layer set of a search. Evaluation (the
centroid pass, test scores) stays eager: it runs once per run and would add eval-mode graphs for little gain.
The cache is per process and not thread-safe: one run at a time per process, as Ray Tune's workers run them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

BACKEND = "inductor"  # tests use "aot_eager" to check the wiring without building kernels


class AllLayerFeatures(nn.Module):
    """forward(x) -> every encoder layer's vector, list of (B, D_k): one graph serves every layer selection."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.layers = tuple(range(encoder.num_layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.features(x, self.layers)


@dataclass
class CompiledModel:
    """One cached architecture: the eager model (evaluate with it) and its compiled training callables."""

    model: nn.Module  # the autoencoder; `.encoder` shares its parameters with both compiled callables
    forward: nn.Module  # compiled model(x) -> reconstruction, for stage 1
    all_features: nn.Module  # compiled AllLayerFeatures, for stage 2
    runs: int = 0  # runs served so far (1 = this run compiled it)

    def features(self, layers: tuple[int, ...]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        """x -> the vectors of `layers`, in that order, through the compiled all-layer function."""

        def selected(x: torch.Tensor) -> list[torch.Tensor]:
            every = self.all_features(x)
            return [every[k] for k in layers]

        return selected


_CACHE: dict[tuple, CompiledModel] = {}


def compiled_model(
    fresh: nn.Module, architecture: tuple, device: torch.device, memory_format: torch.memory_format
) -> CompiledModel:
    """The process's compiled model of `architecture` (e.g. (name, kwargs)), holding `fresh`'s weights.

    `fresh` is the run's newly initialised model (CPU or `device`); on a cache hit only its state is used.
    """
    key = (json.dumps(architecture, sort_keys=True, default=str), str(device), str(memory_format))
    cached = _CACHE.get(key)
    if cached is None:
        model = fresh.to(device, memory_format=memory_format)
        cached = CompiledModel(
            model=model,
            forward=torch.compile(model, backend=BACKEND),
            all_features=torch.compile(AllLayerFeatures(model.encoder), backend=BACKEND),
        )
        _CACHE[key] = cached
    else:
        # copy_ into the existing tensors (load_state_dict does): same identity and memory, new values
        cached.model.load_state_dict(fresh.state_dict())
        for p in cached.model.parameters():
            p.grad = None
    cached.runs += 1
    return cached


def clear_cache() -> None:
    """Forget every compiled model of this process (tests; or to free memory between architectures)."""
    _CACHE.clear()
