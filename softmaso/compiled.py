"""``train.compile``: the training forward and loss through ``torch.compile``, compiled once per
model structure and reused by every run of that structure in the process.

torch.compile specialises on the module it traces, and every run builds its own model
(``torch.nn.utils.parametrize`` even gives each parametrised conv a class of its own), so
compiling each run's model would compile once per run. Instead each structure gets a template
(a copy of the first model of that structure, never trained), and a run's forward is
``functional_call(template, run's parameters and buffers, x)``: the compiled graph takes the run's
tensors as inputs, its gradients and batch-norm statistics land in the run's own tensors, and
the next run of the same structure reuses the compiled code (``test_compiled``).

Mode: on CUDA ``reduce-overhead``, which replays the forward and the backward as CUDA graphs
(at batch 50 a largeCNN step is ~100 small kernels, bound by their launches); on the CPU
inductor's default. In float64 the compiled forward, loss and gradients equal eager's to
rounding (1e-14); in float32 they differ by rounding, which can flip a ReLU on a pre-activation
within rounding of 0, so compiled and eager runs are not bitwise equal.
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


def _signature(model: nn.Module) -> tuple:
    """What a compiled graph depends on: the module tree and every tensor's shape and dtype."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return (
        repr(model),  # includes the parametrisations and their settings (extra_repr)
        tuple((name, tuple(t.shape), t.dtype, t.device, t.stride()) for name, t in tensors),
    )


def template_for(model: nn.Module) -> nn.Module:
    """The process's template for `model`'s structure (made from `model` the first time)."""
    key = _signature(model)
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
            # CUDA graphs then use these tensors in place rather than copies, which also lets
            # them update batch norm's statistics (a graph that mutates any other input is
            # run without CUDA graphs). guard=False: a new run's tensors at other addresses
            # re-record the graphs (once per run) instead of recompiling.
            mark_static(t)
        self.outputs = outputs
        self.cuda = device.type == "cuda"
        self.amp = amp
        self.penalty = penalty
        self.preprocess = preprocess
        self.fn = _compiled("reduce-overhead" if self.cuda else None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if not self.model.training:
            raise RuntimeError("CompiledForward serves training steps: call model.train() first")
        if self.cuda:  # outputs of the previous step's graphs may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        args = (self.outputs, self.amp, self.penalty, self.preprocess)
        return self.fn(self.template, self.state, x, y, *args)
