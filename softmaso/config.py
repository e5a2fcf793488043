"""Recipes: YAML -> dotted `--set` overrides -> a strict, frozen, typed :class:`RunConfig`.

Config flows one way: ``load_recipe(path, overrides)`` reads the YAML with ``safe_load``,
applies ``--set a.b=value`` overrides (each value parsed as YAML, so ``0.001``, ``true`` and
``[1, 2]`` mean what they look like), then validates everything against the models below.
An unknown key is an error naming the key, the file and the closest valid key; a wrong value
names the key and what is allowed. The trainer only ever sees the frozen RunConfig.

Each default carries its unit and its source: [paper] the ICLR 2019 paper, [authors] the
authors' public code (paper-notes section 9), [ours] our choice.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from softmaso.errors import UserError

_SHORT = reprlib.Repr()  # how an error shows a bad value: nested containers, long strings cut short
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 2, 4, 4, 60


class _Strict(BaseModel):
    # Unknown keys are errors; numbers are finite; a boolean is never taken for a number
    # (YAML's `true` would otherwise be the integer 1).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        ann = cls.model_fields[info.field_name].annotation
        numeric = {int, float, int | None, float | None}
        if isinstance(value, bool) and ann in numeric:
            raise ValueError("a number is needed, not a boolean")
        return value


class DataConfig(_Strict):
    name: Literal[
        "cifar10", "cifar100", "svhn", "fashion-mnist", "mnist", "kmnist", "synthetic", "npz"
    ] = Field(
        "cifar10",
        description="dataset; the MNIST family is 28x28 grey (one channel, as it is); "
        "synthetic is generated offline, npz is your own file",
    )
    path: str | None = Field(None, description="the .npz file (data.name: npz) [ours]")
    subset: int | None = Field(
        None, gt=0, description="images per split, stratified by class; null = all [ours]"
    )
    classes: Literal[10, 100] = Field(10, description="classes of the synthetic set [ours]")
    synthetic_train: int = Field(
        5000, gt=0, description="training images of the synthetic set (test: 1/5 of it) [ours]"
    )
    preprocess: Literal["per_image", "per_channel", "scale"] = Field(
        "per_image",
        description="per_image: centre each image by its mean, divide by its max absolute value "
        "[authors]; per_channel: standardise with training-set channel stats; scale: x/255",
    )
    augment: bool = Field(False, description="random crop (pad 4) and flip [authors: off]")
    balanced_batches: bool = Field(
        True, description="each mini-batch has the same number of images per class [authors]"
    )


class ModelConfig(_Strict):
    width: float = Field(
        1.0,
        gt=0,
        le=16,
        description="channel multiplier (x 96/192 channels), at most 16; 1.0 = the paper's "
        "largeCNN [paper]",
    )
    activation: Literal["relu", "swish", "beta"] = Field(
        "relu",
        description="relu [paper]; swish: u*sigmoid(eta u), learnable per-channel "
        "eta = softplus(p), p0 = 0.5 [authors]; beta: model.spec under beta-VQ",
    )
    spec: Literal["relu", "abs", "leaky_relu", "pieces"] = Field(
        "relu", description="max-affine spec under beta-VQ when model.activation is beta [ours]"
    )
    pieces: str | None = Field(
        None, description="slope:offset pieces, left to right, for model.spec: pieces [ours]"
    )
    leaky_slope: float = Field(
        0.1, ge=0, lt=1, description="negative slope of model.spec: leaky_relu (dimensionless)"
    )
    beta: float = Field(
        0.5,
        ge=0,
        le=1,
        description="beta in [0, 1] of model.activation: beta (initial value if learnt) [ours]",
    )
    learn_beta: bool = Field(True, description="learn one beta per channel, kept in (0, 1) [ours]")
    batch_norm: bool = Field(True, description="batch norm before each nonlinearity [authors]")


class OrthoConfig(_Strict):
    mode: Literal["none", "penalty", "exact", "so", "srip", "torch"] = Field(
        "none",
        description="none: baseline; penalty: loss + weight * sum_{k!=k'} <W_k, W_k'>^2 per "
        "conv [paper eq. 11]; exact: filters reparametrised to be orthonormal [paper Sec. 5]; "
        "so: loss + weight * ||G - I||_F^2, srip: loss + weight * sigma_max(G - I) [Bansal et "
        "al. 2018], G the Gram matrix of the filters (of their columns where there are more "
        "filters than values per filter); torch: torch.nn.utils.parametrizations.orthogonal "
        "of the flattened filters (columns where wide), a second exact method",
    )
    weight: float = Field(
        1.0, ge=0, description="weight lambda of penalty, so or srip [paper: 1 for penalty]"
    )
    apodize: bool = Field(
        False, description="multiply filters by a 2-D Hamming window [paper App. B]"
    )
    method: Literal["cholesky", "qr"] = Field(
        "cholesky",
        description="how exact computes Gram-Schmidt: cholesky, of the float64 Gram matrix, "
        "matmuls and no host sync, orthonormal to ~1e-8 * cond(W) (1e-7 for largeCNN's "
        "layers, 1e-5 for its square one at init); qr, Householder (LAPACK), orthonormal to "
        "~1e-6 at any conditioning, slower on a CPU (softmaso bench) [ours]",
    )


class OptimConfig(_Strict):
    name: Literal["adam"] = Field("adam", description="optimiser [paper: Adam]")
    lr: float = Field(
        0.001, gt=0, description="Adam step size, constant over training [paper: 1e-3, 5e-4, 1e-4]"
    )
    batch_size: int = Field(
        50, gt=0, description="images per optimiser step [authors: 50; CIFAR-100: 100]"
    )
    weight_decay: float = Field(
        0.0, ge=0, description="L2 weight decay coefficient [authors: none]"
    )


class TrainConfig(_Strict):
    epochs: int = Field(
        150, gt=0, description="passes over the training set [authors: 150; CIFAR-100: 200]"
    )
    amp: bool = Field(
        False,
        description="bf16 autocast of the forward, on CUDA or a CPU (fast where the CPU has "
        "bf16 units: AVX512-BF16, AMX) [ours]",
    )
    compile: bool = Field(
        False,
        description="torch.compile the training forward, loss and penalty, once per model "
        "shape in a process; on CUDA replayed as CUDA graphs, and on there by default where "
        "the recipe and --set leave it open [ours]",
    )
    eval_batch_size: int = Field(
        500, gt=0, description="images per evaluation batch; 500 keeps a CPU run under 2 GiB [ours]"
    )
    checkpoint_every: int = Field(
        1, gt=0, description="epochs between checkpoints (and metrics writes) [ours]"
    )


class RunConfig(_Strict):
    recipe: str = Field("custom", description="recipe name, taken from the file name")
    seed: int = Field(
        0,
        ge=0,
        lt=2**32,
        description="seed of the initialisation, data order and augmentation, below 2^32 [ours]",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    ortho: OrthoConfig = OrthoConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("ortho")
    @classmethod
    def _apodised_filters_can_be_orthonormal(cls, ortho: OrthoConfig) -> OrthoConfig:
        # Centred filters span n - 1 of their n dimensions, and largeCNN's 1x1 conv has as many
        # filters as values per filter: exact's Gram-Schmidt of them divides by zero (NaN).
        # (torch's orthogonal parametrisation trains, on its own terms, and is left alone.)
        if ortho.apodize and ortho.mode == "exact":
            raise ValueError(
                "apodize with mode exact: centred filters cannot be orthonormalised where a "
                "layer has at least as many filters as values per filter, as largeCNN's 1x1 "
                "conv always has; training gave NaN. Apodize goes "
                "with mode none, penalty, so, srip or torch"
            )
        return ortho

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_overrides(self, **dotted: Any) -> RunConfig:
        """A copy with dotted keys replaced (validated like a recipe)."""
        tree = self.to_dict()
        for key, value in dotted.items():
            _set_dotted(tree, key, value, where=key)
        return validate(tree, source="overrides", set_keys=set(dotted))


# ----------------------------------------------------------------------------------- loading
def valid_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """All dotted keys of a config model (leaves and sections)."""
    keys = []
    for name, f in model.model_fields.items():
        key = prefix + name
        keys.append(key)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += valid_keys(ann, key + ".")
    return keys


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _set_dotted(tree: dict, key: str, value: Any, *, where: str) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(where, f"{'.'.join(parts[: i + 1])!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.001' -> ('optim.lr', 0.001); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError("--set", f"{text!r} is not KEY=VALUE (e.g. --set optim.lr=0.0005)")
    if key not in valid_keys():
        raise UserError(f"--set {key}", f"unknown key{_did_you_mean(key)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set {key}", f"cannot parse value {raw!r}") from None
    return key, value


def validate(tree: Any, *, source: str, set_keys: set[str] = frozenset()) -> RunConfig:
    """`tree` as a RunConfig; UserError naming `source` (a file) or the --set keys at fault."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise UserError(source, f"unknown key {key!r}{_did_you_mean(key)}") from None
        inside = sorted(k for k in set_keys if k.startswith(f"{key}."))
        where = f"--set {key}" if key in set_keys else f"{source}: key {key!r}"
        if inside and key not in set_keys:  # a check of several keys: the recipe's and --set's
            where += f" with --set {', '.join(inside)}"
        msg = err["msg"].removeprefix("Value error, ")  # our validators' own sentences
        raise UserError(where, f"{msg} (got {_SHORT.repr(err.get('input'))})") from None


