"""Datasets as whole tensors, plus the per-batch pieces a training loop needs.

A dataset is small enough (CIFAR: 50 000 x 3 x 32 x 32 uint8 = 150 MB) to live whole on the
device, so there is no DataLoader: :func:`load_data` returns an :class:`ImageData` of four CPU
tensors (move it with ``.to(device)``); a :class:`BatchSampler` hands out a whole epoch of
index batches at once; :class:`Preprocessor` and :func:`augment` work on a batch where it
lives. Everything random depends only on (seed, epoch), so a resumed run draws the same
batches and the same crops.

Datasets (``data.name``):

- ``cifar10``, ``cifar100``, ``svhn``: torchvision's files under the data directory
  (:func:`default_data_dir`). They are never downloaded while loading: ``softmaso data fetch
  NAME`` (:func:`fetch`) does that once. SVHN uses its ``train`` and ``test`` splits, not
  ``extra`` [authors].
- ``fashion-mnist``, ``mnist``, ``kmnist``: 28 x 28 grey images (one channel, fed to the
  network as they are), torchvision's IDX files under ``DATA/<FashionMNIST|MNIST|KMNIST>/raw``.
  ``softmaso data fetch NAME`` downloads them; ``softmaso data fetch NAME --from DIR``
  (:func:`import_idx`) takes the four IDX files from a local folder, e.g. Debian's
  ``/usr/share/datasets/fashion-mnist``.
- ``synthetic``: generated offline, CIFAR-shaped, the same for every run (:func:`make_synthetic`).
- ``npz``: your own file with arrays ``x_train, y_train, x_test, y_test``. Images are N x H x
  W x C or N x C x H x W with C in {1, 3} (NHWC is assumed when the last axis is 1 or 3).
  uint8 images are pixel values in [0, 255]; integer images with values in [0, 255] become
  uint8; float images are kept, as float32, exactly as given: ``preprocess: scale`` divides
  uint8 by 255 but leaves floats alone (so give floats already in [0, 1]), while
  ``per_image`` and ``per_channel`` do not care about the units. Labels are integers 0..K-1;
  K is the largest training label + 1; every class 0..K-1 must be in the training split, at
  least two classes, and no test label outside them. Pixels must be finite, and images at
  least 9 x 9 (the smallest largeCNN takes).

``data.subset: N`` keeps a stratified N images of each split, chosen with a fixed generator
(seed 0), so every seed of a sweep trains and tests on the same images.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from softmaso.config import DataConfig
from softmaso.errors import UserError, first_line
from softmaso.io import atomic_group, ensure_writable_dir, remove_stale_temps

# The datasets `softmaso data fetch` downloads, and the torchvision class that reads each.
_TORCHVISION_CLASSES = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "svhn": "SVHN",
    "fashion-mnist": "FashionMNIST",
    "mnist": "MNIST",
    "kmnist": "KMNIST",
}
FETCHABLE = tuple(_TORCHVISION_CLASSES)
IDX_DATASETS = ("fashion-mnist", "mnist", "kmnist")  # the MNIST family, 28 x 28 grey
IDX_FILES = (  # the four files of an MNIST-family release, uncompressed names
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# md5 of the uncompressed IDX files of the original releases. torchvision publishes md5s of
# the .gz files only, and repackaged copies (Debian's dataset-fashion-mnist) are recompressed,
# so their .gz differs while the content is the same. These are the published content
# checksums of Fashion-MNIST and MNIST (the values other dataset libraries check); none is
# known to us for KMNIST, whose files must be the original .gz.
IDX_CONTENT_MD5 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
}
SUBSET_SEED = 0  # the subset is the same for every run seed [ours]
SYNTHETIC_SEED = 0  # the synthetic set is the same for every run seed [ours]
_WAVES = 2  # plane waves per synthetic class [ours]
_SAMPLER_TAG = 0x5A17  # separates the sampler's random stream from others seeded by (seed, epoch)
_SPLITS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass
class ImageData:
    """Both splits of a dataset as tensors.

    ``x_*``: (N, C, H, W), uint8 pixel values in [0, 255] (float32 only for float npz input);
    ``y_*``: (N,) int64 class indices in [0, num_classes).
    """

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> ImageData:
        """A copy with all four tensors on `device`."""
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in _SPLITS})


def default_data_dir() -> Path:
    """Where datasets live: ``$SOFTMASO_DATA`` if set, else ``./data`` (relative to the cwd)."""
    env = os.environ.get("SOFTMASO_DATA")
    return Path(env) if env else Path("data")


# ------------------------------------------------------------------------------- loading
def load_data(cfg: DataConfig, *, data_dir: Path | None = None) -> ImageData:
    """The dataset of `cfg` as CPU tensors (subset applied); never downloads anything."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if cfg.name == "synthetic":
        n_test = max(cfg.synthetic_train // 5, 1)
        data = _synthetic_cached(cfg.classes, cfg.synthetic_train, n_test)
    elif cfg.name == "npz":
        data = _load_npz(cfg.path)
    else:
        data = _load_torchvision(cfg.name, data_dir)
    if cfg.subset is not None:
        keep_train = stratified_indices(data.y_train, cfg.subset, data.num_classes)
        keep_test = stratified_indices(data.y_test, cfg.subset, data.num_classes)
        data = dataclasses.replace(
            data,
            x_train=data.x_train[keep_train],
            y_train=data.y_train[keep_train],
            x_test=data.x_test[keep_test],
            y_test=data.y_test[keep_test],
        )
    return data


def stratified_indices(y: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """Sorted indices of min(n, len(y)) items of `y` (N,), class proportions preserved.

    Each class gets its share of `n` rounded by largest remainder, and at least one image
    when n >= the number of classes present. Members are drawn with a fixed generator
    (seed 0), independent of the run seed.
    """
    y = y.cpu()
    if n >= len(y):
        return torch.arange(len(y))
    quota = _quotas(torch.bincount(y, minlength=num_classes), n)  # (K,)
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    perm = torch.randperm(len(y), generator=gen)  # (N,)
    by_class = perm[torch.argsort(y[perm], stable=True)]  # (N,) random order within a class
    labels = y[by_class]  # (N,) sorted
    starts = torch.searchsorted(labels, labels, right=False)  # (N,) first slot of own class
    rank = torch.arange(len(y)) - starts  # (N,) position within the class
    return torch.sort(by_class[rank < quota[labels]]).values


def _quotas(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Images to keep per class (K,), summing to n < counts.sum(), never above counts."""
    exact = counts.double() * n / counts.sum()  # (K,)
    quota = exact.floor().long()
    if n >= int((counts > 0).sum()):
        quota = torch.maximum(quota, counts.clamp(max=1))
    short = n - int(quota.sum())
    if short > 0:  # largest remainders first; those classes have room for one more
        quota[torch.argsort(exact - quota, descending=True)[:short]] += 1
    for _ in range(-short):  # the at-least-one rule overshot: trim the most over-served
        excess = torch.where(quota > 1, quota - exact, torch.tensor(-np.inf, dtype=exact.dtype))
        quota[int(excess.argmax())] -= 1
    return quota


# -------------------------------------------------------------------- torchvision datasets
def _torchvision_class(name: str):
    from torchvision import datasets

    return getattr(datasets, _TORCHVISION_CLASSES[name])


def _expected_files(name: str, data_dir: Path) -> tuple[Path, list[str]]:
    """(folder, file names) that torchvision reads for dataset `name` (both splits)."""
    cls = _torchvision_class(name)
    if name in IDX_DATASETS:
        return data_dir / _TORCHVISION_CLASSES[name] / "raw", list(IDX_FILES)
    if name == "svhn":
        return data_dir, [cls.split_list[s][1] for s in ("train", "test")]
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return data_dir / cls.base_folder, files


def _torchvision_splits(name: str, data_dir: Path, *, download: bool) -> list:
    """torchvision's [train, test] dataset objects (reading every file, md5 included)."""
    cls = _torchvision_class(name)
    if name == "svhn":
        return [cls(data_dir, split=s, download=download) for s in ("train", "test")]
    return [cls(data_dir, train=t, download=download) for t in (True, False)]


def _load_torchvision(name: str, data_dir: Path) -> ImageData:
    data_dir = data_dir.absolute()
    fetch_command = f"softmaso data fetch {name} --data-dir {data_dir}"
    folder, files = _expected_files(name, data_dir)
    absent = [f for f in files if not (folder / f).is_file()]
    if absent:
        no_folder = folder != data_dir and not folder.is_dir()
        missing = f"folder {folder}" if no_folder else f"{', '.join(absent)} in {folder}"
        raise UserError(
            "data.name",
            f"{name} is not in the data directory: missing {missing}; "
            f"download it with `{fetch_command}` "
            "(or point $SOFTMASO_DATA or --data-dir to where it is)",
        )
    try:
        tensors = []  # x (N, C, H, W) uint8, y (N,) int64 of each split
        for split in _torchvision_splits(name, data_dir, download=False):
            if name in IDX_DATASETS:
                x = split.data.numpy()[:, None]  # (N, 28, 28) -> (N, 1, 28, 28): one channel
                y = split.targets.numpy()
            elif name == "svhn":
                x, y = split.data, split.labels  # (N, C, H, W) already
            else:
                x = split.data.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
                y = split.targets
            tensors.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)))
            tensors.append(torch.as_tensor(np.asarray(y), dtype=torch.int64))
    except Exception as e:  # any failure to read a third-party file means it is damaged
        raise UserError(
            "data.name",
            f"{name} files in {folder} are corrupt or incomplete "
            f"({type(e).__name__}: {first_line(e)}); delete them and run `{fetch_command}`",
        ) from None
    return ImageData(name, 100 if name == "cifar100" else 10, *tensors)


