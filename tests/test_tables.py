"""softmaso.reporting.tables: run directories -> cells of mean ± std over seeds -> text."""

import csv
import io
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
from scipy.stats import ttest_ind

from softmaso.config import RunConfig, dump_yaml
from softmaso.errors import UserError
from softmaso.reporting import tables
from softmaso.reporting.frame import collect
from softmaso.reporting.paper import PAPER_TABLE2
from softmaso.reporting.report import write_report
from softmaso.reporting.stats import welch_p

LRS = (0.001, 0.0005, 0.0001)
MODES = ("none", "penalty")
DATASETS = ("svhn", "cifar10", "cifar100")
OFFSETS = (-0.3, 0.1, 0.5)  # accuracy points added to the paper's mean, by seed
# What the recipes change per dataset (recipes/table2/*.yaml); these keys vary but are folded.
RECIPE = {"cifar100": {"optim.batch_size": 100, "train.epochs": 200}}


def write_run(root, rel, *, recipe, status="finished", acc=None, smoke=False, **settings):
    """A run directory as `fit` leaves it: config.yaml, and result.json when it ended."""
    cfg = RunConfig(recipe=recipe).with_overrides(**settings)
    run = root / rel
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    if status in ("finished", "diverged"):
        result = {"status": status, "final_test_acc": acc, "seed": cfg.seed, "recipe": recipe}
        (run / "result.json").write_text(json.dumps({**result, "smoke": smoke}))
    elif status == "started":
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.1}) + "\n")
    return run


def point(name, mode, lr, seed):
    return f"{name}/lr-{lr}_mode-{mode}_seed-{seed}"


def settings(name, mode, lr, seed):
    return {
        "data.name": name,
        "ortho.mode": mode,
        "optim.lr": lr,
        "seed": seed,
        **RECIPE.get(name, {}),
    }


def write_grid(root, entries, *, smoke=False):
    runs = [
        {
            "dir": point(n, m, lr, s),
            "recipe": n,
            "settings": {"optim.lr": lr, "ortho.mode": m, "seed": s},
        }
        for n, m, lr, s in entries
    ]
    doc = {
        "experiment": "table2",
        "smoke": smoke,
        "created": "2025-01-01T00:00:00+00:00",
        "runs": runs,
    }
    (root / "grid.json").write_text(json.dumps(doc))


@pytest.fixture
def table2(tmp_path):
    """Table 2 with 3 finished seeds per cell (paper mean + OFFSETS), plus one diverged run
    (CIFAR-10 ortho, lr 5e-4), one started (CIFAR-10 baseline, lr 1e-4) and one missing
    (SVHN ortho, lr 1e-3) run."""
    entries = []
    for name in DATASETS:
        for mode in MODES:
            for lr in LRS:
                paper = PAPER_TABLE2[(name, mode, lr)][0]
                for seed, off in enumerate(OFFSETS):
                    acc = (paper + off) / 100
                    write_run(
                        tmp_path,
                        point(name, mode, lr, seed),
                        recipe=name,
                        acc=acc,
                        **settings(name, mode, lr, seed),
                    )
                    entries.append((name, mode, lr, seed))
    write_run(
        tmp_path,
        point("cifar10", "penalty", 0.0005, 3),
        recipe="cifar10",
        status="diverged",
        **settings("cifar10", "penalty", 0.0005, 3),
    )
    write_run(
        tmp_path,
        point("cifar10", "none", 0.0001, 3),
        recipe="cifar10",
        status="started",
        **settings("cifar10", "none", 0.0001, 3),
    )
    entries += [
        ("cifar10", "penalty", 0.0005, 3),
        ("cifar10", "none", 0.0001, 3),
        ("svhn", "penalty", 0.001, 3),
    ]
    write_grid(tmp_path, entries)
    return tmp_path


def ours(name, mode, lr):
    return [PAPER_TABLE2[(name, mode, lr)][0] + off for off in OFFSETS]