# ----------------------------------------------------------------------------- endpoints
@dataclass(frozen=True)
class Endpoint:
    """Which test accuracy of a run a table reports.

    ``final``: after the last epoch (the default); ``best``: the highest over all evaluated
    epochs (optimistic: it picks the epoch by the test set); ``last:K``: the mean over the
    last K evaluated epochs (a run with fewer evaluated epochs has no value).
    """

    kind: Literal["final", "best", "last"]
    k: int = 1

    @property
    def text(self) -> str:
        return f"last:{self.k}" if self.kind == "last" else self.kind

    @property
    def label(self) -> str:
        if self.kind == "final":
            return "final test accuracy (%) after the last epoch"
        if self.kind == "best":
            return (
                "best test accuracy (%) over the evaluated epochs "
                "(optimistic: the epoch is chosen on the test set)"
            )
        return f"mean test accuracy (%) over the last {self.k} evaluated epochs"


FINAL = Endpoint("final")


def parse_endpoint(text: Any, *, where: str) -> Endpoint:
    """'final' | 'best' | 'last:K' (K >= 1) -> Endpoint; UserError naming `where` otherwise."""
    raw = str(text).strip()
    if raw in ("final", "best"):
        return Endpoint(raw)
    head, sep, tail = raw.partition(":")
    if head == "last" and sep and tail.isdigit() and int(tail) >= 1:
        return Endpoint("last", int(tail))
    raise UserError(where, f"endpoint {text!r} is not one of final, best, last:K (K >= 1)")


