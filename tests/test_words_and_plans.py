"""What the commands say: every --help (and `recipes`) whole at 80 columns, analyze's words
and where it writes (beside a run, never into it), and a grid's plan before it trains."""

import json

import pytest
import typer
from conftest import SMALLEST, file_bytes, smallest

from softmaso import rundir, training
from softmaso.cli import app


def _commands() -> list[list[str]]:
    """The argv prefix of every command and group of the CLI, the root included."""
    out = []

    def walk(cmd, path: list[str]) -> None:  # a click command (typer vendors click)
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "softmaso")
def test_every_help_is_whole_at_80_columns(path):
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.output, r.output  # no word cut short
    assert max(map(len, r.output.splitlines())) <= 80


def test_recipes_line_up_their_names(cli):
    r = cli("recipes")
    assert r.exit_code == 0
    listing = r.stdout.split("\n\n")[0].splitlines()
    starts = {line.index("sweep:" if "sweep:" in line else "one run") for line in listing}
    assert len(listing) > 3 and len(starts) == 1, listing  # one column, however long a name
    assert max(map(len, r.stdout.splitlines()[:-1])) <= 80


# ------------------------------------------------------------------------------ analyze
def test_analyze_writes_beside_a_run_and_leaves_it_as_it_was(cli, tmp_path):
    run = tmp_path / "res" / "one"
    training.fit(smallest(1), run, device="cpu")
    before = file_bytes(run)
    r = cli("analyze", run, "--images", 20, "--decisions", 200)
    assert r.exit_code == 0, r.output
    assert file_bytes(run) == before  # nothing written into the run directory
    assert (tmp_path / "res" / "analysis" / "one" / "analysis.md").is_file()
    assert f"wrote {tmp_path / 'res' / 'analysis' / 'one'}" in r.stdout


def test_analyze_says_target_and_its_own_threads(cli, tmp_path):
    r = cli("analyze", "--help")
    assert "TARGET" in r.stdout and "training process" not in r.stdout
    (tmp_path / "empty").mkdir()
    r = cli("analyze", tmp_path / "empty")
    assert r.exit_code == 2 and r.stderr.startswith("softmaso: error: TARGET: "), r.stderr
    assert "RESULTS_DIR" not in r.stderr and r.stderr.count("\n") == 1


# ---------------------------------------------------------------------------- a grid's plan
def _plan(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if "to train (" in x]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_grid_says_how_many_runs_and_how_long_before_it_trains(cli, tmp_path):
    recipe, res = tmp_path / "g.yaml", tmp_path / "res"
    body = {k: v for k, v in SMALLEST.items() if k != "recipe"}
    recipe.write_text(json.dumps({**body, "train": {"epochs": 1}, "sweep": {"seed": [0, 1]}}))
    r = cli("reproduce", recipe, "--results", res)
    assert r.exit_code == 0, r.output
    line = _plan(r.stderr)
    assert "g: 2 runs to train (0 finished already), time unknown until the first run ends" in line
    assert r.stderr.index(line) < r.stderr.index("[grid] 1/2")  # said before training
    done = {d: file_bytes(res / "g" / d) for d in ("seed-0", "seed-1")}
    recipe.write_text(json.dumps({**body, "train": {"epochs": 1}, "sweep": {"seed": [0, 1, 2]}}))
    r = cli("reproduce", recipe, "--results", res)
    assert r.exit_code == 0, r.output
    walls = [rundir.read_json(res / "g" / d / rundir.RESULT)["wall_seconds"] for d in done]
    assert f"g: 1 run to train (2 finished already), about {sum(walls) / 2:.0f} s (" in _plan(
        r.stderr
    )
    assert {d: file_bytes(res / "g" / d) for d in done} == done  # the finished runs untouched