def test_collect_states_and_columns(table2):
    df = collect(table2)
    assert len(df) == 54 + 3
    assert list(df.columns[:4]) == ["dir", "status", "acc", "smoke"]
    assert {"data.name", "optim.lr", "ortho.mode", "seed", "model.width"} <= set(df.columns)
    counts = df["status"].value_counts().to_dict()
    assert counts == {"finished": 54, "diverged": 1, "started": 1, "missing": 1}
    missing = df[df.status == "missing"].iloc[0]
    assert missing["dir"] == point("svhn", "penalty", 0.001, 3)
    assert (missing["data.name"], missing["ortho.mode"], missing["optim.lr"]) == (
        "svhn",
        "penalty",
        0.001,
    )
    assert df.loc[df.status != "finished", "acc"].isna().all()
    assert df.loc[df.status == "finished", "acc"].between(0, 1).all()


def test_summarize_table2_layout_and_statistics(table2):
    s = tables.summarize(collect(table2))
    assert s.row_keys == ("data.name", "ortho.mode") and s.col_key == "optim.lr"
    assert s.cols == LRS  # descending, as in the paper
    assert s.rows == tuple((n, m) for n in DATASETS for m in MODES)
    assert set(s.folded_keys) == {"recipe", "optim.batch_size", "train.epochs"}
    for name in DATASETS:
        for mode in MODES:
            for lr in LRS:
                cell = s.cell((name, mode), lr)
                assert cell.n == 3
                assert cell.mean == pytest.approx(statistics.fmean(ours(name, mode, lr)))
                assert cell.std == pytest.approx(statistics.stdev(ours(name, mode, lr)))
    assert s.cell(("cifar10", "penalty"), 0.0005).counts["diverged"] == 1
    assert s.cell(("cifar10", "none"), 0.0001).counts["started"] == 1
    assert s.cell(("svhn", "penalty"), 0.001).counts["missing"] == 1
    assert not s.smoke and not s.warnings


def test_markdown_cells_footnote_and_counts(table2):
    text = tables.render(tables.summarize(collect(table2)), "markdown")
    lines = text.splitlines()
    assert lines[0].startswith("### table2") and "SMOKE" not in text
    header = next(line for line in lines if line.startswith("| data.name"))
    assert header == "| data.name | ortho.mode | lr 0.001 | lr 0.0005 | lr 0.0001 |"
    row = next(line for line in lines if line.startswith("| CIFAR-10 | baseline"))
    cells = "80.4 ± 0.4 (n=3) | 80.3 ± 0.4 (n=3) | 76.3 ± 0.4 (n=3; 1 started)"
    assert row == f"| CIFAR-10 | baseline | {cells} |"
    assert "84.1 ± 0.4 (n=3)" in text and "82.4 ± 0.4 (n=3; 1 diverged)" in text
    assert "94.7 ± 0.4 (n=3; 1 missing)" in text
    assert "ddof=1" in text and "n = finished runs" in text
    main = text.split("\n\n")[1].splitlines()  # the accuracy table; the gains follow it
    order = [
        line.split(" | ")[0][2:]
        for line in main
        if line.startswith("| ") and "ortho" not in line.split(" | ")[0]
    ]
    assert order[-6:] == ["SVHN", "SVHN", "CIFAR-10", "CIFAR-10", "CIFAR-100", "CIFAR-100"]
    gains = text.split("\n\n")[4].splitlines()  # after the footnote and the gain note
    assert gains[0] == (
        "| data.name | ortho.mode | lr | vs ortho.mode=none | gain | 95% CI | p | p (Holm) "
        "| detectable (80%) |"
    )
    # one line per gain: 3 datasets x 3 learning rates, each with its interval
    assert len(gains) == 2 + 9 and all(" | [" in line for line in gains[2:])


def test_paper_columns_and_welch_test(table2):
    s = tables.summarize(collect(table2))
    cell = s.cell(("cifar10", "penalty"), 0.001)
    v = tables.versus(s, cell)
    assert (v.paper_mean, v.paper_std) == (84.0, 0.3)
    assert v.diff == pytest.approx(0.1)
    assert v.gain == pytest.approx(84.0 - 80.3)
    assert v.gain_paper == pytest.approx(84.0 - 80.3)
    expected = ttest_ind(
        ours("cifar10", "penalty", 0.001), ours("cifar10", "none", 0.001), equal_var=False
    )
    assert v.gain_p == pytest.approx(expected.pvalue)
    base = tables.versus(s, s.cell(("cifar10", "none"), 0.001))
    assert base.gain is None and base.gain_p is None and base.diff == pytest.approx(0.1)
    text = tables.render(s, "markdown", paper=True)
    assert "Welch" in text and "Table 2" in text
    for title in ("| SVHN |", "| CIFAR-10 |", "| CIFAR-100 |"):
        assert title in text
    assert "| ortho (penalty): paper | 84.0 ± 0.3 | 82.3 ± 0.1 | 79.1 ± 0.2 |" in text
    assert "| ortho (penalty): ours − paper | +0.1 | +0.1 | +0.1 |" in text
    assert f"+3.7 (p={expected.pvalue:.3g})" in text