Baseline = tuple[tuple[str, Any], ...]  # ((key, value), ...): the settings of the baseline cell


def parse_baseline(text: Any, *, where: str) -> Baseline:
    """'ortho.mode=none', or a list of such settings (['model.activation=relu',
    'ortho.mode=none']: the cell with both) -> ((key, value), ...); UserError otherwise."""
    items = text if isinstance(text, (list, tuple)) else [text]
    if not items:
        raise UserError(where, "give at least one KEY=VALUE (e.g. ortho.mode=none)")
    settings = []
    for item in items:  # a config key and a value, parsed as YAML (as --set does)
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or key not in valid_keys() or key == "recipe":
            raise UserError(
                where, f"{item!r} is not KEY=VALUE with a config key (e.g. ortho.mode=none)"
            )
        try:
            settings.append((key, yaml.safe_load(raw)))
        except yaml.YAMLError:
            raise UserError(where, f"cannot parse the value of {item!r}") from None
    keys = [key for key, _ in settings]
    if len(set(keys)) < len(keys):
        raise UserError(where, f"a key is given twice in {list(items)!r}; give each key once")
    return tuple(settings)


@dataclass(frozen=True)
class ReportSettings:
    """A recipe's ``report:`` section: how its tables read its runs, declared with the
    recipe (before its grid runs). ``endpoint``: see :class:`Endpoint`; ``baseline``: the
    settings of the cell every gain is measured against (``ortho.mode=none`` unless given)."""

    endpoint: Endpoint = FINAL
    baseline: Baseline | None = None


def _report_section(tree: dict, path: Path) -> ReportSettings:
    section = tree.pop("report", None) or {}
    if not isinstance(section, dict):
        raise UserError(str(path), "report: must map endpoint and baseline to values")
    unknown = set(section) - {"endpoint", "baseline"}
    if unknown:
        raise UserError(
            str(path), f"report: unknown key {sorted(unknown)[0]!r}; allowed: endpoint, baseline"
        )
    where = f"{path}: report"
    endpoint = parse_endpoint(section.get("endpoint", "final"), where=f"{where}.endpoint")
    baseline = section.get("baseline")
    base = parse_baseline(baseline, where=f"{where}.baseline") if baseline is not None else None
    return ReportSettings(endpoint, base)


