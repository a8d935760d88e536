"""The trainable state: the parameters a round changes and the federation shares.

With FFA-LoRA that is every LoRA B matrix plus the classification head (peft `modules_to_save`);
with A trained as well, also the A matrices. Everything else is frozen and must stay bit-identical.
States are plain `{name: tensor}` dicts on the CPU, in sorted name order, so they can be
flattened to one vector (for encryption and averaging) and loaded back.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from confide.privacy.errors import TrainingError

State = dict[str, torch.Tensor]


def lora_matrix(name: str) -> str | None:
    """`"A"` or `"B"` for a peft LoRA matrix's parameter name (`....lora_A.default.weight`), else None."""
    for matrix in ("A", "B"):
        if f".lora_{matrix}." in name:
            return matrix
    return None


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters with `requires_grad`, by name, in sorted name order."""
    return dict(sorted((n, p) for n, p in model.named_parameters() if p.requires_grad))


def trainable_state(model: nn.Module) -> State:
    """A detached float32 CPU copy of every trainable parameter, in sorted name order."""
    return {n: p.detach().to("cpu", torch.float32).clone() for n, p in trainable_parameters(model).items()}


def _check_same_layout(state: State, reference: dict[str, torch.Tensor], what: str) -> None:
    if list(state) != list(reference):
        missing = sorted(set(reference) - set(state))
        extra = sorted(set(state) - set(reference))
        raise TrainingError(
            f"{what} does not match the model's trainable parameters (missing {missing[:3]}, unexpected {extra[:3]})",
            "all members must use the same federation model and adapter settings",
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(reference[name].shape):
            raise TrainingError(
                f"{what}: {name} has shape {tuple(tensor.shape)}, expected {tuple(reference[name].shape)}"
            )


def load_trainable_state(model: nn.Module, state: State) -> None:
    """Overwrite the model's trainable parameters with `state`. Raises TrainingError on a layout mismatch."""
    params = trainable_parameters(model)
    _check_same_layout(dict(sorted(state.items())), params, "state")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


def state_difference(after: State, before: State) -> State:
    """`after - before`, name by name."""
    _check_same_layout(after, before, "state")
    return {name: after[name] - before[name] for name in after}


def parameters_digest(model: nn.Module, trainable: bool) -> str:
    """SHA-256 over the raw bytes of the trainable (or the frozen) parameters, in name order.

    Two members hold bit-identical weights exactly when their digests agree.
    """
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad == trainable:
            digest.update(name.encode() + b"\0")
            digest.update(param.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