def test_welch_is_na_below_two_runs():
    assert welch_p((80.0,), (79.0, 79.5)) is None
    assert welch_p((80.0, 81.0), (79.0, 79.5)) == pytest.approx(
        ttest_ind([80.0, 81.0], [79.0, 79.5], equal_var=False).pvalue
    )


def test_csv_and_json_round_trip(table2):
    s = tables.summarize(collect(table2))
    rows = list(csv.DictReader(io.StringIO(tables.render(s, "csv", paper=True))))
    assert len(rows) == 18
    assert list(rows[0])[:10] == [
        "data.name",
        "ortho.mode",
        "optim.lr",
        "mean",
        "std",
        "n",
        "diverged",
        "damaged",
        "started",
        "pending",
    ]
    row = next(
        r
        for r in rows
        if (r["data.name"], r["ortho.mode"], r["optim.lr"]) == ("cifar10", "penalty", "0.0005")
    )
    assert float(row["mean"]) == pytest.approx(82.4)
    assert float(row["std"]) == pytest.approx(statistics.stdev(ours("cifar10", "penalty", 0.0005)))
    assert (row["n"], row["diverged"], row["missing"], row["smoke"]) == ("3", "1", "0", "False")
    assert float(row["paper_mean"]) == 82.3 and float(row["diff"]) == pytest.approx(0.1)
    baseline = next(r for r in rows if r["ortho.mode"] == "none")
    assert baseline["gain"] == "" and baseline["gain_p"] == ""
    doc = json.loads(tables.render(s, "json", paper=True))
    assert doc["smoke"] is False and doc["std_ddof"] == 1 and doc["col_key"] == "optim.lr"
    cell = next(
        c
        for c in doc["cells"]
        if (c["data.name"], c["ortho.mode"], c["optim.lr"]) == ("svhn", "none", 0.0001)
    )
    assert cell["mean"] == pytest.approx(93.5) and cell["n"] == 3 and cell["seeds"] == [0, 1, 2]
    assert cell["paper_mean"] == 93.4 and cell["gain"] is None


def test_latex_is_booktabs_and_escaped(table2):
    text = tables.render(tables.summarize(collect(table2)), "latex", paper=True)
    for part in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"$\pm$"):
        assert part in text
    assert "±" not in text and "—" not in text
    body = [line for line in text.splitlines() if not line.startswith("%")]
    cells = [c for line in body for c in line.removesuffix(r" \\").split(" & ")]
    assert not any(re.search(r"(?<!\\)[%_&#]", c) for c in cells)
    assert r"80.4 $\pm$ 0.4 (n=3)" in text and "(n=3; 1 diverged)" in text


def test_unfinished_cell_and_duplicate_seed(tmp_path):
    for seed in (0, 1):
        write_run(
            tmp_path,
            point("cifar10", "none", 0.001, seed),
            recipe="cifar10",
            acc=0.8,
            **settings("cifar10", "none", 0.001, seed),
        )
        write_run(
            tmp_path,
            point("cifar10", "penalty", 0.001, seed),
            recipe="cifar10",
            status="started",
            **settings("cifar10", "penalty", 0.001, seed),
        )
    write_run(
        tmp_path,
        "copy/of-seed-0",
        recipe="cifar10",
        acc=0.82,
        **settings("cifar10", "none", 0.001, 0),
    )
    pending = point("cifar10", "penalty", 0.001, 2)  # config.yaml only: claimed, not started
    write_run(
        tmp_path,
        pending,
        recipe="cifar10",
        status="pending",
        **settings("cifar10", "penalty", 0.001, 2),
    )
    listed = [("cifar10", "none", 0.001, s) for s in range(2)]
    write_grid(tmp_path, listed + [("cifar10", "penalty", 0.001, s) for s in range(5)])
    grid = json.loads((tmp_path / "grid.json").read_text())  # the copy is listed too
    grid["runs"].append({"dir": "copy/of-seed-0", "recipe": "cifar10", "settings": {}})
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    s = tables.summarize(collect(tmp_path))
    assert s.row_keys == ("ortho.mode",) and s.col_key is None  # one dataset, one lr
    text = tables.render(s, "markdown", paper=True)
    assert "| ortho (penalty) | — (2 started, 1 pending, 2 missing) |" in text
    assert "| baseline | 80.7 ± 1.2 (n=3) |" in text
    assert len(s.warnings) == 1 and "seed 0 appears 2 times" in s.warnings[0]
    assert "Warning: " in text and "| CIFAR-10 | test accuracy (%) |" in text  # paper block


