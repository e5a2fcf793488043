"""The `softmaso` command line: thin Typer commands, each calling one library function.

Heavy libraries (torch, pandas, matplotlib) are imported inside the commands, so that
`softmaso --help` is instant. Bad input of any kind (a click parse error or a
:class:`~softmaso.errors.UserError` from the library) is printed as one line and exits with
code 2; failed claims or failed runs exit with code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from softmaso import __version__
from softmaso.errors import UserError

# click's ClickException (Typer vendors click in recent releases, so find it through Typer).
_CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _Group(TyperGroup):
    """Typer group whose errors are one line on stderr: `softmaso: error: ...`, exit code 2."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except (*_CLICK_ERRORS, UserError) as e:
            msg = str(e) if isinstance(e, UserError) else e.format_message()
            typer.echo(f"softmaso: error: {msg}", err=True)
            code = e.exit_code
        except typer.Abort:
            typer.echo("softmaso: aborted", err=True)
            code = 130
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="softmaso: hard, soft and beta vector quantization in deep networks "
    "(Balestriero & Baraniuk, ICLR 2019), runnable.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"softmaso {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


@app.command(epilog="Example: softmaso theory --trials 500 --json results/theory.json")
def theory(
    seed: Annotated[int, typer.Option(help="Seed of the random problems.")] = 0,
    trials: Annotated[int, typer.Option(min=1, help="Random problems per claim.")] = 200,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every result as JSON to this file.")
    ] = None,
) -> None:
    """Check every claim of the paper numerically and print the paper's Table 1.

    Each claim's two sides are computed by independent routes on random inputs (GMM posteriors
    from Gaussian densities, numerical maximisation over the simplex, enumeration over R^K) and
    compared against a tolerance. Exit code 1 if any claim fails.
    """
    from rich.console import Console

    from softmaso.io import ensure_writable_dir
    from softmaso.reporting.theory import render, write_json
    from softmaso.theory.checks import run_checks

    if json_path is not None:
        ensure_writable_dir(json_path.parent, where="--json")
    results = run_checks(seed=seed, trials=trials)
    render(results, Console())
    if json_path is not None:
        write_json(results, json_path, seed=seed, trials=trials)
        typer.echo(f"wrote {json_path}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command(
    "plot-activations",
    epilog="Example: softmaso plot-activations --beta 0.3 --out results/figures",
)
def plot_activations(
    beta: Annotated[
        list[float] | None,
        typer.Option(
            help="beta of a red beta-VQ curve, in [0, 1]; repeatable. [default: 0.1 ... 0.9]"
        ),
    ] = None,
    pieces: Annotated[
        str | None,
        typer.Option(
            help="Convex panel as 'a1:c1,a2:c2,...' = max_r(a_r u + c_r), pieces left to right. "
            "[default: -0.5:-0.5,0.3:0,1.5:-1.2]"
        ),
    ] = None,
    x_min: Annotated[float, typer.Option(help="Left end of the u axis.")] = -3.0,
    x_max: Annotated[float, typer.Option(help="Right end of the u axis.")] = 3.0,
    points: Annotated[int, typer.Option(help="Points per curve (at least 2).")] = 401,
    value: Annotated[
        bool,
        typer.Option("--value", help="Plot the optimal value of (8) (softplus family) instead."),
    ] = False,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/figures"),
) -> None:
    """Draw the paper's Figure 1: ReLU, absolute value and a convex unit under beta-VQ.

    HVQ (beta = 1) solid black, SVQ (beta = 1/2) dashed black, each requested beta in red.
    Writes figure1.png, figure1.pdf and figure1.csv (columns panel,beta,x,y) to --out;
    with --value, figure1-value.*.
    """
    from softmaso.reporting.figure1 import figure1_spec, write_figure1

    spec = figure1_spec(beta, pieces, x_min, x_max, points, value)
    for path in write_figure1(spec, out):
        typer.echo(f"wrote {path}")


def main() -> None:
    """Console-script entry point."""
    app()
