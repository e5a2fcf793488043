"""The recipes that ship with softmaso, and the named experiments made of them.

Recipes are package data (YAML files in this folder), read through importlib.resources, so an
installed wheel has them too. A recipe is named by its path here without ``.yaml``
(``smoke``, ``table2/cifar10``, ``fashion``); ``softmaso train NAME`` and ``softmaso
reproduce PATH.yaml`` accept a name or a file of your own, and ``softmaso recipes --copy NAME
DIR`` starts your own from one.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from softmaso.errors import UserError

# A named experiment: the recipes whose sweeps `softmaso reproduce NAME` runs, in order.
EXPERIMENTS: dict[str, list[str]] = {
    "table2": ["table2/svhn", "table2/cifar10", "table2/cifar100"],
    "gs-cifar100": ["gs-cifar100"],
    "fashion": ["fashion"],
    "table2-fashion": ["table2-fashion"],
    "gs-fashion": ["gs-fashion"],
    "activations": ["activations/relu", "activations/swish", "activations/beta"],
    "ortho-methods": ["ortho-methods/paper", "ortho-methods/bansal"],
}


def root() -> Path:
    """The folder holding the packaged recipes (a real folder for any installed softmaso)."""
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """Every packaged recipe, by name (``table2/cifar10``), sorted."""
    base = root()
    return sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.yaml"))


def path_of(name: str) -> Path:
    """The file of a packaged recipe; UserError naming the known ones if there is none."""
    path = root() / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise UserError("RECIPE", f"no packaged recipe {name!r}; one of {', '.join(names())}")
    return path


def resolve(spec: str | Path) -> Path:
    """A recipe argument -> its file: an existing file as given, else a packaged name."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") and (path.is_absolute() or len(path.parts) > 2):
        raise UserError("RECIPE", f"no such recipe file: {path}")
    try:
        return path_of(str(spec))
    except UserError:
        raise UserError(
            "RECIPE",
            f"{str(spec)!r} is neither a recipe file nor a packaged recipe "
            f"({', '.join(names())}; `softmaso recipes` lists them)",
        ) from None


def copy(name: str, folder: Path) -> Path:
    """Copy the packaged recipe `name` into `folder` (made if needed) as NAME's file name;
    refuses to overwrite a file that is there."""
    from softmaso.io import ensure_writable_dir

    src = path_of(name)
    dest = ensure_writable_dir(Path(folder), where="--copy DIR") / src.name
    if dest.exists():
        raise UserError("--copy", f"{dest} exists; remove it or choose another folder")
    shutil.copyfile(src, dest)
    return dest