def test_smoke_is_labelled_everywhere(tmp_path):
    entries = []
    for recipe in ("svhn", "cifar10"):  # the same synthetic config: only the recipe differs
        for mode in MODES:
            for seed in (0, 1):
                write_run(
                    tmp_path,
                    point(recipe, mode, 0.001, seed),
                    recipe=recipe,
                    acc=0.5,
                    smoke=True,
                    **{
                        "data.name": "synthetic",
                        "model.width": 0.125,
                        "ortho.mode": mode,
                        "seed": seed,
                    },
                )
                entries.append((recipe, mode, 0.001, seed))
    write_grid(tmp_path, entries, smoke=True)
    s = tables.summarize(collect(tmp_path))
    assert s.smoke and s.row_keys == ("recipe", "ortho.mode") and s.rows[0] == ("svhn", "none")
    md = tables.render(s, "markdown", paper=True)
    assert md.startswith("### SMOKE RUN") and md.count("(n=2)") == 4
    assert "No cell of this table has a counterpart" in md
    assert "SMOKE RUN" in tables.render(s, "latex").split(r"\caption{")[1]
    assert {r["smoke"] for r in csv.DictReader(io.StringIO(tables.render(s, "csv")))} == {"True"}
    assert json.loads(tables.render(s, "json"))["smoke"] is True


def test_rows_come_from_the_varying_keys(tmp_path):
    for width in (0.5, 1.0, 2.0):
        for seed in range(3):
            write_run(
                tmp_path,
                f"w{width}/s{seed}",
                recipe="custom",
                acc=0.6 + width / 10 + seed / 100,
                **{"model.width": width, "seed": seed},
            )
    s = tables.summarize(collect(tmp_path))
    assert (
        s.row_keys == ("model.width",) and s.col_key is None and s.rows == ((0.5,), (1.0,), (2.0,))
    )
    assert s.cell((1.0,), None).mean == pytest.approx(71.0)
    text = tables.render(s, "markdown", paper=True)
    assert "| model.width | test accuracy (%) |" in text and "| 2 | 81.0 ± 1.0 (n=3) |" in text
    paper = text.split("Against the paper")[1]  # only the width-1 row is the paper's setting
    assert "| CIFAR-10, model.width = 1 | test accuracy (%) |" in paper and "0.5" not in paper


def test_bad_directories_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        collect(tmp_path / "nope")
    assert e.value.where == "RESULTS_DIR"
    with pytest.raises(UserError, match="empty or not a softmaso results directory"):
        collect(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="empty or not a softmaso results directory"):
        collect(tmp_path)
    (tmp_path / "grid.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a softmaso grid"):
        collect(tmp_path)
    with pytest.raises(UserError, match="--format"):
        tables.render(None, "html")
    (tmp_path / "grid.json").unlink()
    run = write_run(tmp_path, "run", recipe="table2")
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00 binary")
    with pytest.raises(UserError, match="no readable run .*config.yaml cannot be read"):
        collect(tmp_path)


