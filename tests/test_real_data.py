"""Real data offline: the MNIST family through `data fetch --from` and torchvision's IDX loader,
on a real slice of Fashion-MNIST (tests/data/fashion-mnist: 500 + 200 images)."""

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from softmaso import data as data_mod
from softmaso import rundir, training
from softmaso.config import RunConfig, load_recipe
from softmaso.errors import UserError

SLICE = Path(__file__).parent / "data" / "fashion-mnist"


@pytest.fixture
def slice_md5(monkeypatch):
    """The slice's content md5s stand in for the release's (the slice is not the release)."""
    md5 = {
        f: hashlib.md5(gzip.decompress((SLICE / f"{f}.gz").read_bytes())).hexdigest()
        for f in data_mod.IDX_FILES
    }
    monkeypatch.setitem(data_mod.IDX_CONTENT_MD5, "fashion-mnist", md5)
    return md5


def _fetch(cli, source, data_dir, name="fashion-mnist"):
    return cli("data", "fetch", name, "--from", source, "--data-dir", data_dir)


def test_import_places_the_files_where_the_loader_reads_them(cli, tmp_path, slice_md5):
    r = _fetch(cli, SLICE, tmp_path / "d")
    assert r.exit_code == 0, r.output
    raw = tmp_path / "d" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(data_mod.IDX_FILES)
    data = data_mod.load_data(
        RunConfig().data.model_copy(update={"name": "fashion-mnist"}), data_dir=tmp_path / "d"
    )
    assert data.x_train.shape == (500, 1, 28, 28) and data.x_test.shape == (200, 1, 28, 28)
    assert data.x_train.dtype == torch.uint8 and data.num_classes == 10
    assert set(data.y_train.tolist()) == set(range(10))


def test_a_fetch_killed_mid_copy_leaves_nothing_after_the_next(cli, tmp_path, slice_md5):
    raw = tmp_path / "d" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    stale = raw / ".train-images-idx3-ubyte.k3j2.tmp"  # what a SIGKILL mid-write leaves
    stale.write_bytes(b"\0" * 1000)
    assert _fetch(cli, SLICE, tmp_path / "d").exit_code == 0
    assert sorted(p.name for p in raw.iterdir()) == sorted(data_mod.IDX_FILES)


def test_uncompressed_files_are_checked_too(cli, tmp_path, slice_md5):
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in data_mod.IDX_FILES:
        (plain / f).write_bytes(gzip.decompress((SLICE / f"{f}.gz").read_bytes()))
    assert _fetch(cli, plain, tmp_path / "d").exit_code == 0


def test_a_missing_file_is_one_line_and_nothing_is_written(cli, tmp_path, slice_md5):
    src = tmp_path / "src"
    shutil.copytree(SLICE, src)
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    r = _fetch(cli, src, tmp_path / "d")
    assert r.exit_code == 2
    assert "t10k-labels-idx1-ubyte.gz" in r.stderr and "missing" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_a_wrong_md5_names_file_expected_and_found(cli, tmp_path, slice_md5):
    src = tmp_path / "src"
    shutil.copytree(SLICE, src)
    bad = bytearray(gzip.decompress((src / "train-images-idx3-ubyte.gz").read_bytes()))
    bad[1000] ^= 0xFF
    (src / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(bad)))
    r = _fetch(cli, src, tmp_path / "d")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    want = slice_md5["train-images-idx3-ubyte"]
    assert "train-images-idx3-ubyte" in r.stderr and want in r.stderr
    assert hashlib.md5(bytes(bad)).hexdigest() in r.stderr
    assert not (tmp_path / "d" / "FashionMNIST" / "raw").exists() or not any(
        (tmp_path / "d" / "FashionMNIST" / "raw").iterdir()
    )


def test_the_release_checksums_reject_the_slice(cli, tmp_path):
    """Without the stand-in md5s the slice is what it is: not the release."""
    r = _fetch(cli, SLICE, tmp_path / "d")
    assert r.exit_code == 2 and "expected f4a8712d7a061bf5bd6d2ca38dc4d50a" in r.stderr


def test_bad_from_arguments(cli, tmp_path):
    assert "not a folder" in _fetch(cli, tmp_path / "nope", tmp_path / "d").stderr
    r = _fetch(cli, SLICE, tmp_path / "d", name="cifar10")
    assert r.exit_code == 2 and "fashion-mnist, mnist, kmnist" in r.stderr
    r = cli("data", "fetch", "mnist", "kmnist", "--from", SLICE)
    assert r.exit_code == 2 and "one dataset at a time" in r.stderr


def test_a_missing_dataset_names_the_import_command(tmp_path):
    cfg = RunConfig().data.model_copy(update={"name": "kmnist"})
    with pytest.raises(UserError, match="softmaso data fetch kmnist"):
        data_mod.load_data(cfg, data_dir=tmp_path)


def test_training_on_the_real_slice_beats_chance_widely(cli, tmp_path, slice_md5):
    assert _fetch(cli, SLICE, tmp_path / "d").exit_code == 0
    cfg = load_recipe(
        Path(data_mod.__file__).parent / "recipes" / "fashion.yaml",
        ["model.width=0.125", "train.epochs=3", "optim.lr=0.003"],
    )
    result = training.fit(cfg, tmp_path / "run", device="cpu", data_dir=tmp_path / "d")
    assert result["status"] == "finished"
    assert result["final_test_acc"] > 0.5  # chance: 0.1
    row = json.loads((tmp_path / "run" / rundir.METRICS).read_text().splitlines()[-1])
    assert set(row["row_energy"]) == {f"conv{i}" for i in range(1, 9)}
    assert row["images_per_s"] * row["train_seconds"] == pytest.approx(500)  # 10 steps of 50
    assert row["seconds"] == pytest.approx(row["train_seconds"] + row["eval_seconds"])
    assert row["peak_rss_mib"] > 0
