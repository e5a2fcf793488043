"""`softmaso theory`, `softmaso plot-activations` and the CLI's basics, through CliRunner."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from softmaso.theory import checks


def test_help_is_lazy_and_every_command_has_an_example(cli):
    heavy = "('torch', 'pandas', 'matplotlib')"
    code = f"import sys, softmaso.cli; sys.exit(any(m in sys.modules for m in {heavy}))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    for cmd in ("theory", "plot-activations"):
        r = cli(cmd, "--help")
        assert r.exit_code == 0 and "Example: softmaso " + cmd in r.stdout


def test_help_text_is_reflowed_and_shows_descriptive_defaults():
    from typer.testing import CliRunner

    from softmaso.cli import app

    wide = CliRunner().invoke(app, ["train", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert wide.exit_code == 0
    assert "result.json and model.safetensors to the run directory" in wide.stdout  # one line
    assert "[default: (results/runs/RECIPE/NAME from the settings)]" in wide.stdout


def test_version(cli):
    from softmaso import __version__

    r = cli("--version")
    assert r.exit_code == 0 and __version__ in r.stdout


def test_theory_passes_and_writes_json(cli, tmp_path):
    r = cli("theory", "--trials", "20", "--json", tmp_path / "t.json")
    assert r.exit_code == 0, r.stdout
    doc = json.loads((tmp_path / "t.json").read_text())
    ids = {c["id"] for c in doc["checks"]}
    assert doc["all_passed"] and ids == {c.id for c in checks.CHECKS}
    for needed in (
        "prop1-kmeans",
        "thm2-map",
        "eq6-posterior",
        "prop2-svq-max",
        "thm3-beta-vq",
        "thm4-factorial",
        "cor1-joint-map",
        "thm4-contrast",
        "appC-prior-relu",
    ):
        assert needed in ids
    assert "Table 1" in r.stdout and "swish" in r.stdout
    assert "ACTIVE" in next(c["note"] for c in doc["checks"] if c["id"] == "appC-prior-relu")
    direction = next(c for c in doc["checks"] if c["id"] == "appC-prior-direction")
    assert direction["verdict"] == "contradicted" and direction["refutes"]
    # at 80 columns (a test runner's width) no word of a claim or a verdict is cut or folded
    assert "paper contradicted" in r.stdout and "\u2026" not in r.stdout
    words = {w for c in doc["checks"] for w in c["claim"].split() if w.isalpha()}
    assert words and not [w for w in words if w not in r.stdout]


def _run(check_id: str, trials: int = 20):
    return next(c for c in checks.CHECKS if c.id == check_id).run(0, trials)


def test_the_special_betas_and_the_limit_are_checked_by_other_routes(monkeypatch):
    """thm3-special compares with the LP optimum, the GMM posterior and 1/R: a beta_vq that is
    wrong at beta = 1, or that does not tend to HVQ, fails it."""
    assert _run("thm3-special").passed
    real = checks.beta_vq

    def wrong_at_one(s, beta):
        return checks.soft_vq(s) if isinstance(beta, float) and beta == 1.0 else real(s, beta)

    monkeypatch.setattr(checks, "beta_vq", wrong_at_one)
    assert not _run("thm3-special").passed

    def no_limit(s, beta):  # right at beta = 1, but eta capped: no continuity
        if isinstance(beta, float) and 0.5 < beta < 1.0:
            return real(s, 0.5)
        return real(s, beta)

    monkeypatch.setattr(checks, "beta_vq", no_limit)
    assert not _run("thm3-special").passed


def test_beta_pool_is_checked_against_eq8_solved_per_window(monkeypatch):
    assert _run("beta-pool").passed

    class Shifted(checks.BetaSoftmaxPool2d):  # off by 1e-6 at beta = 0.3 only
        def forward(self, x):
            out = super().forward(x)
            return out + 1e-6 if self.beta.constant() == 0.3 else out

    monkeypatch.setattr(checks, "BetaSoftmaxPool2d", Shifted)
    assert not _run("beta-pool").passed
    assert torch.is_tensor(Shifted(3, 2, beta=0.3)(torch.zeros(1, 1, 5, 5)))


def test_the_penalty_check_tests_the_trainers_value_and_gradient(monkeypatch):
    assert _run("eq11-penalty").passed
    real = checks.gram_penalties

    class HalfGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            ctx.save_for_backward(w)
            return real(w.detach())

        @staticmethod
        def backward(ctx, grad):
            (w,) = ctx.saved_tensors
            with torch.enable_grad():
                leaf = w.detach().requires_grad_()
                (g,) = torch.autograd.grad(real(leaf).sum(), leaf)
            return 0.5 * g * grad.sum()

    monkeypatch.setattr(checks, "gram_penalties", HalfGradient.apply)
    assert not _run("eq11-penalty").passed


def test_the_wide_layer_check_tests_the_exact_parametrisation(monkeypatch):
    assert _run("sec5-wide-layer").passed
    monkeypatch.setattr(checks, "apply_orthogonality", lambda convs, cfg: None)
    assert not _run("sec5-wide-layer").passed


def test_theory_exits_1_when_a_claim_fails(cli, monkeypatch):
    broken = checks.Check("broken", "a false claim", "nowhere", lambda g, n: (1.0, "x", ""), 0.0)
    monkeypatch.setattr(checks, "CHECKS", [*checks.CHECKS[:1], broken])
    r = cli("theory", "--trials", "5")
    assert r.exit_code == 1 and "FAIL" in r.stdout


def test_figure1_csv_matches_the_closed_forms(cli, tmp_path):
    r = cli(
        "plot-activations", "--beta", "0.3", "--beta", "0.8", "--points", "61", "--out", tmp_path
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"figure1.png", "figure1.pdf", "figure1.csv"}
    df = pd.read_csv(tmp_path / "figure1.csv")
    assert list(df.columns) == ["panel", "beta", "x", "y"]
    assert set(df.panel) == {"relu", "abs", "convex"} and set(df.beta) == {1.0, 0.8, 0.5, 0.3}
    assert len(df) == 3 * 4 * 61
    for beta in (0.3, 0.5, 0.8):
        eta = beta / (1 - beta)
        for panel, gate in (("relu", torch.sigmoid), ("abs", torch.tanh)):
            sub = df[(df.panel == panel) & (df.beta == beta)]
            u = torch.tensor(sub.x.values, dtype=torch.float64)
            assert torch.allclose(
                torch.tensor(sub.y.values, dtype=torch.float64), u * gate(eta * u), atol=1e-12
            )
    hard = df[(df.panel == "relu") & (df.beta == 1.0)]
    assert (hard.y == hard.x.clip(lower=0)).all()


def test_value_mode_is_the_softplus_family(cli, tmp_path):
    r = cli("plot-activations", "--value", "--beta", "0.25", "--points", "11", "--out", tmp_path)
    assert r.exit_code == 0
    df = pd.read_csv(tmp_path / "figure1-value.csv")
    sub = df[(df.panel == "relu") & (df.beta == 0.25)]
    u, eta = torch.tensor(sub.x.values, dtype=torch.float64), 0.25 / 0.75
    expect = 0.25 * torch.nn.functional.softplus(eta * u) / eta
    assert torch.allclose(torch.tensor(sub.y.values, dtype=torch.float64), expect, atol=1e-12)


def test_user_pieces_define_the_convex_panel(cli, tmp_path):
    r = cli(
        "plot-activations",
        "--pieces",
        "-1:0,0:0.5,2:-1",
        "--beta",
        "0.5",
        "--points",
        "5",
        "--x-min",
        "-2",
        "--x-max",
        "2",
        "--out",
        tmp_path,
    )
    assert r.exit_code == 0
    df = pd.read_csv(tmp_path / "figure1.csv")
    hard = df[(df.panel == "convex") & (df.beta == 1.0)]
    expect = [max(-u, 0.5, 2 * u - 1) for u in hard.x]
    assert hard.y.tolist() == pytest.approx(expect)


BAD = [
    (["--beta", "1.5"], "--beta"),
    (["--beta", "-0.1"], "--beta"),
    (["--beta", "abc"], "--beta"),
    (["--pieces", "1:0"], "--pieces"),
    (["--pieces", "1:0,x:2"], "--pieces"),
    (["--pieces", "1:0,0:1"], "not convex"),
    (["--pieces", "-1:0,0:-5,1:0"], "never the maximum"),
    (["--points", "1"], "--points"),
    (["--x-min", "1", "--x-max", "1"], "x range"),
]


@pytest.mark.parametrize(("args", "says"), BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, args, says):
    out = tmp_path / "figs"
    r = cli("plot-activations", *args, "--out", out)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.output
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_out_is_reported(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = cli("plot-activations", "--out", blocker / "figs")
    assert r.exit_code == 2 and "--out" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "not a directory"


def test_existing_outputs_survive_a_failed_run(cli, tmp_path):
    assert cli("plot-activations", "--points", "5", "--out", tmp_path).exit_code == 0
    before = (tmp_path / "figure1.csv").read_bytes()
    assert cli("plot-activations", "--beta", "2", "--out", tmp_path).exit_code == 2
    assert (tmp_path / "figure1.csv").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_output_paths_are_checked_before_any_work(cli, tmp_path):
    """A file where a folder is wanted, or a folder where a file is: one line, exit 2,
    nothing written (no temp file left), before anything is computed."""
    a_file = tmp_path / "f"
    a_file.write_text("x")
    cases = [
        (["train", "smoke", "--out", a_file], "--out"),
        (["train", "smoke", "--out", a_file / "run"], "--out"),
        (["reproduce", "theory", "--results", a_file], "--results"),
        (["theory", "--json", tmp_path], "--json"),
        (["plot-activations", "--out", a_file / "x"], "--out"),
    ]
    for args, where in cases:
        r = cli(*args)
        assert r.exit_code == 2, args
        assert r.stderr.startswith(f"softmaso: error: {where}") and r.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["--x-min", "-inf"], "--x-min"),
        (["--x-max", "nan"], "--x-max"),
        (["--x-min", "-1e300"], "--x-min"),
        (["--points", "100000000"], "--points"),
        (["--pieces", ""], "--pieces"),
    ],
)
def test_plot_activations_bounds_what_can_be_drawn(cli, tmp_path, args, where):
    r = cli("plot-activations", *args, "--out", tmp_path / "fig")
    assert r.exit_code == 2 and r.stderr.startswith(f"softmaso: error: {where}")
    assert not (tmp_path / "fig").exists()


def test_flags_show_no_value_placeholder_in_help():
    from typer.testing import CliRunner

    from softmaso.cli import app

    r = CliRunner().invoke(app, ["reproduce", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    line = next(x for x in r.stdout.splitlines() if "--smoke" in x and "stand-in" in x)
    assert "<bool>" not in line
    assert "<bool>" not in next(x for x in r.stdout.splitlines() if "--help" in x)