def test_write_table_is_atomic_file_or_stdout(tmp_path, capsys):
    tables.write_table("a|b\n", None)
    assert capsys.readouterr().out == "a|b\n"
    out = tmp_path / "deep" / "table.md"
    tables.write_table("x\n", out)
    assert out.read_text() == "x\n" and [p.name for p in out.parent.iterdir()] == ["table.md"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2]", "holds a list"),
        ('"finished"', "holds a str"),
        ('{"status": "finished", "final_test_acc": "abc"}', "final_test_acc 'abc'"),
        ('{"status": "finished", "final_test_acc": 85.0}', "final_test_acc 85.0"),
        ('{"status": "done"}', "status 'done'"),
        ("{not json", "not readable JSON"),
    ],
)
def test_a_damaged_run_is_named_and_the_rest_is_still_tabulated(cli, tmp_path, content, problem):
    for seed in range(3):
        write_run(tmp_path, f"s{seed}", recipe="r", acc=0.8 + seed / 100, seed=seed)
    (tmp_path / "s2" / "result.json").write_text(content)
    (tmp_path / "s1" / "metrics.jsonl").write_text(
        '{"epoch": "x", "test_acc": 0.5}\n{"epoch": 1, "test_acc": "abc"}\n'
    )
    r = cli("table", tmp_path)
    assert r.exit_code == 0, r.output
    assert "80.5 ± 0.7 (n=2; 1 damaged)" in r.stdout
    assert "damaged run s2: result.json" in r.stdout and problem in r.stdout
    assert "8500" not in r.stdout
    r = cli("plot-curves", tmp_path)
    assert r.exit_code == 0, r.output


def test_non_object_grid_entries_are_skipped(cli, tmp_path):
    write_run(tmp_path, "r/a", recipe="r", acc=0.5)
    entries = [{"dir": "r/a", "recipe": "r", "settings": {}}, 7, "x", {"dir": 3}]
    (tmp_path / "grid.json").write_text(json.dumps({"experiment": "r", "runs": entries}))
    r = cli("table", tmp_path)
    assert r.exit_code == 0 and "50.0 (n=1)" in r.stdout


def test_the_table_says_which_runs_were_packed(cli, tmp_path):
    for seed in range(3):
        run = write_run(tmp_path, f"s{seed}", recipe="r", acc=0.5, seed=seed)
        if seed < 2:
            result = json.loads((run / "result.json").read_text())
            (run / "result.json").write_text(json.dumps({**result, "packed_with": 2}))
    r = cli("table", tmp_path)
    assert "50.0 ± 0.0 (n=3; 2 packed)" in r.stdout


def test_smoke_and_real_runs_together_are_labelled_by_row(cli, tmp_path):
    for seed in range(2):
        write_run(
            tmp_path, f"real{seed}", recipe="t", acc=0.8, seed=seed, **{"data.name": "cifar10"}
        )
        write_run(
            tmp_path,
            f"smoke{seed}",
            recipe="t",
            acc=0.5,
            seed=seed,
            smoke=True,
            **{"data.name": "synthetic"},
        )
    r = cli("table", tmp_path)
    assert r.exit_code == 0
    assert "SMOKE RUN" not in r.stdout and "rows marked SMOKE" in r.stdout
    assert "| synthetic (SMOKE) |" in r.stdout and "| CIFAR-10 |" in r.stdout


def test_training_seconds_per_epoch_get_their_own_table(tmp_path):
    """Median over a run's epochs, mean ± std over a cell's finished runs; a started run and
    a run without recorded times count for nothing."""
    seconds = {0: [10.0, 12.0, 30.0], 1: [14.0, 14.0, 14.0]}  # medians 12 and 14
    for seed, secs in seconds.items():
        run = write_run(tmp_path, f"a/s{seed}", recipe="r", acc=0.9, seed=seed)
        rows = [{"epoch": i + 1, "train_seconds": s} for i, s in enumerate(secs)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_run(tmp_path, "a/s2", recipe="r", acc=0.9, seed=2)  # finished, no metrics: not timed
    write_run(tmp_path, "a/s3", recipe="r", status="started", seed=3)
    summary = tables.summarize(collect(tmp_path))
    (cell,) = summary.cells.values()
    assert cell.epoch_s == (12.0, 14.0)
    text = tables.render(summary, "markdown")
    assert tables.TIME_NOTE in text
    assert f"| 13.0 ± {statistics.stdev([12.0, 14.0]):.1f} |" in text
    (rec,) = json.loads(tables.render(summary, "json"))["cells"]
    assert rec["epoch_s"] == 13.0


def test_no_time_table_without_recorded_times(tmp_path):
    write_run(tmp_path, "a/s0", recipe="r", acc=0.9, seed=0)
    assert tables.TIME_NOTE not in tables.render(tables.summarize(collect(tmp_path)), "markdown")


def _with_epochs(run, accs):
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": i + 1, "test_acc": a}) + "\n" for i, a in enumerate(accs))
    )


