"""Model registry and the flat-vector view of a model's parameters.

Used by the parameter server (which builds the initial model from the job's seed and
keeps the parameters as one flat float32 vector) and by the workers (which build the same
model, load the PS's flat vector into it and send back flat gradients). Both sides call
`build_model(name, seed)` with the spec's model name and seed, so they agree on the layout
of the flat vector without exchanging it.

The flat vector covers `model.parameters()` in registration order; buffers (none in the
models here) are not part of it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from trainthrough.shards import Shard, partition

__all__ = [
    "MODELS",
    "PaperCNN",
    "build_model",
    "flatten_grads",
    "flatten_params",
    "model_size",
    "load_flat_params",
    "make_mlp",
    "param_count",
]


class PaperCNN(nn.Module):
    """The CNN of Cao et al. 2024 (arXiv 2406.05546) for 1x28x28 inputs, 10 classes.

    >>> PaperCNN()(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2),   # 16x28x28
            nn.ReLU(),
            nn.MaxPool2d(2),                              # 16x14x14
            nn.Conv2d(16, 32, kernel_size=5, padding=2),  # 32x14x14
            nn.ReLU(),
            nn.MaxPool2d(2),                              # 32x7x7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 512),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_mlp(*hidden: int) -> nn.Module:
    """A ReLU MLP 784-hidden...-10 for 1x28x28 inputs, 10 classes.

    The registered sizes (parameters: weights and biases of every layer):
    - "mlp" (784-128-10): 101,770, small enough for fast tests of the PS and workers;
    - "mlp-1m" (784-1024-256-10): 1,068,810;
    - "mlp-50m" (784-8192-5376-10): 50,530,058 (recovery and GPU benchmarks at scale).

    >>> make_mlp(128)(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 10])
    """
    widths = [28 * 28, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 10))


# Name in the TrainingJob spec -> factory building the model with fresh default init.
MODELS: dict[str, Callable[[], nn.Module]] = {
    "paper-cnn": PaperCNN,
    "mlp": partial(make_mlp, 128),
    "mlp-1m": partial(make_mlp, 1024, 256),
    "mlp-50m": partial(make_mlp, 8192, 5376),
}


def build_model(name: str, seed: int) -> nn.Module:
    """Build model `name` with initial weights determined by `seed` alone.

    The PS and every worker call this with the same (name, seed) and get identical weights.
    The global RNG is left as it was: construction runs under `fork_rng` with only the CPU
    default generator seeded (models are built on the CPU; move them afterwards). Because
    the global CPU generator is borrowed for the duration, build models before starting
    threads that draw from it concurrently.
    """
    factory = _factory(name)
    # devices=[]: only the CPU generator is saved/restored, and only it is seeded
    # (torch.manual_seed would also reseed, and so disturb, any CUDA generators).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return factory()


def model_size(name: str) -> int:
    """The length of model `name`'s flat vector, without allocating or initializing it.

    >>> model_size("mlp-1m")
    1068810
    """
    return sum(parameter_sizes(name))


def model_shards(name: str, shards: int) -> list[Shard]:
    """Where a job with `shards` PS shards cuts model `name` (the PS, the worker and the
    master all take it from here)."""
    return partition(parameter_sizes(name), shards)


def parameter_sizes(name: str) -> list[int]:
    """The elements of each of model `name`'s parameters, in the order of its flat vector
    (what shards.partition cuts), without allocating them."""
    factory = _factory(name)
    with torch.device("meta"):
        return [p.numel() for p in factory().parameters()]


def _factory(name: str) -> Callable[[], nn.Module]:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def param_count(model: nn.Module) -> int:
    """Number of scalars in the model's parameters: the length of its flat vector."""
    return sum(p.numel() for p in model.parameters())


def flatten_params(model: nn.Module) -> torch.Tensor:
    """The parameters as a new contiguous 1-D float32 tensor on the model's device.

    A copy: changing it does not change the model.
    """
    with torch.no_grad():
        # parameters_to_vector concatenates, so the result never aliases a parameter.
        return parameters_to_vector(model.parameters()).to(torch.float32).contiguous()


def flatten_grads(model: nn.Module) -> torch.Tensor:
    """The gradients as a new contiguous 1-D float32 tensor, in the layout of
    `flatten_params`; a parameter without a gradient contributes zeros."""
    with torch.no_grad():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        return parameters_to_vector(grads).to(torch.float32).contiguous()


def load_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy the flat vector `flat` into the model's parameters, in place.

    `flat` may have any floating dtype and device; it is converted to each parameter's.
    The parameter tensors stay the same objects (an optimizer holding them keeps working)
    and do not alias `flat` afterwards.
    """
    params = list(model.parameters())
    expected = sum(p.numel() for p in params)
    if flat.dim() != 1 or flat.numel() != expected:
        raise ValueError(
            f"flat parameter vector has {flat.numel()} elements (shape {tuple(flat.shape)}), "
            f"the model has {expected} parameters"
        )
    # Not vector_to_parameters: it rebinds each `param.data` to a view of the vector,
    # so the model would alias the caller's buffer and take its dtype and device.
    with torch.no_grad():
        for param, chunk in zip(params, flat.split([p.numel() for p in params]), strict=True):
            param.copy_(chunk.reshape(param.shape))
