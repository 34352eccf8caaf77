"""How proxytune calls a model and reads its output: one convention for every command.

A model is called as ``model(x)`` with the batch's inputs (token ids, images
or feature vectors). Two things vary between model code bases, and a
:class:`ForwardSpec` says them:

- **the call**: a model that computes full-sequence logits only when it is
  given the targets (nanoGPT's ``forward(idx, targets=None)`` returns the last
  position alone without them) names that argument in ``targets_arg``; a
  Hugging Face encoder-decoder (T5) also gets ``decoder_input_ids = x``.
- **the output**: taken as it comes. A tensor is the logits; a tuple or list
  gives its first element; a dict or a Hugging Face ``ModelOutput`` its
  ``logits``. ``output`` names another key, attribute or index.

:func:`check_logits` refuses, with what to do, logits whose shape does not
match the targets, naming the common case of a model that returns only the
last position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .errors import PlanError

#: what a model's inputs are: token ids, images (B, C, H, W) or feature vectors (B, d_in); ``auto`` finds out
INPUT_KINDS = ("auto", "tokens", "image", "features")


def is_encoder_decoder(model: nn.Module) -> bool:
    """A Hugging Face encoder-decoder model (T5, BART): its forward also needs ``decoder_input_ids``."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, Mapping):
        for o in out.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


@dataclass(frozen=True)
class ForwardSpec:
    """How to call a model and where its logits are (see the module docstring).

    ``output``: ``None`` (the conventions above), a key or attribute name, or
    an index into a tuple output. ``targets_arg``: the forward's keyword for
    the targets, passed whenever proxytune has them. ``input``: one of
    :data:`INPUT_KINDS`, for the example input of the traced forward pass.
    """

    output: str | int | None = None
    targets_arg: str | None = None
    input: str = "auto"

    def __post_init__(self) -> None:
        if self.input not in INPUT_KINDS:
            raise PlanError(f"input kind {self.input!r} is not one of {', '.join(INPUT_KINDS)}")

    def call(self, model: nn.Module, x: Any, y: torch.Tensor | None = None) -> Any:
        """``model(x)`` with the convention's extra arguments."""
        args, kwargs = self.arguments(model, x, y)
        return model(*args, **kwargs)

    def arguments(self, model: nn.Module, x: Any, y: torch.Tensor | None = None) -> tuple[tuple, dict[str, Any]]:
        """The positional and keyword arguments of the call (for ``torch.func.functional_call``)."""
        kwargs: dict[str, Any] = {}
        if self.targets_arg and y is not None:
            kwargs[self.targets_arg] = y
        if isinstance(x, Mapping):
            kwargs.update(x)
            args: tuple = ()
        else:
            args = (x,)
        if is_encoder_decoder(model) and "decoder_input_ids" not in kwargs and isinstance(x, torch.Tensor) \
                and not x.is_floating_point():
            kwargs["decoder_input_ids"] = x
        return args, kwargs

    def logits(self, out: Any) -> torch.Tensor:
        """The logits in a forward's output."""
        if self.output is not None:
            found = _pick(out, self.output)
            if not isinstance(found, torch.Tensor):
                raise PlanError(f"the model's output has no tensor at {self.output!r} (output type "
                                f"{type(out).__name__}); set output: to the key, attribute or index of the logits")
            return found
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping) or hasattr(out, "logits"):
            found = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
            if isinstance(found, torch.Tensor):
                return found
        t = _first_tensor(out)
        if t is None:
            raise PlanError(f"the model's output ({type(out).__name__}) holds no tensor; return the logits, a tuple "
                            "whose first element is the logits, or a dict with 'logits'")
        return t

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "targets_arg": self.targets_arg, "input": self.input}


DEFAULT_FORWARD = ForwardSpec()


def _pick(out: Any, where: str | int) -> Any:
    if isinstance(where, int):
        return out[where] if isinstance(out, (tuple, list)) and -len(out) <= where < len(out) else None
    if isinstance(out, Mapping):
        return out.get(where)
    return getattr(out, where, None)


def check_logits(logits: torch.Tensor, targets: torch.Tensor, *, classes: bool = True) -> None:
    """Refuse logits that do not line up with ``targets`` (one class score vector per target), naming the model
    that returns only its last position."""
    if not classes:
        if logits.shape != targets.shape and logits.numel() != targets.numel():
            raise PlanError(f"the model's output has shape {tuple(logits.shape)} but the targets {tuple(targets.shape)}")
        return
    if tuple(logits.shape[:-1]) == tuple(targets.shape):
        return
    if targets.ndim >= 2 and logits.ndim == targets.ndim + 1 and logits.shape[-2] == 1 and targets.shape[-1] > 1:
        raise PlanError(
            f"the model returned logits for one position (shape {tuple(logits.shape)}) for inputs of "
            f"{targets.shape[-1]} positions: it returns only the last position, as nanoGPT does when called without "
            "targets. Name the forward's targets argument (model: {targets_arg: targets}, --targets-arg targets) "
            "so proxytune passes them, or make the forward return every position")
    raise PlanError(f"the model's logits have shape {tuple(logits.shape)}, which does not match the targets "
                    f"{tuple(targets.shape)} (expected {tuple(targets.shape)} + (classes,)); if the logits are not the "
                    "first element of the output, set output: to their key, attribute or index")
