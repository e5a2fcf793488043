"""``train.compile``: the training forward and loss through ``torch.compile``, compiled once per
model structure and reused by every run of that structure in the process.

torch.compile specialises on the module it traces, and every run builds its own model, so each
structure gets a template instead (a copy of its first model, never trained), and a run's
forward is ``functional_call(template, run's parameters and buffers, x)``: the run's tensors
are the graph's inputs, its gradients and batch-norm statistics land in them, and the next run
of the same structure reuses the compiled code.

Mode: on CUDA ``reduce-overhead`` (CUDA graphs: a largeCNN step at batch 50 is bound by its
~100 kernel launches); on the CPU inductor's default. Compiled and eager agree to rounding, not
bitwise (rounding can flip a ReLU on a pre-activation near 0).
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from softmaso.fast import compile_settings, mark_static
from softmaso.orthogonality import Penalty, at_least_fp32, penalty_value

_TEMPLATES: dict[tuple, nn.Module] = {}


def single_outputs(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, K), labels (B,) -> (mean cross-entropy, number correct); the loss in fp32
    (fp64 stays fp64) even when the logits are bf16."""
    return F.cross_entropy(at_least_fp32(logits), y), (logits.argmax(1) == y).sum()


def template_for(model: nn.Module) -> nn.Module:
    """The process's template for `model`'s structure (made from `model` the first time)."""
    # what a compiled graph depends on: the module tree (repr: the parametrisations and their
    # settings too, never learned values) and every tensor's shape, dtype and layout
    tensors = [*model.named_parameters(), *model.named_buffers()]
    key = (
        repr(model),
        tuple((name, tuple(t.shape), t.dtype, t.device, t.stride()) for name, t in tensors),
    )
    if key not in _TEMPLATES:
        template = copy.deepcopy(model).train()
        for p in template.parameters():
            p.requires_grad_(False)  # never trained; the run's own tensors replace these
        _TEMPLATES[key] = template
        compile_settings(templates=len(_TEMPLATES), cuda_graphs=False)  # a cache entry each
    return _TEMPLATES[key]


def _forward(template, state, x, y, outputs, amp: bool, penalty: Penalty | None, preprocess):
    if preprocess is not None:  # pixels -> input, as training.to_input
        x = preprocess(x).contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = functional_call(template, state, (x,))
    if penalty is None:
        return outputs(logits, y)
    return (*outputs(logits, y), penalty_value(penalty, state))


@functools.cache
def _compiled(mode: str | None) -> Callable:
    """The compiled `_forward` for a mode, and the process-wide settings it needs (once)."""
    # inductor's own lowering calls a helper it deprecated (torch 2.15): not ours to act on
    warnings.filterwarnings("ignore", r"`torch\._prims_common\.check` is deprecated", FutureWarning)
    # "No CUDA runtime is found", on the CPU: true, and beside the point
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    compile_settings(templates=len(_TEMPLATES), cuda_graphs=mode == "reduce-overhead")
    return torch.compile(_forward, mode=mode)


class CompiledForward:
    """(x, y) -> outputs(model(x), y), compiled; `model`'s tensors are the inputs.

    `model` must keep its parameter and buffer tensors (in-place updates only: optimiser steps,
    ``load_state_dict``); it must be in training mode when called (the template always is).
    `amp`: bf16 autocast (as the eager step). With a `penalty`, its value on the run's weights
    is computed in the same compiled region, forward and backward, and returned last; with a
    `preprocess`, x is the batch's pixels, preprocessed there too.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        outputs: Callable[..., Any] = single_outputs,
        amp: bool = False,
        penalty: Penalty | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.model = model
        self.template = template_for(model)
        self.state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        for t in self.state.values():
            mark_static(t)  # CUDA graphs use them in place (batch norm's statistics updated)
        self.args = (outputs, amp, penalty, preprocess)  # _forward's settings
        self.cuda = device.type == "cuda"
        self.fn = _compiled("reduce-overhead" if self.cuda else None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if not self.model.training:
            raise RuntimeError("CompiledForward serves training steps: call model.train() first")
        if self.cuda:  # outputs of the previous step's graphs may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return self.fn(self.template, self.state, x, y, *self.args)
