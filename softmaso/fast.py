"""Every use of a private torch, glibc or typer API, in one place, each behind a capability check
with a public fallback that gives the same numbers.

- :func:`matmul_nt`: oneDNN's float32 matmul (``torch.ops.mkldnn._linear_pointwise``, an
  inductor op) for large CPU products; fallback ``x @ w.mT``. The same float32 arithmetic.
- :func:`keep_freed_memory`: glibc's ``mallopt`` (through ctypes) so that freed activations
  stay in the heap for the next step; fallback: the C library's defaults (nothing done).
- :func:`parametrize_cache`: ``torch.nn.utils.parametrize``'s private cache, where
  ``orthogonality.prefill_orthonormal`` puts batched Gram-Schmidt results; fallback: each
  layer computes its own weight.
- :func:`mark_static`, :func:`compile_settings`: ``torch._dynamo``'s static addresses
  (``guard=False``) and the dynamo / inductor settings the compiled step needs; fallback: the
  defaults (more recompiles or re-recorded CUDA graphs, the same numbers).
- :func:`flag_help_without_type`: typer's ``TyperOption.display_type_rich``, so a flag's
  ``--help`` shows no ``<bool>``; fallback: typer's own help text.

What each is worth is measured by ``softmaso bench`` and recorded in benchmarks/RESULTS.md.
This module imports torch only inside its functions, so the CLI can import it without
slowing ``--help``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

ONEDNN_MIN_MACS = 1 << 20  # below ~1M multiply-adds the call overhead outweighs the gain


@functools.cache
def onednn_linear() -> Callable | None:
    """oneDNN's float32 matmul op, or None where this torch has no oneDNN or no such op."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def matmul_nt(x, w):
    """x (..., r, k) @ w (..., c, k)^T -> (..., r, c); the batch dims of x and w equal.

    Through oneDNN for large float32 CPU products (w may be a transposed view), else
    ``torch.matmul``; under ``torch.compile`` always ``torch.matmul``, which inductor lowers
    itself.
    """
    import torch

    if torch.compiler.is_compiling():  # inductor lowers the op for constant weights only
        return x @ w.mT
    r, k = x.shape[-2:]
    linear = onednn_linear()
    fast = (
        linear is not None
        and x.device.type == "cpu"
        and x.dtype == w.dtype == torch.float32
        and r * w.shape[-2] * k >= ONEDNN_MIN_MACS
    )
    if not fast:
        return x @ w.mT
    if x.dim() == 2:
        return linear(x, w, None, "none", [], "")
    lead = x.shape[:-2]
    xs, ws = x.reshape(-1, r, k), w.reshape(-1, *w.shape[-2:])
    out = [linear(xi, wi, None, "none", [], "") for xi, wi in zip(xs, ws, strict=True)]
    batch = out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)  # one matrix: no copy
    return batch.reshape(*lead, r, w.shape[-2])


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse rather than hand them back to the OS:
    blocks up to 32 MiB (glibc's largest setting) from the heap, the heap trimmed only above
    1 GiB free. A CPU training step frees and reallocates its activations every step; without
    this they are unmapped and faulted in again. Process-wide; False where the C library is
    not glibc (nothing changes)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def parametrize_cache() -> dict | None:
    """parametrize's cache of parametrised tensors, keyed by (id(module), tensor name), while
    ``parametrize.cached()`` is active; None where this torch has no such cache (a caller then
    leaves each layer to compute its own weight). RuntimeError outside ``cached()``."""
    from torch.nn.utils import parametrize

    enabled = getattr(parametrize, "_cache_enabled", None)
    cache = getattr(parametrize, "_cache", None)
    if enabled is None or not isinstance(cache, dict):
        return None
    if not enabled:
        raise RuntimeError("the parametrize cache is filled inside parametrize.cached() only")
    return cache


def mark_static(tensor) -> None:
    """Tell dynamo that `tensor` keeps its address (CUDA graphs then use it in place, which
    also lets them update batch norm's statistics); ``guard=False`` where supported, so a new
    run's tensors at other addresses re-record the graphs instead of recompiling."""
    import torch

    try:
        torch._dynamo.mark_static_address(tensor, guard=False)
    except TypeError:  # a torch without the guard argument
        torch._dynamo.mark_static_address(tensor)


def compile_settings(*, templates: int, cuda_graphs: bool) -> None:
    """The process-wide dynamo / inductor settings the compiled step relies on: room for one
    cache entry per model structure (`templates` of them) beyond dynamo's default of 8; no
    automatic dynamic shapes (a pack compiled after a single run would otherwise become a
    dynamic-shape graph); with CUDA graphs, no cap on re-recording them (each run re-records
    once; past inductor's default limit it would quietly stop using CUDA graphs)."""
    import torch

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if hasattr(config, name):
        setattr(config, name, max(getattr(config, name), 2 * templates + 8))
    if hasattr(config, "automatic_dynamic_shapes"):
        config.automatic_dynamic_shapes = False
    if cuda_graphs:
        from torch._inductor import config as inductor

        limit = getattr(inductor.triton, "cudagraph_unexpected_rerecord_limit", None)
        if limit is not None:
            inductor.triton.cudagraph_unexpected_rerecord_limit = max(limit, 1 << 16)


def flag_help_without_type() -> None:
    """A flag (--smoke, --pack/--no-pack, --help) takes no value: its help shows no `<bool>`.
    Patches typer's rich help (``typer.core.TyperOption.display_type_rich``) where it has the
    method; otherwise typer's help is left as it is."""
    from typer.core import TyperOption

    display = getattr(TyperOption, "display_type_rich", None)
    if display is None or getattr(display, "_softmaso", False):
        return

    def without_type(self, ctx):
        return "" if self.is_flag else display(self, ctx)

    without_type._softmaso = True
    TyperOption.display_type_rich = without_type
