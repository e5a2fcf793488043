"""Every use of a private torch, glibc or typer API, in one place, each behind a capability check
with a public fallback that gives the same numbers (where the API is missing: more recompiles,
slower steps, or typer's own help text).

What each is worth is measured (``benchmarks/fast_tricks.py`` for the CPU ones, recorded in
benchmarks/RESULTS.md); a trick worth under 3% of a step is removed, not kept. torch is
imported only inside the functions, so the CLI imports this module without slowing ``--help``.
"""

from __future__ import annotations

import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc (``mallopt``) keep freed blocks for reuse: blocks up to 32 MiB (its
    largest setting) from the heap, trimmed only above 1 GiB free, so a CPU step's activations
    are not unmapped and faulted in again every step. Process-wide; False where the C library
    is not glibc (nothing changes)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def mark_static(tensor) -> None:
    """Tell dynamo that `tensor` keeps its address (CUDA graphs then use it in place, which
    lets them update batch norm's statistics); ``guard=False`` where supported, so a new run's
    tensors at other addresses re-record the graphs (once per run) instead of recompiling."""
    import torch

    try:
        torch._dynamo.mark_static_address(tensor, guard=False)
    except TypeError:  # a torch without the guard argument
        torch._dynamo.mark_static_address(tensor)


def compile_settings(*, templates: int, cuda_graphs: bool) -> None:
    """The process-wide dynamo / inductor settings the compiled step relies on: a cache entry
    per model structure (`templates` of them) beyond dynamo's default of 8; no automatic
    dynamic shapes (a pack compiled after a single run would get a dynamic-shape graph); with
    CUDA graphs, no cap on re-recording them (past it inductor quietly stops using them)."""
    import torch

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if hasattr(config, name):
        setattr(config, name, max(getattr(config, name), 8 * templates + 8))
    if hasattr(config, "automatic_dynamic_shapes"):
        config.automatic_dynamic_shapes = False
    if cuda_graphs:
        from torch._inductor import config as inductor

        limit = getattr(inductor.triton, "cudagraph_unexpected_rerecord_limit", None)
        if limit is not None:
            inductor.triton.cudagraph_unexpected_rerecord_limit = max(limit, 1 << 16)


def flag_help_without_type() -> None:
    """A flag (--smoke, --pack/--no-pack, --help) takes no value: its help shows no `<bool>`
    (patches ``typer.core.TyperOption.display_type_rich`` where typer has it)."""
    from typer.core import TyperOption

    display = getattr(TyperOption, "display_type_rich", None)
    if display is None or getattr(display, "_softmaso", False):
        return

    def without_type(self, ctx):
        return "" if self.is_flag else display(self, ctx)

    without_type._softmaso = True
    TyperOption.display_type_rich = without_type