@pytest.fixture
def curves(tmp_path):
    """Baseline and penalty, 3 seeds each, with per-epoch test accuracies; one penalty run
    finished after 2 epochs only (too short for last:3)."""
    per_epoch = {
        "none": [[0.80, 0.90, 0.84, 0.86], [0.81, 0.88, 0.85, 0.85], [0.79, 0.92, 0.86, 0.84]],
        "penalty": [[0.70, 0.80, 0.90, 0.88], [0.72, 0.83, 0.89, 0.91], [0.70, 0.81]],
    }
    for mode, runs in per_epoch.items():
        for seed, accs in enumerate(runs):
            run = write_run(
                tmp_path,
                f"r/{mode}-{seed}",
                recipe="r",
                acc=accs[-1],
                seed=seed,
                **{"ortho.mode": mode},
            )
            _with_epochs(run, accs)
    return tmp_path


def test_the_endpoint_decides_which_accuracy_a_run_contributes(curves):
    from softmaso.config import Endpoint

    df = collect(curves)
    final = tables.summarize(df).cell(("penalty",), None)
    assert final.accs == pytest.approx((88.0, 91.0, 81.0))
    best = tables.summarize(df, endpoint=Endpoint("best"))
    assert best.cell(("penalty",), None).accs == pytest.approx((90.0, 91.0, 81.0))
    assert any("optimistic" in w for w in best.warnings)
    last = tables.summarize(df, endpoint=Endpoint("last", 3))
    cell = last.cell(("penalty",), None)
    assert cell.accs == pytest.approx(((80 + 90 + 88) / 3, (83 + 89 + 91) / 3))
    assert cell.counts["short"] == 1  # counted, not averaged in, not dropped
    text = tables.render(last, "markdown")
    assert "mean test accuracy (%) over the last 3 evaluated epochs" in text
    assert "(endpoint last:3)" in text and "1 finished too short for the endpoint" in text
    rec = json.loads(tables.render(last, "json"))
    assert rec["endpoint"] == "last:3" and {c["short"] for c in rec["cells"]} == {0, 1}


def test_every_gain_has_its_interval_holm_p_and_detectable_effect(table2):
    s = tables.summarize(collect(table2))
    rows = list(csv.DictReader(io.StringIO(tables.render(s, "csv"))))
    with_gain = [r for r in rows if r["gain"]]
    assert len(with_gain) == 9  # the penalty cell of each dataset and learning rate
    ps = [float(r["gain_p"]) for r in with_gain]
    holm = [float(r["gain_p_holm"]) for r in with_gain]
    m = len(ps)
    smallest = min(range(m), key=ps.__getitem__)
    assert holm[smallest] == pytest.approx(m * ps[smallest])  # the smallest p times m
    assert all(h >= p for h, p in zip(holm, ps, strict=True))
    for r in with_gain:
        assert float(r["gain_ci_low"]) < float(r["gain"]) < float(r["gain_ci_high"])
        assert float(r["gain_detectable"]) > 0 and r["baseline"] == "ortho.mode=none"


def test_the_baseline_can_be_any_setting(tmp_path):
    for act, base in (("relu", 0.90), ("swish", 0.91), ("beta", 0.88)):
        for seed, off in enumerate((0.0, 0.004, -0.003)):
            write_run(
                tmp_path,
                f"{act}/s{seed}",
                recipe=act,
                acc=base + off,
                seed=seed,
                **{"model.activation": act},
            )
    runs = collect(tmp_path)
    s = tables.summarize(runs, baseline=(("model.activation", "relu"),))
    assert set(s.comparisons) == {(("swish",), None), (("beta",), None)}
    (base_at, c) = s.comparisons[(("swish",), None)]
    assert base_at == (("relu",), None) and c.gain == pytest.approx(1.0)
    assert "| swish | relu | +1.00 |" in tables.render(s, "markdown")
    # the default baseline (ortho.mode=none) is not a key here: no gains, no warning
    assert tables.summarize(runs).comparisons == {}


