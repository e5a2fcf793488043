"""softmaso.data: loaders on small fake files in the real formats, and the per-batch helpers.

Offline: CIFAR and SVHN files are written here in their on-disk formats (pickled batches,
MATLAB .mat), and torchvision's md5 check is patched out as torchvision's own tests do.
"""

import fcntl
import pickle

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaso import data
from softmaso.config import DataConfig
from softmaso.data import (
    BatchSampler,
    ImageData,
    Preprocessor,
    augment,
    default_data_dir,
    fetch,
    load_data,
    make_synthetic,
    stratified_indices,
)
from softmaso.errors import UserError


# ------------------------------------------------------------------------------ fake files
@pytest.fixture
def no_md5(monkeypatch):
    """Accept any file as intact (our fakes do not have the real checksums)."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)


def _cifar_rows(n: int, labels: list[int], marker: int) -> np.ndarray:
    """(n, 3072) uint8 rows as CIFAR stores them: R plane, G plane, B plane, each row-major."""
    rows = np.zeros((n, 3072), dtype=np.uint8)
    rows[:, 1 * 1024 + 2 * 32 + 5] = marker  # channel 1 (G), row 2, column 5
    rows[:, 0] = labels  # channel 0, pixel (0, 0) carries the label: order check
    return rows


def _pickle(path, obj) -> None:
    # The real files were pickled by Python 2 with str keys, which torchvision reads back as
    # str keys (encoding="latin1"); writing str keys reproduces what it sees.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root, n_per_batch=4, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        labels = [(b + i) % 10 for i in range(n_per_batch)]
        rows = _cifar_rows(n_per_batch, labels, marker=77)
        _pickle(folder / f"data_batch_{b}", {"data": rows, "labels": labels})
    labels = [i % 10 for i in range(n_test)]
    _pickle(folder / "test_batch", {"data": _cifar_rows(n_test, labels, 99), "labels": labels})
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return folder


def write_cifar100(root, n_train=7, n_test=3):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [(13 * i + 95) % 100 for i in range(n)]
        rows = _cifar_rows(n, fine, marker=5)
        _pickle(folder / name, {"data": rows, "fine_labels": fine, "coarse_labels": [0] * n})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    return folder


def write_svhn(root, n_train=9, n_test=4):
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = np.zeros((32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N), as SVHN stores it
        x[2, 5, 1, :] = 200  # row 2, column 5, channel 1
        y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # 1..10, 10 is the digit 0
        scipy.io.savemat(root / name, {"X": x, "y": y})


# ---------------------------------------------------------------------- torchvision loaders
def test_cifar10_loads_as_nchw_uint8_with_labels_in_order(tmp_path, no_md5):
    write_cifar10(tmp_path)
    d = load_data(DataConfig(name="cifar10"), data_dir=tmp_path)
    assert d.name == "cifar10" and d.num_classes == 10
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert (d.x_train[:, 1, 2, 5] == 77).all() and (d.x_test[:, 1, 2, 5] == 99).all()
    assert d.x_train.float().sum() == 77 * 20 + d.y_train.sum()  # nothing else is set
    assert torch.equal(d.x_train[:, 0, 0, 0].long(), d.y_train)
    first = [(1 + i) % 10 for i in range(4)]  # data_batch_1 comes first
    assert d.y_train[:4].tolist() == first


def test_cifar100_uses_fine_labels(tmp_path, no_md5):
    write_cifar100(tmp_path)
    d = load_data(DataConfig(name="cifar100"), data_dir=tmp_path)
    assert d.num_classes == 100
    assert d.y_train.tolist() == [(13 * i + 95) % 100 for i in range(7)]
    assert d.x_test.shape == (3, 3, 32, 32) and (d.x_test[:, 1, 2, 5] == 5).all()


def test_svhn_loads_train_and_test_with_digit_zero_as_label_zero(tmp_path, no_md5):
    write_svhn(tmp_path)
    d = load_data(DataConfig(name="svhn"), data_dir=tmp_path)
    assert d.x_train.shape == (9, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert (d.x_train[:, 1, 2, 5] == 200).all() and d.x_train.float().sum() == 200 * 9
    assert d.y_train.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert d.y_test.tolist() == [1, 2, 3, 4] and d.num_classes == 10
    write_svhn(tmp_path / "ten", n_train=10)  # the tenth image has label 10: the digit 0
    d = load_data(DataConfig(name="svhn"), data_dir=tmp_path / "ten")
    assert d.y_train[9] == 0


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "fashion-mnist", "mnist"])
def test_missing_dataset_is_one_line_error_naming_the_fetch_command(tmp_path, name):
    with pytest.raises(UserError) as e:
        load_data(DataConfig(name=name), data_dir=tmp_path)
    msg = str(e.value)
    assert e.value.where == "data.name" and "\n" not in msg
    assert f"softmaso data fetch {name} --data-dir {tmp_path}" in msg
    assert str(tmp_path) in msg


def test_missing_file_is_named(tmp_path, no_md5):
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(UserError, match=r"missing test_batch in .*cifar-10-batches-py"):
        load_data(DataConfig(name="cifar10"), data_dir=tmp_path)


def test_failed_checksum_is_one_line_error(tmp_path):
    write_cifar10(tmp_path)  # fake files: md5 does not match, torchvision raises
    with pytest.raises(UserError, match="corrupt or incomplete") as e:
        load_data(DataConfig(name="cifar10"), data_dir=tmp_path)
    assert "\n" not in str(e.value) and "softmaso data fetch cifar10" in str(e.value)


def test_unreadable_file_is_one_line_error(tmp_path, no_md5):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="corrupt or incomplete") as e:
        load_data(DataConfig(name="cifar10"), data_dir=tmp_path)
    assert "\n" not in str(e.value)


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SOFTMASO_DATA", raising=False)
    assert default_data_dir() == data.Path("data")
    monkeypatch.setenv("SOFTMASO_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


# ----------------------------------------------------------------------------------- fetch
def test_fetch_rejects_unknown_names_before_downloading(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "_torchvision_splits", lambda *a, **k: calls.append(a))
    with pytest.raises(UserError, match="unknown dataset 'emnist'"):
        fetch(["cifar10", "emnist"], tmp_path)
    assert calls == []


def test_fetch_downloads_under_an_exclusive_lock(tmp_path, monkeypatch):
    seen = []

    def fake_download(name, data_dir, *, download):
        lock = data_dir / ".fetch.lock"
        with open(lock) as other, pytest.raises(BlockingIOError):  # a second fetch waits
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append((name, download))

    monkeypatch.setattr(data, "_torchvision_splits", fake_download)
    messages = fetch(["svhn", "cifar10", "svhn"], tmp_path / "new")
    assert seen == [("svhn", True), ("cifar10", True)]
    assert len(messages) == 2 and messages[0].startswith("svhn: downloaded")
    with open(tmp_path / "new" / ".fetch.lock") as lock:  # released afterwards
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_fetch_reports_present_files_and_failures(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    monkeypatch.setattr(data, "_torchvision_splits", lambda *a, **k: None)
    assert "already present" in fetch(["cifar10"], tmp_path)[0]

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable\nmore detail")

    monkeypatch.setattr(data, "_torchvision_splits", offline)
    with pytest.raises(UserError, match="svhn: download failed .*unreachable") as e:
        fetch(["svhn"], tmp_path)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------- npz
def _npz_arrays(layout="nhwc", dtype=np.uint8, n_train=6, n_test=4, channels=3):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (n_train, 8, 9, channels)).astype(dtype)
    x_test = rng.integers(0, 256, (n_test, 8, 9, channels)).astype(dtype)
    if layout == "nchw":
        x_train, x_test = x_train.transpose(0, 3, 1, 2), x_test.transpose(0, 3, 1, 2)
    y_train = np.arange(n_train) % 3
    y_test = np.array([0, 1, 2, 1])[:n_test]
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _write_npz(tmp_path, arrays, name="set.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return DataConfig(name="npz", path=str(path))


def test_npz_both_layouts_give_the_same_nchw_tensors(tmp_path):
    nhwc = load_data(_write_npz(tmp_path, _npz_arrays("nhwc"), "a.npz"))
    nchw = load_data(_write_npz(tmp_path, _npz_arrays("nchw"), "b.npz"))
    expected = torch.from_numpy(_npz_arrays("nhwc")["x_train"]).permute(0, 3, 1, 2)
    assert nhwc.x_train.shape == (6, 3, 8, 9) and nhwc.x_train.dtype == torch.uint8
    assert torch.equal(nhwc.x_train, expected) and torch.equal(nchw.x_train, expected)
    assert torch.equal(nhwc.x_test, nchw.x_test)
    assert nhwc.num_classes == 3  # labels 0..K-1, every class in the training split
    assert nhwc.y_train.dtype == torch.int64


def test_npz_grey_float_and_wide_integer_inputs(tmp_path):
    grey = load_data(_write_npz(tmp_path, _npz_arrays(channels=1), "g.npz"))
    assert grey.x_train.shape == (6, 1, 8, 9)
    floats = load_data(_write_npz(tmp_path, _npz_arrays(dtype=np.float64), "f.npz"))
    assert floats.x_train.dtype == torch.float32
    wide = _npz_arrays(dtype=np.int64)
    wide["y_train"] = wide["y_train"].astype(np.float32)[:, None]  # (N, 1) integral floats
    d = load_data(_write_npz(tmp_path, wide, "w.npz"))
    assert d.x_train.dtype == torch.uint8 and d.y_train.tolist() == [0, 1, 2, 0, 1, 2]


def _bad(arrays, **changes):
    out = dict(arrays)
    for key, value in changes.items():
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


BAD_NPZ = {
    "missing array": (_bad(_npz_arrays(), y_test=None), r"missing array\(s\) y_test \(present"),
    "image ndim": (_bad(_npz_arrays(), x_test=np.zeros((4, 8, 9), np.uint8)), "x_test .*4-D"),
    "label count": (_bad(_npz_arrays(), y_train=np.arange(5) % 3), "y_train has 5 labels"),
    "label ndim": (_bad(_npz_arrays(), y_train=np.zeros((6, 2), int)), "y_train has shape"),
    "shapes differ": (
        _bad(_npz_arrays(), x_test=np.zeros((4, 8, 8, 3), np.uint8)),
        "x_train images have shape .* but x_test",
    ),
    "no channel axis": (
        _bad(_npz_arrays(), x_train=np.zeros((6, 8, 9, 5)), x_test=np.zeros((4, 8, 9, 5))),
        "no channel axis",
    ),
    "fractional labels": (_bad(_npz_arrays(), y_test=np.array([0, 1.5, 2, 0])), "y_test .*integer"),
    "negative labels": (_bad(_npz_arrays(), y_train=np.array([0, 1, -1, 0, 1, 2])), "negative"),
    "mixed pixel types": (
        _bad(_npz_arrays(), x_test=np.zeros((4, 8, 9, 3), np.float32)),
        "x_train is uint8 but x_test is float32",
    ),
    "integers beyond 255": (
        _bad(_npz_arrays(), x_train=np.full((6, 8, 9, 3), 300)),
        r"x_train has integer pixels in \[300, 300\]",
    ),
    "empty split": (
        _bad(_npz_arrays(), x_test=np.zeros((0, 8, 9, 3), np.uint8), y_test=np.zeros(0, int)),
        "x_test has no images",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_is_one_line_error_naming_file_and_array(tmp_path, case):
    arrays, pattern = BAD_NPZ[case]
    cfg = _write_npz(tmp_path, arrays)
    with pytest.raises(UserError, match=pattern) as e:
        load_data(cfg)
    assert e.value.where == cfg.path and "\n" not in str(e.value)


def test_npz_path_problems(tmp_path):
    with pytest.raises(UserError, match="needs data.path") as e:
        load_data(DataConfig(name="npz"))
    assert e.value.where == "data.path"
    with pytest.raises(UserError, match="no such file") as e:
        load_data(DataConfig(name="npz", path=str(tmp_path / "absent.npz")))
    assert e.value.where == "data.path"
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a readable .npz") as e:
        load_data(DataConfig(name="npz", path=str(text)))
    assert e.value.where == str(text) and "\n" not in str(e.value)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(UserError, match="not a readable .npz"):
        load_data(DataConfig(name="npz", path=str(single)))


# ---------------------------------------------------------------------------------- subset
def test_subset_keeps_class_proportions_and_ignores_the_run_seed():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)[torch.randperm(100)]
    keep = stratified_indices(y, 20, 4)
    assert torch.bincount(y[keep], minlength=4).tolist() == [10, 6, 3, 1]
    assert torch.equal(keep, torch.sort(keep).values) and len(keep.unique()) == 20
    torch.manual_seed(123)  # the global seed must not matter
    assert torch.equal(keep, stratified_indices(y, 20, 4))
    assert torch.bincount(y[stratified_indices(y, 4, 4)], minlength=4).tolist() == [1, 1, 1, 1]
    assert len(stratified_indices(y, 3, 4)) == 3
    assert torch.equal(stratified_indices(y, 500, 4), torch.arange(100))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=12).filter(lambda c: sum(c) > 0),
    frac=st.floats(0.01, 1.5),
)
def test_subset_sizes_property(counts, frac):
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    n = max(1, round(frac * len(y)))
    kept = torch.bincount(y[stratified_indices(y, n, len(counts))], minlength=len(counts))
    counts_t = torch.tensor(counts)
    assert int(kept.sum()) == min(n, len(y)) and (kept <= counts_t).all()
    present = counts_t > 0
    if n >= int(present.sum()):
        assert (kept[present] >= 1).all()
    exact = counts_t.double() * min(n, len(y)) / len(y)
    if (exact[present] >= 1).all():
        assert ((kept - exact).abs() < 1).all()


def test_subset_in_load_data_applies_to_both_splits():
    d = load_data(DataConfig(name="synthetic", synthetic_train=1000, subset=300))
    assert len(d.y_train) == 300 and len(d.y_test) == 200  # the test split has only 200
    assert torch.bincount(d.y_train).tolist() == [30] * 10


# ------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_balanced_and_cifar_shaped():
    a = load_data(DataConfig(name="synthetic", synthetic_train=503))
    b = load_data(DataConfig(name="synthetic", synthetic_train=503))
    assert a.x_train.shape == (503, 3, 32, 32) and a.x_test.shape == (100, 3, 32, 32)
    assert a.x_train.dtype == torch.uint8 and a.num_classes == 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    counts = torch.bincount(a.y_train, minlength=10)
    assert counts.max() - counts.min() <= 1
    hundred = make_synthetic(100, 1000, 200)
    assert torch.bincount(hundred.y_train).tolist() == [10] * 100
    assert not torch.equal(make_synthetic(10, 50, 10, seed=1).x_train, a.x_train[:50])


def test_synthetic_is_learnable_by_texture_but_not_by_pixels_or_colour():
    d = make_synthetic(10, 2000, 400)

    def nearest_mean_accuracy(features):  # features: (N, F) for each split
        train, test = (features(x) for x in (d.x_train, d.x_test))
        means = torch.stack([train[d.y_train == k].mean(0) for k in range(10)])  # (K, F)
        return (torch.cdist(test, means).argmin(1) == d.y_test).float().mean().item()

    pre = Preprocessor("per_image", d.x_train)
    colour = nearest_mean_accuracy(lambda x: x.float().mean(dim=(2, 3)))  # (N, 3)
    pixels = nearest_mean_accuracy(lambda x: F.avg_pool2d(pre(x), 4).flatten(1))  # (N, 192)
    spectrum = nearest_mean_accuracy(lambda x: torch.fft.rfft2(pre(x)).abs().flatten(1))
    assert colour < 0.2 and pixels < 0.2  # chance: 0.1
    assert spectrum > 0.9  # amplitude spectra (phase-free) separate the classes


# ---------------------------------------------------------------------------- preprocessor
def test_per_image_centres_each_image_and_scales_it_to_unit_peak():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    x[4] = 17  # a constant image
    out = Preprocessor("per_image", x)(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out[:4].mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-6)
    assert torch.allclose(out[:4].abs().amax(dim=(1, 2, 3)), torch.ones(4))
    assert torch.equal(out[4], torch.zeros(3, 8, 8))


def test_per_channel_standardises_with_training_statistics():
    x = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8)
    x[:, 2] = x[:, 2] // 4  # a darker channel
    pre = Preprocessor("per_channel", x)
    out = pre(x)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)
    assert torch.allclose(pre(x[:3]), out[:3])  # statistics fixed at construction
    flat = Preprocessor("per_channel", torch.zeros(2, 1, 3, 3, dtype=torch.uint8))
    assert torch.isfinite(flat(torch.ones(1, 1, 3, 3))).all()


def test_scale_divides_uint8_only():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    pre = Preprocessor("scale", x)
    assert torch.allclose(pre(x), torch.tensor([0.0, 0.2, 1.0]).view(1, 1, 1, 3))
    assert torch.equal(pre(torch.full((1, 1, 1, 2), 0.5)), torch.full((1, 1, 1, 2), 0.5))
    with pytest.raises(UserError, match="data.preprocess"):
        Preprocessor("zca", x)


# --------------------------------------------------------------------------------- augment
def _draw_of(result: torch.Tensor, image: torch.Tensor) -> tuple[int, int, bool] | None:
    """The (row offset, column offset, flipped) of `result` as a crop (pad 4) of `image`."""
    _, h, w = image.shape
    padded = F.pad(image, (4, 4, 4, 4))
    for i in range(9):
        for j in range(9):
            crop = padded[:, i : i + h, j : j + w]
            for flipped in (False, True):
                if torch.equal(result, crop.flip(-1) if flipped else crop):
                    return i, j, flipped
    return None


def test_augment_is_a_padded_crop_and_flip_and_is_deterministic():
    x = torch.arange(1, 32 * 2 * 6 * 7 + 1, dtype=torch.float32).view(32, 2, 6, 7)
    out = augment(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    draws = [_draw_of(res, img) for img, res in zip(x, out, strict=True)]
    assert None not in draws
    assert 4 < sum(flipped for _, _, flipped in draws) < 28  # about half are flipped
    assert len({(i, j) for i, j, _ in draws}) > 10  # offsets vary per image
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(4)))


def test_augment_varies_per_image_and_keeps_channels_last():
    x = torch.rand(64, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)
    unchanged = [torch.equal(a, b) for a, b in zip(out, x, strict=True)]
    assert 0 < sum(unchanged) < 16  # identity is 1 of 162 draws; most images change


# ---------------------------------------------------------------------------- batch sampler
def _per_batch_counts(batches, y, k):
    return torch.stack([torch.bincount(y[b], minlength=k) for b in batches])  # (S, K)


def test_balanced_batches_have_equal_class_counts_even_for_imbalanced_data():
    y = torch.cat([torch.full((n,), k) for k, n in enumerate([300, 40, 100, 60, 500])])
    sampler = BatchSampler(y, 25, balanced=True, seed=0)
    batches = sampler.epoch(0)
    assert batches.shape == (sampler.steps_per_epoch, 25) == (40, 25)
    assert batches.dtype == torch.int64
    assert (_per_batch_counts(batches, y, 5) == 5).all()
    small = torch.bincount(batches.flatten(), minlength=len(y))[300:340]  # class 1: 40 images
    assert small.max() - small.min() <= 1 and small.sum() == 200  # revisited, cyclically


def test_balanced_remainder_goes_to_distinct_random_classes():
    y = torch.arange(1000) % 10
    batches = BatchSampler(y, 53, balanced=True, seed=1).epoch(0)
    counts = _per_batch_counts(batches, y, 10)
    assert ((counts == 5) | (counts == 6)).all() and ((counts == 6).sum(1) == 3).all()
    assert len({tuple(row.tolist()) for row in counts}) > 1  # the extra classes vary
    many = BatchSampler(torch.arange(1000) % 100, 50, balanced=True, seed=0).epoch(0)
    assert all(len(torch.unique(b % 100)) == 50 for b in many)  # 50 distinct of 100 classes


def test_balanced_batches_skip_absent_classes():
    y = torch.tensor([0, 2] * 30)  # class 1 absent
    counts = _per_batch_counts(BatchSampler(y, 10, balanced=True, seed=0).epoch(3), y, 3)
    assert (counts[:, 0] == 5).all() and (counts[:, 1] == 0).all()


def test_unbalanced_epoch_is_a_permutation_without_the_last_partial_batch():
    y = torch.arange(103) % 7
    batches = BatchSampler(y, 10, balanced=False, seed=0).epoch(0)
    assert batches.shape == (10, 10) and len(batches.flatten().unique()) == 100


@pytest.mark.parametrize("balanced", [True, False])
def test_batches_are_deterministic_in_seed_and_epoch(balanced):
    y = torch.arange(500) % 10
    first = BatchSampler(y, 50, balanced=balanced, seed=7)
    again = BatchSampler(y.clone(), 50, balanced=balanced, seed=7)  # e.g. after a resume
    torch.manual_seed(99)  # the global RNG must not matter
    assert torch.equal(first.epoch(4), again.epoch(4))
    assert not torch.equal(first.epoch(4), first.epoch(5))
    assert not torch.equal(first.epoch(4), BatchSampler(y, 50, balanced=balanced, seed=8).epoch(4))


def test_image_data_to_moves_every_tensor():
    d = make_synthetic(10, 20, 10)
    moved = d.to("cpu")
    assert isinstance(moved, ImageData) and moved.num_classes == 10 and moved.name == "synthetic"
    assert all(t.device.type == "cpu" for t in (moved.x_train, moved.y_train, moved.x_test))
