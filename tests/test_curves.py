"""softmaso.reporting.curves: metrics.jsonl of many runs -> tidy curves -> two figures."""

import json

import matplotlib.figure
import pytest

from softmaso.config import RunConfig, dump_yaml
from softmaso.errors import UserError
from softmaso.reporting import curves

EPOCHS = 3
FILES = ["curves.pdf", "curves.png", "ortho_error.pdf", "ortho_error.png"]


def write_run(root, rel, *, status="finished", epochs=EPOCHS, smoke=False, **settings):
    """config.yaml, metrics.jsonl (epochs lines, as `fit` writes them) and result.json."""
    cfg = RunConfig(recipe=settings["data.name"]).with_overrides(**settings)
    run = root / rel
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    ortho = cfg.ortho.mode != "none"
    lines = []
    for e in range(1, epochs + 1):
        errors = {"conv1": 0.2 / e if ortho else 0.3, "conv2": 0.1 / e if ortho else 0.1}
        row = {"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3, "test_acc": 0.3 + 0.1 * e}
        row.update(test_loss=1.0, ortho_error=errors, lr=cfg.optim.lr, seconds=1.0)
        lines.append(json.dumps({**row, "images_per_s": 100.0}) + "\n")
    (run / "metrics.jsonl").write_text("".join(lines))
    if status != "started":
        result = {"status": status, "final_test_acc": 0.3 + 0.1 * epochs, "smoke": smoke}
        (run / "result.json").write_text(json.dumps(result))
    return run


@pytest.fixture
def experiment(tmp_path):
    """2 datasets x 2 modes x 2 learning rates x 2 seeds; one more run diverged, one started."""
    for name in ("svhn", "cifar10"):
        for mode in ("none", "penalty"):
            for lr in (0.001, 0.0001):
                for seed in (0, 1):
                    point = {"data.name": name, "ortho.mode": mode, "optim.lr": lr, "seed": seed}
                    write_run(tmp_path, f"{name}/{mode}-{lr}-{seed}", **point)
    point = {"data.name": "cifar10", "ortho.mode": "none", "optim.lr": 0.001}
    write_run(tmp_path, "cifar10/diverged", status="diverged", epochs=1, **point, seed=2)
    write_run(tmp_path, "cifar10/started", status="started", epochs=2, **point, seed=3)
    return tmp_path


def test_load_curves_is_tidy(experiment):
    df = curves.load_curves(experiment)
    assert len(df) == 16 * EPOCHS + 1 + 2
    for col in ("data.name", "ortho.mode", "optim.lr", "seed", "epoch", "test_acc", "smoke"):
        assert col in df.columns
    row = df[(df["dir"] == "svhn/penalty-0.001-0") & (df.epoch == 2)].iloc[0]
    assert row.ortho_error_mean == pytest.approx((0.1 + 0.05) / 2)
    assert row.test_acc == pytest.approx(0.5) and row.train_loss == pytest.approx(1.0)
    assert not df.smoke.any()


def test_plot_curves_writes_four_files(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    paths = curves.plot_curves(experiment, out / "deep")
    assert sorted(p.name for p in paths) == FILES
    assert sorted(p.name for p in (out / "deep").iterdir()) == FILES
    assert all(p.stat().st_size > 0 for p in paths)


def test_figure_panels_and_smoke_title(experiment):
    df, panel_keys, col_key, name = curves._curves(experiment)
    assert panel_keys == ["data.name"] and col_key == "optim.lr"
    panels, shape = curves._panels(df, panel_keys, col_key)
    assert shape == (2, 2) and [p[2] for p in panels][:2] == ["SVHN, lr 0.001", "SVHN, lr 0.0001"]
    title = curves._suptitle(name, "test accuracy", True, 1)
    assert title.startswith("SMOKE RUN") and "1 diverged run(s) left out" in title


def test_metrics_without_ortho_error_still_plot(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(RunConfig()))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.1}) + "\n")
    assert curves.load_curves(tmp_path).ortho_error_mean.isna().all()
    paths = curves.plot_curves(tmp_path, tmp_path / "figures")
    assert all(p.stat().st_size > 0 for p in paths)


def test_figures_appear_together_or_not_at_all(experiment, tmp_path_factory, monkeypatch):
    out = tmp_path_factory.mktemp("figures")
    real = matplotlib.figure.Figure.savefig

    def fail_on_pdf(self, fname, *args, format=None, **kwargs):
        if format == "pdf":
            raise OSError("disk full")
        return real(self, fname, *args, format=format, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail_on_pdf)
    with pytest.raises(OSError, match="disk full"):
        curves.plot_curves(experiment, out)
    assert list(out.iterdir()) == []


def test_nothing_to_plot_is_a_user_error(tmp_path):
    run = tmp_path / "pending"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(RunConfig()))
    with pytest.raises(UserError, match="no finished epoch to plot") as e:
        curves.plot_curves(tmp_path, tmp_path / "figures")
    assert e.value.where == "RESULTS_DIR" and not (tmp_path / "figures").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty or not a softmaso results directory"):
        curves.plot_curves(tmp_path / "empty", tmp_path / "figures")


def test_a_panel_whose_key_is_missing_in_a_run_keeps_its_runs():
    """pandas' == never matches None: a run without a panel key's value got an empty panel."""
    import pandas as pd

    df = pd.DataFrame(
        {"model.beta": [0.5, None, None], "optim.lr": [0.001, 0.001, 0.01], "epoch": [1, 1, 1]}
    )
    panels, _ = curves._panels(df, ["model.beta"], "optim.lr")
    sizes = {title: len(frame) for _, _, title, frame in panels}
    assert sizes["beta=?, lr 0.001"] == sizes["beta=?, lr 0.01"] == 1, sizes
    assert sizes["beta=0.5, lr 0.001"] == 1 and sum(sizes.values()) == 3, sizes