def test_a_baseline_cell_of_two_settings(tmp_path):
    """activation x mode with the baseline relu + none: the three other cells against it."""
    means = {
        ("relu", "none"): 0.90,
        ("relu", "exact"): 0.89,
        ("swish", "none"): 0.92,
        ("swish", "exact"): 0.95,
    }
    for (act, mode), acc in means.items():
        for seed, off in enumerate((0.0, 0.004, -0.003)):
            write_run(
                tmp_path,
                f"{act}-{mode}/s{seed}",
                recipe="g",
                acc=acc + off,
                seed=seed,
                **{"model.activation": act, "ortho.mode": mode},
            )
    both = (("model.activation", "relu"), ("ortho.mode", "none"))
    s = tables.summarize(collect(tmp_path), baseline=both)
    gains = {cell: round(c.gain, 6) for cell, (base_at, c) in s.comparisons.items()}
    at = {base_at for base_at, _ in s.comparisons.values()}
    assert len(gains) == 3 and sorted(gains.values()) == [-1.0, 2.0, 5.0]
    assert len(at) == 1 and _matches_both(s, *at.pop())
    assert [c.p_holm for _, c in s.comparisons.values()].count(None) == 0
    text = tables.render(s, "markdown")
    assert "vs model.activation=relu, ortho.mode=none" in text
    csv_rows = list(csv.DictReader(io.StringIO(tables.render(s, "csv"))))
    assert {r["baseline"] for r in csv_rows if r["gain"]} == {
        "model.activation=relu,ortho.mode=none"
    }
    # one setting only: exact against none within each activation
    s = tables.summarize(collect(tmp_path), baseline=(("ortho.mode", "none"),))
    assert sorted(round(c.gain, 6) for _, c in s.comparisons.values()) == [-1.0, 3.0]


def _matches_both(summary, row, col):
    labels = dict(zip(summary.row_keys, row, strict=True))
    if summary.col_key:
        labels[summary.col_key] = col
    return labels == {"model.activation": "relu", "ortho.mode": "none"}


def test_a_boolean_baseline_matches_booleans_only(tmp_path):
    for learn, acc in ((False, 0.90), (True, 0.91)):
        for seed in (0, 1):
            write_run(
                tmp_path,
                f"b/{learn}-{seed}",
                recipe="b",
                acc=acc + seed / 1000,
                seed=seed,
                **{"model.activation": "beta", "model.learn_beta": learn},
            )
    s = tables.summarize(collect(tmp_path), baseline=(("model.learn_beta", False),))
    assert set(s.comparisons) == {((True,), None)}
    assert s.comparisons[((True,), None)][1].gain == pytest.approx(1.0)
    # 0 is not False: a number never matches a boolean setting
    assert (
        tables.summarize(collect(tmp_path), baseline=(("model.learn_beta", 0),)).comparisons == {}
    )