# ----------------------------------------------------------------------------------- fetch
def fetch(names: list[str], data_dir: Path) -> list[str]:
    """Download and verify (md5) datasets into `data_dir`; one message per dataset.

    An exclusive lock on ``data_dir/.fetch.lock`` makes concurrent fetches wait for each
    other instead of downloading the same files twice. Files already present and intact
    are not downloaded again.
    """
    for name in names:
        if name not in FETCHABLE:
            raise UserError(
                "data fetch",
                f"unknown dataset {name!r} (fetchable: {', '.join(FETCHABLE)}; "
                "synthetic is generated and npz is your own file)",
            )
    data_dir = ensure_writable_dir(Path(data_dir), where="--data-dir").absolute()
    messages = []
    with open(data_dir / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        for name in dict.fromkeys(names):
            folder, files = _expected_files(name, data_dir)
            had_all = all((folder / f).is_file() for f in files)
            try:
                _torchvision_splits(name, data_dir, download=True)
            except Exception as e:  # network, disk, checksum: all mean the fetch failed
                raise UserError(
                    "data fetch", f"{name}: download failed ({type(e).__name__}: {first_line(e)})"
                ) from None
            how = "already present, checksums verified" if had_all else "downloaded and verified"
            messages.append(f"{name}: {how} in {folder}")
    return messages


def import_idx(name: str, source: Path, data_dir: Path) -> str:
    """Take an MNIST-family release's four IDX files (gz or not) from the folder `source`,
    check each, and place them where the loader reads them; one message.

    A file passes if its bytes are torchvision's published .gz (md5), or if its uncompressed
    content has the release's published md5 (:data:`IDX_CONTENT_MD5`; a recompressed copy
    such as Debian's passes this way). Every file is read and checked before any is written;
    then all four appear at once (atomic renames), so a failure leaves nothing half-copied.
    """
    if name not in IDX_DATASETS:
        raise UserError(
            "--from", f"imports IDX files of {', '.join(IDX_DATASETS)}; {name!r} is not one"
        )
    source = Path(source)
    if not source.is_dir():
        raise UserError("--from", f"{str(source)!r} is not a folder")
    published = {f.removesuffix(".gz"): md5 for f, md5 in _torchvision_class(name).resources}
    contents = {f: _checked_idx(name, source, f, published[f]) for f in IDX_FILES}
    folder, _ = _expected_files(name, Path(data_dir).absolute())
    ensure_writable_dir(folder, where="--data-dir")
    for fname in contents:  # what a fetch killed mid-copy left
        remove_stale_temps(folder / fname)
    with atomic_group() as stage:
        for fname, data in contents.items():
            stage(folder / fname, lambda tmp, data=data: tmp.write_bytes(data))
    return f"{name}: {len(contents)} files from {source} verified (md5) and placed in {folder}"


def _checked_idx(name: str, source: Path, fname: str, published_md5: str) -> bytes:
    """The uncompressed content of IDX file `fname` of `name` in `source`, checked by md5."""
    path = next((p for p in (source / f"{fname}.gz", source / fname) if p.is_file()), None)
    if path is None:
        raise UserError(
            "--from",
            f"{fname}.gz (or {fname}) is missing in {source}; {name} needs "
            f"{', '.join(f + '.gz' for f in IDX_FILES)}",
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError("--from", f"cannot read {path} ({e.strerror or e})") from None
    file_md5 = hashlib.md5(raw).hexdigest()
    if file_md5 == published_md5:  # the original .gz
        return gzip.decompress(raw)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError("--from", f"{path} is a damaged gzip file ({e})") from None
    want = IDX_CONTENT_MD5.get(name, {}).get(fname)
    if want is None:
        raise UserError(
            "--from",
            f"{path} has md5 {file_md5}, "
            f"expected torchvision's {published_md5} for {fname}.gz (no checksum of the "
            f"uncompressed {name} files is published: give the original .gz files)",
        )
    got = hashlib.md5(raw).hexdigest()
    if got != want:
        raise UserError(
            "--from",
            f"{path} is not {name}'s {fname}: its uncompressed md5 is {got}, expected {want}",
        )
    return raw


# ------------------------------------------------------------------------------------- npz
def _load_npz(path: str | None) -> ImageData:
    """Read and validate an npz dataset (the rules are in this module's docstring)."""
    if not path:
        raise UserError("data.path", "data.name: npz needs data.path, the .npz file to read")
    p = Path(path)
    if not p.is_file():
        raise UserError("data.path", f"no such file: {p}")
    where = str(p)
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # zip, pickle and format errors all mean "not a usable npz"
        raise UserError(
            where, f"not a readable .npz file ({type(e).__name__}: {first_line(e)})"
        ) from None
    missing = [k for k in _SPLITS if k not in arrays]
    if missing:
        raise UserError(
            where,
            f"missing array(s) {', '.join(missing)} (present: "
            f"{', '.join(sorted(arrays)) or 'none'}); an npz dataset needs {', '.join(_SPLITS)}",
        )
    x_tr, x_te = _npz_images(arrays, where)
    y_tr = _npz_labels(arrays, "y_train", len(x_tr), where)
    y_te = _npz_labels(arrays, "y_test", len(x_te), where)
    # K classes: labels 0..K-1, each present in the training split, at least 2 of them, and
    # the test split holds no class the training split lacks.
    present = torch.unique(y_tr)
    k = int(present.max()) + 1
    if len(present) < 2:
        raise UserError(
            where,
            f"array y_train holds a single class ({int(present[0])}); "
            "a classifier needs at least 2",
        )
    if len(present) < k:
        raise UserError(
            where,
            f"array y_train has labels up to {k - 1} but only {len(present)} distinct classes; "
            f"labels must be 0..K-1 with every class in the training split ({k - len(present)} "
            "missing)",
        )
    unseen = torch.unique(y_te[y_te >= k])  # y_train holds every class below k
    if len(unseen):
        raise UserError(
            where,
            f"array y_test has {len(unseen)} label(s) absent from y_train (first: "
            f"{int(unseen[0])}); y_train's labels are 0..{k - 1}",
        )
    return ImageData("npz", k, x_tr, y_tr, x_te, y_te)


def _npz_images(arrays: dict[str, np.ndarray], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_train, x_test) as (N, C, H, W) tensors, validated against each other."""
    images = {key: arrays[key] for key in ("x_train", "x_test")}
    x_tr, x_te = images.values()
    for key, x in images.items():
        if x.ndim != 4:
            raise UserError(
                where,
                f"array {key} has shape {x.shape}; images must be 4-D, "
                "N x H x W x C or N x C x H x W with C = 1 or 3",
            )
        if len(x) == 0:
            raise UserError(where, f"array {key} has no images")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise UserError(
            where,
            f"x_train images have shape {x_tr.shape[1:]} but x_test images "
            f"{x_te.shape[1:]}; both splits need the same image shape",
        )
    if x_tr.shape[-1] in (1, 3):
        perm = (0, 3, 1, 2)  # NHWC -> NCHW
    elif x_tr.shape[1] in (1, 3):
        perm = (0, 1, 2, 3)
    else:
        raise UserError(
            where,
            f"x_train has shape {x_tr.shape}: no channel axis (neither the last "
            "nor the second axis is 1 or 3)",
        )
    kinds = {_pixel_kind(x, key, where) for key, x in images.items()}
    if len(kinds) > 1:
        raise UserError(
            where,
            f"x_train is {x_tr.dtype} but x_test is {x_te.dtype}; give both splits "
            "as integers in [0, 255] or both as floats",
        )
    floats = kinds == {"float"}
    if floats:
        for key, x in images.items():
            bad = int(np.count_nonzero(~np.isfinite(x)))
            if bad:
                raise UserError(
                    where,
                    f"array {key} has {bad} NaN or infinite pixel value(s); pixels must be finite",
                )
    dtype = np.float32 if floats else np.uint8
    return tuple(
        torch.from_numpy(np.ascontiguousarray(x.transpose(perm), dtype=dtype)) for x in (x_tr, x_te)
    )


def _pixel_kind(x: np.ndarray, key: str, where: str) -> str:
    """'float' or 'uint8' (integers in [0, 255]); UserError for anything else."""
    if np.issubdtype(x.dtype, np.floating):
        return "float"
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_:
        if x.min() >= 0 and x.max() <= 255:
            return "uint8"
        raise UserError(
            where,
            f"array {key} has integer pixels in [{x.min()}, {x.max()}]; integer "
            "images must lie in [0, 255] (or save them as float)",
        )
    raise UserError(where, f"array {key} has dtype {x.dtype}; images must be uint8 or float")


def _npz_labels(arrays: dict[str, np.ndarray], key: str, n: int, where: str) -> torch.Tensor:
    """Labels (N,) int64 >= 0 from an (N,) or (N, 1) array of integers."""
    y = arrays[key]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(where, f"array {key} has shape {y.shape}; labels must be (N,)")
    x_key = "x" + key[1:]
    if len(y) != n:
        raise UserError(where, f"array {key} has {len(y)} labels but {x_key} has {n} images")
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == y.round())
    )
    if not integral or y.dtype == np.bool_:
        raise UserError(where, f"array {key} ({y.dtype}) must hold integer class labels 0..K-1")
    if y.min() < 0:
        raise UserError(where, f"array {key} has negative label {y.min()}; labels are 0..K-1")
    return torch.from_numpy(y.astype(np.int64))


# ------------------------------------------------------------------------------- synthetic
@functools.lru_cache(maxsize=4)
def _synthetic_cached(num_classes: int, n_train: int, n_test: int) -> ImageData:
    """The fixed-seed synthetic set, generated once per process (a smoke grid reuses it)."""
    return make_synthetic(num_classes, n_train, n_test, seed=SYNTHETIC_SEED)


def make_synthetic(num_classes: int, n_train: int, n_test: int, seed: int = 0) -> ImageData:
    """A CIFAR-shaped (3 x 32 x 32 uint8) classification set that a small CNN learns fast.

    A class is a texture: the sum of two coloured plane waves (sinusoidal gratings) with a
    random orientation, a random period of 4-17 pixels and a random colour direction each,
    fixed per class. An image of the class draws a random phase per wave (so the class-mean
    image is flat and no pixel template or linear classifier on pixels beats chance), a
    random contrast (x0.6-1.4), a smooth random background, a random colour offset (so the
    mean colour carries no class) and pixel noise. Oriented filters, a ReLU and global
    pooling (what a CNN starts with) separate the classes. Classes are balanced (sizes
    differ by at most one), shuffled. Same arguments, same tensors.
    """
    gen = torch.Generator().manual_seed(seed)
    angle = torch.pi * torch.rand(num_classes, _WAVES, generator=gen)  # (K, 2) rad
    cycles = 1 / 17 + (1 / 4 - 1 / 17) * torch.rand(num_classes, _WAVES, generator=gen)  # /pixel
    direction = torch.stack([angle.cos(), angle.sin()], dim=-1)  # (K, 2, 2): x, y
    k = 2 * torch.pi * cycles[..., None] * direction  # (K, 2, 2) wave vectors, rad/pixel
    colour = torch.randn(num_classes, _WAVES, 3, generator=gen)  # (K, 2, 3)
    colour = colour / colour.norm(dim=-1, keepdim=True)
    y_train, y_test = (
        (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]  # (n,)
        for n in (n_train, n_test)
    )
    x_train, x_test = (_render_chunked(k, colour, y, gen) for y in (y_train, y_test))
    return ImageData("synthetic", num_classes, x_train, y_train, x_test, y_test)


def _render_chunked(k, colour, y, gen, chunk: int = 4096) -> torch.Tensor:
    """_render in chunks of images, so float temporaries stay small (50,000 images: < 1 GiB)."""
    parts = [
        _render(k[y[i : i + chunk]], colour[y[i : i + chunk]], gen) for i in range(0, len(y), chunk)
    ]
    return torch.cat(parts) if parts else torch.empty(0, 3, 32, 32, dtype=torch.uint8)


def _render(k: torch.Tensor, colour: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Images (N, 3, 32, 32) uint8 from W waves per image: wave vectors `k` (N, W, 2) in
    rad/pixel (x, y components) and unit colour directions `colour` (N, W, 3)."""
    n, w = k.shape[:2]
    pos = torch.arange(32.0)  # (32,) pixel coordinate
    phase = 2 * torch.pi * torch.rand(n, w, 1, generator=gen)  # (N, W, 1)
    a = k[..., :1] * pos + phase  # (N, W, 32) along x
    b = k[..., 1:] * pos  # (N, W, 32) along y
    # cos(a_x + b_y) = cos a_x cos b_y - sin a_x sin b_y: two outer products, no 2-D cos
    wave = (
        b.cos()[..., :, None] * a.cos()[..., None, :]
        - b.sin()[..., :, None] * a.sin()[..., None, :]
    )  # (N, W, 32, 32)
    texture = torch.einsum("nwhx,nwc->nchx", wave, colour)  # (N, 3, 32, 32)
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)  # (N, 1, 1, 1)
    coarse = torch.randn(n, 3, 4, 4, generator=gen)  # smooth background: 4 x 4 noise, upsampled
    background = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    background = background / background.std(dim=(1, 2, 3), keepdim=True)  # (N, 3, 32, 32)
    offset = torch.randn(n, 3, 1, 1, generator=gen)  # (N, 3, 1, 1)
    noise = torch.randn(n, 3, 32, 32, generator=gen)  # (N, 3, 32, 32)
    x = 128 + 40 * contrast * texture + 20 * background + 24 * offset + 20 * noise  # grey levels
    return x.round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------ per-batch helpers
class Preprocessor:
    """Pixels -> network input, on the batch's device; built from the TRAIN split.

    Modes (``data.preprocess``):

    - ``per_image`` [authors]: each image minus its own mean (over all pixels and channels),
      divided by its own max |value|, so every image lies in [-1, 1] with mean 0. A constant
      image becomes all zeros.
    - ``per_channel``: (x - mean_c) / std_c with the channel statistics of the training split,
      in the input's units (computed once, here).
    - ``scale``: uint8 / 255, in [0, 1]; float input is taken as already scaled.
    """

    MODES = ("per_image", "per_channel", "scale")

    def __init__(self, mode: str, x_train: torch.Tensor):
        if mode not in self.MODES:
            raise UserError("data.preprocess", f"{mode!r} is not one of {', '.join(self.MODES)}")
        self.mode = mode
        self.mean = self.std = None
        if mode == "per_channel":
            # (1, C, 1, 1) float32 each, on the data's device: a compiled step takes them there
            self.mean, self.std = (t.to(x_train.device) for t in _channel_stats(x_train))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 or float -> (B, C, H, W) float32 on x's device."""
        if self.mode == "scale":
            return x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if self.mode == "per_channel":
            if self.mean.device != x.device:
                self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
            return (x.float() - self.mean) / self.std
        x = x.float()
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)  # per_image
        peak = x.abs().amax(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return x / torch.where(peak > 0, peak, torch.ones_like(peak))


def _channel_stats(x: torch.Tensor, chunk: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (ddof 0) per channel of x (N, C, H, W), each (1, C, 1, 1) float32 on CPU.

    Accumulated in float64 over chunks of images, so a uint8 dataset is never copied whole.
    """
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64, device=x.device)
    squares = torch.zeros(c, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].double()  # (b, C, H, W)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = x.numel() // c
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(t.float().cpu().view(1, c, 1, 1) for t in (mean, std))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding of 4 pixels each side) and random horizontal flip.

    x: (B, C, H, W) float, already preprocessed (padding is 0 in the network's units);
    `generator` lives on x's device. One draw per image, no loop over images; the result is
    a new (B, C, H, W) tensor in x's memory format.
    """
    b, c, h, w = x.shape
    dev = x.device
    dy, dx = torch.randint(0, 9, (2, b, 1), generator=generator, device=dev)  # (B, 1) each
    flip = torch.rand(b, 1, generator=generator, device=dev) < 0.5  # (B, 1)
    ar_w = torch.arange(w, device=dev)
    rows = dy + torch.arange(h, device=dev)  # (B, H) rows of the padded image
    cols = dx + torch.where(flip, w - 1 - ar_w, ar_w)  # (B, W)
    padded = F.pad(x, (4, 4, 4, 4))  # (B, C, H+8, W+8)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 8))  # (B, C, H, W+8)
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # (B, C, H, W)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class BatchSampler:
    """An epoch of mini-batch indices at once, deterministic in (seed, epoch).

    ``balanced=True`` [authors]: each batch holds batch_size // K images of each of the K
    classes present in `y`, and the remaining batch_size % K images come from as many
    distinct classes picked at random per batch. Within a class, images are drawn from
    random permutations of that class, one after the other, so a class smaller than average
    is revisited within an epoch (SVHN is imbalanced) and a larger one is partly left out.
    ``balanced=False``: a random permutation of all images. Either way an epoch has
    len(y) // batch_size steps (the last partial batch is dropped).
    """

    def __init__(self, y: torch.Tensor, batch_size: int, *, balanced: bool, seed: int):
        self.device = y.device
        self.n = len(y)
        self.batch_size = batch_size
        self.balanced = balanced
        self.seed = seed
        self.steps_per_epoch = self.n // batch_size
        y_cpu = y.cpu()
        self.members = [  # indices of each present class, in class order
            torch.nonzero(y_cpu == k).flatten() for k in torch.unique(y_cpu).tolist()
        ]

    def epoch(self, epoch: int) -> torch.Tensor:
        """(steps_per_epoch, batch_size) int64 indices into y, on y's device."""
        state = np.random.SeedSequence([self.seed, epoch, _SAMPLER_TAG]).generate_state(2)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        if self.steps_per_epoch == 0:
            batches = torch.empty(0, self.batch_size, dtype=torch.int64)
        elif self.balanced:
            batches = self._balanced(gen)
        else:
            flat = torch.randperm(self.n, generator=gen)[: self.steps_per_epoch * self.batch_size]
            batches = flat.view(self.steps_per_epoch, self.batch_size)
        return batches.to(self.device)

    def _balanced(self, gen: torch.Generator) -> torch.Tensor:
        steps, bs, k = self.steps_per_epoch, self.batch_size, len(self.members)
        base, extra = divmod(bs, k)
        fixed = torch.arange(k).repeat_interleave(base).expand(steps, k * base)  # (S, K*base)
        chosen = _random_orders(steps, k, gen)[:, :extra]  # (S, extra) distinct classes
        slots = torch.cat([fixed, chosen], dim=1).flatten()  # (S*bs,) class of each slot
        order = torch.argsort(slots, stable=True)  # slots grouped by class, batch order kept
        needed = torch.bincount(slots, minlength=k).tolist()  # (K,) slots of each class
        draws = []  # per class, fresh random permutations of its members, one after another
        for members, n in zip(self.members, needed, strict=True):
            reps = -(-n // len(members))
            draws.append(members[_random_orders(reps, len(members), gen).flatten()[:n]])
        flat = torch.empty(steps * bs, dtype=torch.int64)
        flat[order] = torch.cat(draws)
        batches = flat.view(steps, bs)
        return batches.gather(1, _random_orders(steps, bs, gen))  # classes mixed in a batch


def _random_orders(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, cols) int64: each row an independent random permutation of range(cols)."""
    return torch.rand(rows, cols, generator=gen).argsort(dim=1, stable=True)