@dataclass(frozen=True)
class Recipe:
    """A recipe file: its base settings, and optionally a sweep and a smoke variant.

    ``sweep:`` maps dotted keys to lists of values (``softmaso reproduce`` runs every
    combination); ``smoke:`` maps dotted keys to the values that turn the recipe into a tiny
    offline stand-in (``--smoke``). Both are checked against the config's keys when read.
    ``report:`` declares how tables read the runs (:class:`ReportSettings`).
    """

    path: Path
    tree: dict[str, Any]
    sweep: dict[str, list[Any]]
    smoke: dict[str, Any]
    report: ReportSettings = ReportSettings()

    @property
    def name(self) -> str:
        return self.path.stem

    def config(
        self,
        overrides: list[str] | tuple[str, ...] = (),
        *,
        smoke: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> RunConfig:
        """Base values <- smoke variant (if asked) <- one sweep point <- --set overrides."""
        tree = copy.deepcopy(self.tree)
        for key, value in (self.smoke if smoke else {}).items():
            _set_dotted(tree, key, value, where=f"{self.path}: smoke.{key}")
        for key, value in (settings or {}).items():
            _set_dotted(tree, key, value, where=f"{self.path}: sweep.{key}")
        set_keys = set()
        for text_override in overrides:
            key, value = parse_override(text_override)
            _set_dotted(tree, key, value, where=f"--set {key}")
            set_keys.add(key)
        return validate(tree, source=str(self.path), set_keys=set_keys)

    def points(self, fixed: set[str] = frozenset()) -> list[dict[str, Any]]:
        """Every combination of the sweep's values (keys in `fixed` are left out)."""
        keys = [k for k in self.sweep if k not in fixed]
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(self.sweep[k] for k in keys))
        ]


def _section(tree: dict, name: str, path: Path) -> dict[str, Any]:
    section = tree.pop(name, None) or {}
    if not isinstance(section, dict):
        raise UserError(str(path), f"{name}: must map dotted keys to values (e.g. optim.lr: ...)")
    for key, value in section.items():
        if key not in valid_keys() or key == "recipe":
            raise UserError(str(path), f"{name}: unknown key {key!r}{_did_you_mean(key)}")
        if name == "sweep" and (not isinstance(value, list) or not value):
            raise UserError(str(path), f"sweep: {key} must be a non-empty list of values")
    return section


class _RecipeProblem(Exception):
    pass


MAX_YAML_NODES = 100_000  # a recipe is a few hundred values; aliases may not expand past this


def _expanded_size(node, memo: dict[int, int]) -> int:
    """The number of nodes `node` stands for once its aliases are expanded (shared nodes are
    counted where each alias uses them; computed once per node)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a node that contains itself counts once
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        memo[id(node)] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[id(node)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML would
    silently keep the last)."""

    def compose_document(self):
        """The document's node graph, refused when its aliases expand it past
        MAX_YAML_NODES (a "billion laughs" recipe), before any value is built or shown."""
        node = super().compose_document()
        try:
            size = _expanded_size(node, {}) if node is not None else 0
        except RecursionError:
            size = MAX_YAML_NODES + 1
        if size > MAX_YAML_NODES:
            raise _RecipeProblem(
                f"its aliases expand it to more than {MAX_YAML_NODES:,} values; a recipe holds "
                "a few hundred"
            )
        return node

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _RecipeProblem(
                    f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_recipe(path: str | Path) -> Recipe:
    """Parse a recipe file (YAML mapping) without validating the values yet."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(str(path), f"cannot read recipe ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UserError(str(path), "not a text file (a recipe is UTF-8 YAML)") from None
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader)
    except _RecipeProblem as e:
        raise UserError(str(path), str(e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(str(path), f"invalid YAML{line}") from None
    if tree is None:
        raise UserError(
            str(path),
            "the recipe is empty; a recipe sets at least data.name (softmaso recipes --copy "
            "smoke DIR gives a starting point)",
        )
    if not isinstance(tree, dict):
        raise UserError(str(path), "a recipe is a mapping of keys (data:, model:, ...)")
    tree.setdefault("recipe", path.stem)
    sweep, smoke = _section(tree, "sweep", path), _section(tree, "smoke", path)
    return Recipe(path, tree, sweep, smoke, _report_section(tree, path))


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML recipe, apply `--set` overrides, validate strictly (a sweep is ignored:
    this is the recipe's base point; `softmaso reproduce` runs the sweep)."""
    return read_recipe(path).config(overrides)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe_keys(
    model: type[BaseModel] = RunConfig, prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf: the recipe reference in the README."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += describe_keys(ann, prefix + name + ".")
        else:
            rows.append((prefix + name, repr(f.default), f.description or ""))
    return rows