def test_table_cli_takes_an_endpoint_and_a_baseline(cli, curves):
    r = cli("table", str(curves), "--endpoint", "last:3", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["endpoint"] == "last:3"
    r = cli("table", str(curves), "--baseline", "ortho.mode=penalty")
    assert r.exit_code == 0 and "| baseline | ortho (penalty) |" in r.stdout
    for args, says in (
        (["--endpoint", "last:x"], "--endpoint: endpoint 'last:x' is not one of final"),
        (["--baseline", "model.activation=relu"], "--baseline: 'model.activation=relu' matches"),
        (["--baseline", "nokey=1"], "is not KEY=VALUE with a config key"),
    ):
        r = cli("table", str(curves), *args)
        assert r.exit_code == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_table_off_the_papers_settings_shows_its_gains_per_learning_rate(tmp_path):
    for lr in LRS:
        for mode in MODES:
            for seed in (0, 1):
                write_run(
                    tmp_path,
                    f"f/{lr}-{mode}-{seed}",
                    recipe="f",
                    acc=0.9 + seed / 100,
                    seed=seed,
                    **{"data.name": "fashion-mnist", "ortho.mode": mode, "optim.lr": lr},
                )
    md = tables.render(tables.summarize(collect(tmp_path)), "markdown", paper=True)
    assert "No cell of this table has a counterpart" in md
    assert "| CIFAR-10 (paper) | +3.7 | +2.1 | +2.9 |" in md
    assert "| CIFAR-100 (paper) | +2.5 | +2.2 | +4.6 |" in md


def test_runs_that_grid_json_does_not_list_are_named_not_counted(tmp_path):
    entries = [("cifar10", m, 0.001, s) for m in ("none", "penalty") for s in range(2)]
    for n, m, lr, s in entries:
        write_run(
            tmp_path, point(n, m, lr, s), recipe=n, acc=0.8 + s / 100, **settings(n, m, lr, s)
        )
    write_grid(tmp_path, entries)
    # another experiment's folder nested inside, and a `train --out` into a run directory
    write_run(
        tmp_path, "other/tiny/run", recipe="tiny", acc=0.1, **settings("cifar10", "none", 0.001, 0)
    )
    write_run(
        tmp_path,
        f"{point(*entries[0])}/extra",
        recipe="cifar10",
        acc=0.2,
        **settings("cifar10", "none", 0.001, 0),
    )
    frame = collect(tmp_path)
    assert len(frame) == 4 and len(frame.attrs["foreign"]) == 2
    s = tables.summarize(frame)
    assert s.cell(("none",), None).accs == (80.0, 81.0)  # the foreign 10% and 20% are not in
    [warning] = [w for w in s.warnings if "grid.json does not list" in w]
    assert warning.startswith("2 run directories below this grid") and "other/tiny/run" in warning
    assert "other/tiny/run" in tables.render(s, "markdown")


def test_a_cell_that_mixes_thread_counts_says_so(tmp_path):
    for seed, threads in enumerate((1, 1, 2)):
        run = write_run(tmp_path, f"r{seed}", recipe="r", acc=0.8, seed=seed)
        env = {"device": {"type": "cpu", "name": "AMD EPYC", "threads": threads}}
        (run / "launches.jsonl").write_text(json.dumps(env) + "\n")
    [warning] = tables.summarize(collect(tmp_path)).warnings
    assert "cpu AMD EPYC x1 and cpu AMD EPYC x2" in warning and "thread count" in warning


def test_a_listed_run_with_a_garbage_config_is_counted_damaged_in_its_cell(tmp_path):
    entries = [("cifar10", "none", 0.001, s) for s in range(3)]
    for n, m, lr, s in entries:
        write_run(tmp_path, point(n, m, lr, s), recipe=n, acc=0.8, **settings(n, m, lr, s))
    write_grid(tmp_path, entries)
    (tmp_path / point(*entries[2]) / "config.yaml").write_text(": : not yaml [")
    s = tables.summarize(collect(tmp_path))
    [cell] = s.cells.values()
    assert cell.n == 2 and cell.counts["damaged"] == 1  # counted, not vanished
    assert "(n=2; 1 damaged)" in tables.render(s, "markdown")
    assert any("config.yaml cannot be read" in w for w in s.warnings)


def test_runs_that_differ_only_in_compiling_share_a_cell(tmp_path):
    """train.compile changes rounding only: a grid begun eager on a CPU and finished compiled
    on a GPU (its default there) is one cell, not a row per setting."""
    for seed, compiled in enumerate((False, False, True, True)):
        write_run(
            tmp_path, f"r{seed}", recipe="r", acc=0.8, seed=seed, **{"train.compile": compiled}
        )
    s = tables.summarize(collect(tmp_path))
    [cell] = s.cells.values()
    assert cell.n == 4


RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMITTED = sorted(RESULTS.glob("*/table.md")) + sorted(RESULTS.glob("*/*/table.md"))


def without_stamp(text: str) -> list[str]:
    """A report's lines but its stamp (the command, commit and date that made it)."""
    return [line for line in text.splitlines() if not line.startswith("Made by")]


@pytest.mark.parametrize("committed", COMMITTED, ids=lambda p: p.parent.name)
def test_every_committed_table_regenerates_from_its_runs(committed, tmp_path):
    """write_report, as `softmaso reproduce` calls it, remakes the committed table.md (and its
    LaTeX and CSV) from the committed runs."""
    copy = tmp_path / committed.parent.name
    shutil.copytree(committed.parent, copy, ignore=shutil.ignore_patterns("analysis", "figures"))
    experiment = json.loads((copy / "grid.json").read_text())["experiment"]
    write_report(copy, paper=experiment.startswith("table2"), command="softmaso reproduce")
    for name in ("table.md", "table.tex", "table.csv"):
        made, kept = (copy / name).read_text(), (committed.parent / name).read_text()
        assert without_stamp(made) == without_stamp(kept), name
