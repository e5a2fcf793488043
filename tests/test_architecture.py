"""The package's layout, checked: layers that import only downwards, no private names across
modules and thin CLI commands (docs/reference.md, Library). Library functions have no length
rule: a 60-line cap once made helpers that only passed arguments on."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "softmaso"

# Each module's layer: a module imports only modules of lower layers (lazy imports included).
LAYERS = {
    # foundations: no softmaso imports beyond these
    "softmaso": 0,
    "softmaso.errors": 0,
    "softmaso.fast": 0,
    "softmaso.devices": 1,
    "softmaso.io": 1,
    "softmaso.ui": 0,
    "softmaso.timing": 0,
    # the theory and the building blocks
    "softmaso.config": 1,
    "softmaso.recipes": 2,
    "softmaso.theory.specs": 1,
    "softmaso.theory.gmm": 1,
    "softmaso.theory.vq": 2,
    "softmaso.theory": 3,
    "softmaso.nn.beta": 0,
    "softmaso.nn.pooling": 2,
    "softmaso.nn.activations": 2,
    "softmaso.nn": 3,
    "softmaso.theory.checks": 4,
    "softmaso.models": 4,
    "softmaso.orthogonality": 2,
    "softmaso.data": 2,
    # run directories, experiments, training
    "softmaso.rundir": 2,
    "softmaso.compiled": 3,
    "softmaso.packing": 5,
    "softmaso.training": 5,
    "softmaso.packed_training": 6,
    # reading results back, benchmarks, launching, the command line
    "softmaso.reporting": 0,
    "softmaso.reporting.figure1": 4,
    "softmaso.reporting.frame": 3,
    "softmaso.reporting.paper": 0,
    "softmaso.reporting.stats": 0,
    "softmaso.reporting.tables": 4,
    "softmaso.reporting.curves": 5,
    "softmaso.reporting.report": 6,
    "softmaso.reporting.claims": 5,
    "softmaso.analysis": 5,
    "softmaso.reporting.inside": 6,
    "softmaso.fill": 7,
    "softmaso.bench": 8,
    "softmaso.launch": 8,
    "softmaso.cli": 9,
    "softmaso.__main__": 10,
}
CLI_BODY_MAX = 40  # a command parses, builds its options, calls one function, prints


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


MODULES = _modules()


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) of every softmaso import, lazy ones too."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("softmaso"):
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("softmaso")]
    return out


def _targets(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches (``from softmaso import rundir`` -> softmaso.rundir)."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs or [module]


def test_every_module_has_a_layer():
    assert set(MODULES) <= set(LAYERS), f"add to LAYERS: {sorted(set(MODULES) - set(LAYERS))}"


def test_modules_import_only_lower_layers():
    wrong = []
    for name, tree in MODULES.items():
        for module, names, line in _imports(tree):
            for target in _targets(module, names):
                if target != "softmaso" and LAYERS[target] >= LAYERS[name]:
                    wrong.append(f"{name}:{line} imports {target} (layer {LAYERS[target]})")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_module():
    wrong = []
    aliases = {n.rsplit(".", 1)[-1] for n in MODULES}
    for name, tree in MODULES.items():
        for module, names, line in _imports(tree):
            crossing = [n for n in names if _private(n) and module != name]
            wrong += [f"{name}:{line} {module}.{n}" for n in crossing]
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                wrong.append(f"{name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _functions(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _is_command(node) -> bool:
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
        for d in node.decorator_list
    )


def test_cli_commands_are_thin():
    """A command parses, builds its options, calls one library function and prints."""
    fat = []
    for f in _functions(MODULES["softmaso.cli"]):
        if not _is_command(f):
            continue
        body = f.body[1:] if ast.get_docstring(f) else f.body
        lines = body[-1].end_lineno - body[0].lineno + 1
        if lines > CLI_BODY_MAX:
            fat.append(f"cli.{f.name}: {lines} lines")
    assert not fat, "\n".join(fat)


def test_the_benchmark_is_a_leaf():
    users = [
        name
        for name, tree in MODULES.items()
        for module, names, _ in _imports(tree)
        if "softmaso.bench" in _targets(module, names) and name != "softmaso.cli"
    ]
    assert not users, users


# Private APIs of torch, glibc and typer live in softmaso.fast only, each with its fallback.
PRIVATE_API = re.compile(
    r"torch\._(?!_version__)\w+|torch\.ops\.|parametrize\._|\bctypes\b|typer\.core\.TyperOption"
)
# What still uses one elsewhere, and why.
PRIVATE_API_ELSEWHERE: dict[str, str] = {}


def test_private_apis_sit_behind_one_door():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel in ("softmaso/fast.py", *PRIVATE_API_ELSEWHERE):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE_API.search(code) and not code.strip().startswith(('"', "'", "``")):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_path_from_reproduce_to_a_training_step_is_short(tmp_path, monkeypatch):
    """At most 8 frames of softmaso code from the console script's `softmaso reproduce` to
    the training step, counted on a real call (one run of a one-run grid, in this process)."""
    import inspect
    import sys

    import pytest

    from softmaso import cli, training

    recipe = tmp_path / "one.yaml"
    recipe.write_text(
        "data: {name: synthetic, synthetic_train: 100}\nmodel: {width: 0.0625}\n"
        "optim: {batch_size: 50}\ntrain: {epochs: 1}\nsweep: {seed: [0]}\n"
    )
    paths, step = [], training.train_step

    def watched(*args, **kwargs):
        if not paths:
            frames = inspect.stack()[1:]  # from the step's caller outwards
            here = [f for f in frames if Path(f.filename).is_relative_to(PACKAGE)]
            names = (
                f"{Path(f.filename).stem}.{getattr(f.frame.f_code, 'co_qualname', f.function)}"
                for f in here
            )
            paths.extend(reversed(list(names)))
        return step(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", watched)
    argv = ["softmaso", "reproduce", str(recipe), "--results", str(tmp_path / "r")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    chain = [*paths, "training.train_step"]
    assert chain[0] == "cli.main" and chain[-2] == "training.fit", chain
    assert len(chain) <= 8, " -> ".join(chain)


CORE = ("softmaso.training", "softmaso.orthogonality", "softmaso.compiled", "softmaso.models",
        "softmaso.data", "softmaso.rundir", "softmaso.nn")  # fmt: skip
PACK_WORDS = re.compile(r"^(runs|packs?|pack_size|packed\w*)$")


def test_no_core_function_takes_a_pack_argument():
    """Packing wraps the single-run code (softmaso.packing, softmaso.packed_training): no
    function of the core takes a pack size or a pack, and none imports the packing modules."""
    wrong = []
    for name, tree in MODULES.items():
        if not name.startswith(CORE):
            continue
        for node in _functions(tree):
            params = [
                a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)
            ]
            wrong += [f"{name}.{node.name}({a})" for a in params if PACK_WORDS.match(a)]
        for module, names, line in _imports(tree):
            for target in _targets(module, names):
                if target in ("softmaso.packing", "softmaso.packed_training"):
                    wrong.append(f"{name}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)
