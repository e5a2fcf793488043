"""The `softmaso` command line: thin Typer commands, each calling one library function.

Heavy libraries (torch, pandas, matplotlib) are imported inside the commands, so that
`softmaso --help` is instant. Bad input of any kind (a click parse error or a
:class:`~softmaso.errors.UserError` from the library) is printed as one line and exits with
code 2; failed claims or failed runs exit with code 1.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from softmaso import __version__
from softmaso.errors import Terminated, UserError, catch_stops, unreported_stop
from softmaso.fast import flag_help_without_type

# click's ClickException (Typer vendors click in recent releases, so find it through Typer).
_CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


MAX_ERROR = 1000  # characters of an error message the CLI prints


class _Group(TyperGroup):
    """Typer group whose errors are one line on stderr: `softmaso: error: ...`, exit code 2."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        catch_stops()  # SIGTERM stops as Ctrl-C does: runs stay resumable
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except (*_CLICK_ERRORS, UserError) as e:
            msg = str(e) if isinstance(e, UserError) else e.format_message()
            if len(msg) > MAX_ERROR:  # one line a person can read, whatever the input held
                msg = f"{msg[:MAX_ERROR]}... ({len(msg) - MAX_ERROR:,} more characters)"
            typer.echo(f"softmaso: error: {msg}", err=True)
            code = e.exit_code
        except OSError as e:  # a file that cannot be written or read: one line, not a traceback
            where = f"{e.filename}: " if e.filename else ""
            typer.echo(f"softmaso: error: {where}{e.strerror or e}", err=True)
            code = 2
        except typer.Abort:
            typer.echo("softmaso: aborted", err=True)
            code = 130
        else:
            code = rv if isinstance(rv, int) else 0
        if (by := unreported_stop()) is not None:  # Typer turns the interrupt into exit 130
            typer.echo(
                f"softmaso: stopped by {by}; finished runs are kept, the others resume when you "
                "rerun the same command",
                err=True,
            )
            code = Terminated.exit_code if by == "SIGTERM" else 130
        if standalone_mode:
            sys.exit(code)
        return code


flag_help_without_type()  # a flag's --help shows no <bool>


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="softmaso: hard, soft and beta vector quantization in deep networks "
    "(Balestriero & Baraniuk, ICLR 2019), runnable.",
    epilog="Examples: softmaso theory | softmaso train smoke | softmaso reproduce all --smoke | "
    "softmaso recipes",
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
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Say more: every run's epochs in a grid.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Say only warnings and errors.")
    ] = False,
) -> None:
    import logging

    from softmaso.ui import setup_logging

    setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


Device = Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")]
JsonOut = Annotated[
    Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")
]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="CPU threads per training process, recorded in env.json.",
        show_default="torch's: every core; reproduce: the cores shared by the workers",
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="SOFTMASO_DATA",
        help="Where datasets live.",
        show_default="$SOFTMASO_DATA, else ./data",
    ),
]


@app.command(epilog="Example: softmaso theory --trials 500 --json theory-500.json")
def theory(
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random problems.")] = 0,
    trials: Annotated[int, typer.Option(min=1, help="Random problems per claim.")] = 200,
    json_path: JsonOut = None,
) -> None:
    """Check every claim of the paper numerically and print the paper's Table 1.

    Each claim's two sides are computed by independent routes on random inputs (GMM posteriors
    from Gaussian densities, numerical maximisation over the simplex, enumeration over R^K) and
    compared against a tolerance. Exit code 1 if any claim fails.
    """
    from softmaso.io import check_output_file
    from softmaso.reporting.claims import check_claims

    if json_path is not None:
        check_output_file(json_path, where="--json")
    if not check_claims(seed=seed, trials=trials, json_path=json_path):
        raise typer.Exit(1)


@app.command(
    "plot-activations",
    epilog="Example: softmaso plot-activations --beta 0.3 --out my-figures",
)
def plot_activations(
    beta: Annotated[
        list[float] | None,
        typer.Option(
            help="beta of a red beta-VQ curve, in [0, 1]; repeatable.", show_default="0.1 ... 0.9"
        ),
    ] = None,
    pieces: Annotated[
        str | None,
        typer.Option(
            help="Convex panel as 'a1:c1,a2:c2,...' = max_r(a_r u + c_r), pieces left to right.",
            show_default="-0.5:-0.5,0.3:0,1.5:-1.2",
        ),
    ] = None,
    x_min: Annotated[float, typer.Option(help="Left end of the u axis.")] = -3.0,
    x_max: Annotated[float, typer.Option(help="Right end of the u axis.")] = 3.0,
    points: Annotated[int, typer.Option(help="Points per curve (at least 2).")] = 401,
    value: Annotated[
        bool,
        typer.Option("--value", help="Plot the optimal value of (8) (softplus family) instead."),
    ] = False,
    out: Annotated[
        Path,
        typer.Option(
            help="Output directory (the committed results/figures/ is made by `softmaso "
            "reproduce figure1`)."
        ),
    ] = Path("figures"),
) -> None:
    """Draw the paper's Figure 1: ReLU, absolute value and a convex unit under beta-VQ.

    HVQ (beta = 1) solid black, SVQ (beta = 1/2) dashed black, each requested beta in red.
    Writes figure1.png, figure1.pdf and figure1.csv (columns panel,beta,x,y) to --out;
    with --value, figure1-value.*.
    """
    from softmaso.io import check_output_dir
    from softmaso.reporting.figure1 import figure1_spec, write_figure1

    spec = figure1_spec(beta, pieces, x_min, x_max, points, value)
    check_output_dir(out, where="--out")
    for path in write_figure1(spec, out):
        typer.echo(f"wrote {path}")


@app.command(
    epilog="Examples: softmaso train smoke | "
    "softmaso train table2/cifar10 --set optim.lr=0.001 --seed 0 | softmaso train my.yaml"
)
def train(
    recipe: Annotated[
        str,
        typer.Argument(
            help="A recipe file (my.yaml) or a packaged recipe's name (smoke, table2/cifar10, "
            "fashion; `softmaso recipes` lists them)."
        ),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a recipe key, KEY=VALUE (repeatable), e.g. optim.lr=0.0005; the keys: "
            "softmaso train RECIPE --print-config.",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (same as --set seed=N).")] = None,
    device: Device = "auto",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run directory.", show_default="results/runs/RECIPE/NAME from the settings"
        ),
    ] = None,
    data_dir: DataDir = None,
    threads: Threads = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config and exit.")
    ] = False,
) -> None:
    """Train the paper's largeCNN from a YAML recipe; rerun the same command to resume.

    Writes config.yaml, env.json, metrics.jsonl, checkpoint.pt, result.json and
    model.safetensors to the run directory. A finished run is not redone. Exit code 1 if the
    loss diverges (NaN or infinite), 130 if interrupted, 143 if terminated (SIGTERM; the run
    stays resumable either way).
    """
    from softmaso import recipes, rundir
    from softmaso.config import dump_yaml, read_recipe
    from softmaso.devices import resolve_device, set_threads
    from softmaso.io import check_output_dir
    from softmaso.training import device_defaults, fit
    from softmaso.ui import progress

    parsed = read_recipe(recipe := recipes.resolve(recipe))
    cfg = parsed.config(list(set_ or []) + ([f"seed={seed}"] if seed is not None else []))
    if print_config:
        return typer.echo(dump_yaml(device_defaults(cfg, resolve_device(device))), nl=False)
    set_threads(threads)
    if parsed.sweep:
        sweep = ", ".join(parsed.sweep)
        typer.echo(
            f"note: {recipe} sweeps {sweep}; train runs one point (--set, `reproduce`)", err=True
        )
    run_dir = check_output_dir(out or rundir.default_run_dir(cfg), where="--out")
    on = resolve_device(device)
    cfg = device_defaults(cfg, on, rundir.saved_config(run_dir)[1])  # named by the recipe's
    try:
        with progress():
            result = fit(cfg, run_dir, device=on, data_dir=data_dir, lock=True)
    except KeyboardInterrupt as e:
        unreported_stop()  # said here, with the run directory
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        typer.echo(f"{how}: rerun the same command to resume {run_dir}", err=True)
        raise typer.Exit(Terminated.exit_code if isinstance(e, Terminated) else 130) from None
    if result.get("skipped"):
        typer.echo(f"already {result['status']}: {run_dir} (delete its result.json to redo it)")
    acc = result["final_test_acc"]
    acc_text = "n/a" if acc is None else f"{acc:.4f}"
    typer.echo(f"{result['status']}: final test accuracy {acc_text} -> {run_dir}")
    if result["status"] != "finished":
        raise typer.Exit(1)


@app.command("eval", epilog="Example: softmaso eval results/runs/smoke/<run> --json")
def eval_(
    target: Annotated[Path, typer.Argument(help="A run directory or a checkpoint.pt file.")],
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print {"test_acc": ..., "loss": ...} ("train_acc" with --split train).',
        ),
    ] = False,
    device: Device = "auto",
    data_dir: DataDir = None,
) -> None:
    """Accuracy and loss of a saved model on the test (or train) split."""
    import json

    from softmaso.training import evaluate_saved

    if split not in ("test", "train"):
        raise UserError("--split", f"{split!r} is not a split; use test or train")
    res = evaluate_saved(target, split=split, device=device, data_dir=data_dir)
    acc, loss = res[f"{split}_acc"], res["loss"]
    if as_json:
        typer.echo(json.dumps({f"{split}_acc": acc, "loss": loss}))
    else:
        typer.echo(f"{split} accuracy {acc:.4f}, loss {loss:.4f} (epoch {res['epoch']})")


data_app = typer.Typer(
    no_args_is_help=True,
    help="Datasets: fetch CIFAR-10/100, SVHN and the MNIST family once, or import local IDX files.",
    epilog="Example: softmaso data fetch cifar10 cifar100 svhn",
)
app.add_typer(data_app, name="data")


@data_app.command(
    "fetch",
    epilog="Examples: softmaso data fetch cifar10 svhn | softmaso data fetch fashion-mnist "
    "--from /usr/share/datasets/fashion-mnist",
)
def data_fetch(
    names: Annotated[
        list[str],
        typer.Argument(help="cifar10, cifar100, svhn, fashion-mnist, mnist and/or kmnist."),
    ],
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Import one MNIST-family dataset's four IDX files (gz or not) from this "
            "folder instead of downloading; each is checked by md5.",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Download and verify datasets into the data directory (needs internet, once), or with
    --from take an MNIST-family release from a local folder (no internet)."""
    from softmaso.data import default_data_dir, fetch, import_idx

    if source is not None:
        if len(names) != 1:
            raise UserError("--from", f"imports one dataset at a time; got {', '.join(names)}")
        typer.echo(import_idx(names[0], source, data_dir or default_data_dir()))
        return
    for line in fetch(list(names), data_dir or default_data_dir()):
        typer.echo(line)


@app.command(
    epilog="Examples: softmaso reproduce all --smoke | "
    "softmaso reproduce table2 --devices 0,1,2,3 | "
    "softmaso reproduce table2 --launcher slurm --slurm-partition gpu"
)
def reproduce(
    experiment: Annotated[
        str,
        typer.Argument(
            help="table2, gs-cifar100, fashion, table2-fashion, gs-fashion, activations, "
            "ortho-methods, figure1, theory or all; or a recipe file with a sweep: (my.yaml)."
        ),
    ],
    runs_: Annotated[
        int | None,
        typer.Option("--runs", help="Seeds per cell (0..N-1).", show_default="the recipe's, 5"),
    ] = None,
    datasets: Annotated[
        str | None, typer.Option(help="Comma-separated recipes to keep, e.g. cifar10,svhn.")
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option(
            help="Results directory.",
            show_default="results/EXPERIMENT, results/smoke/... with --smoke",
        ),
    ] = None,
    launcher: Annotated[str, typer.Option(help="local or slurm.")] = "local",
    devices: Annotated[
        str | None,
        typer.Option(
            help="Local worker processes, one per entry, each training one run at a time: "
            "0,1 (a GPU each), 0,0 (two on GPU 0), cpu,cpu (two CPU workers)."
        ),
    ] = None,
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke",
            help="Tiny offline stand-in of the same pipeline, labelled smoke.",
        ),
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key in every run, KEY=VALUE.")
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Launch a grid of more than 1,000 runs.")
    ] = False,
    data_dir: DataDir = None,
    threads: Threads = None,
    pack: Annotated[
        bool | None,
        typer.Option(
            "--pack/--no-pack",
            help="Train runs that differ only in seed, lr, weight decay or penalty as one packed "
            "network. Without it, and with each device listed once, a grid on CUDA measures a "
            "pack, 2 and 4 workers per GPU and one run at a time, and takes the fastest (by "
            "1.1x); grid.json records the choice and restarts keep it. --no-pack: one run at a "
            "time per listed device.",
            show_default="measured on CUDA, else no packing; or what grid.json recorded",
        ),
    ] = None,
    pack_size: Annotated[
        int, typer.Option(min=1, help="Most runs in one pack (1: no packing).")
    ] = 30,
    slurm_partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    slurm_time: Annotated[
        int, typer.Option(min=1, help="SLURM time limit per job, minutes (1440: a day).")
    ] = 1440,
    slurm_parallelism: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Most array tasks running at once.",
            show_default="16; with --slurm-cluster local, the cores / --threads",
        ),
    ] = None,
    slurm_gpus: Annotated[int, typer.Option(min=0, help="GPUs per job.")] = 1,
    slurm_cpus: Annotated[int, typer.Option(min=1, help="CPUs per job.")] = 8,
    slurm_cluster: Annotated[
        str, typer.Option(help="submitit cluster: slurm, or local/debug to test without SLURM.")
    ] = "slurm",
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Submit the SLURM job array and return; `softmaso table RESULTS` (or the same "
            "command again) reports later.",
        ),
    ] = False,
) -> None:
    """Run a whole experiment of the paper and report it (skips finished runs, resumes the rest).

    table2: 3 datasets x {baseline, ortho penalty} x 3 learning rates x 5 seeds = 90 runs, then
    the table beside the paper's numbers and the learning curves. gs-cifar100: exact
    orthogonality + swish on CIFAR-100, 5 seeds. fashion: baseline, penalty and exact on
    Fashion-MNIST, 5 seeds, sized for a 2-core CPU. table2-fashion: Table 2's protocol on a
    10,000-image Fashion-MNIST subset, 3 learning rates x baseline and penalty x 5 seeds, 24
    epochs, endpoint the mean of the last 5. activations: relu, swish and beta-VQ
    units (the paper's future work). ortho-methods: the paper's penalty and exact against SO,
    SRIP and torch's orthogonal parametrisation. A recipe file with a sweep: runs as a grid the
    same way (results/STEM/). figure1, theory: the theory half. all: every one of them.
    """
    import shlex

    from softmaso.launch import Launch, Selection, Slurm, check_names, parse_devices
    from softmaso.launch import reproduce as run
    from softmaso.ui import progress

    names = check_names(experiment)
    if launcher == "local":
        from softmaso.devices import check_threads

        check_threads(threads)  # SLURM's nodes have their own cores
    slurm = Slurm(
        cluster=slurm_cluster,
        partition=slurm_partition,
        time_min=slurm_time,
        parallelism=slurm_parallelism,
        gpus=slurm_gpus,
        cpus=slurm_cpus,
        wait=not no_wait,
    )
    launch = Launch(
        launcher, parse_devices(devices), threads, pack, pack_size, data_dir, smoke, slurm
    )
    keep = [t.strip() for t in datasets.split(",") if t.strip()] if datasets else None
    select = Selection(runs_, keep, tuple(set_ or ()), large=yes)
    command = "softmaso " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with progress():
        ok = run(names, launch, select, results=results, command=command)
    if not ok:
        raise typer.Exit(1)


@app.command(
    "recipes",
    epilog="Examples: softmaso recipes | softmaso recipes --copy fashion my-recipes/",
)
def recipes_(
    copy: Annotated[
        tuple[str, Path] | None,
        typer.Option(
            "--copy",
            metavar="NAME DIR",
            help="Copy the packaged recipe NAME into DIR, to start your own from it.",
        ),
    ] = None,
) -> None:
    """List the packaged recipes (train or reproduce take a name or a file) and the named
    experiments made of them."""
    from softmaso import recipes
    from softmaso.config import read_recipe

    if copy is not None:
        typer.echo(f"wrote {recipes.copy(copy[0], copy[1])}")
        return
    names = recipes.names()
    width = max(map(len, names), default=0)  # the longest name sets the column
    for name in names:
        parsed = read_recipe(recipes.path_of(name))
        sweep = " x ".join(f"{k} ({len(v)})" for k, v in parsed.sweep.items())
        typer.echo(f"{name:<{width}}  {'sweep: ' + sweep if sweep else 'one run'}")
    typer.echo("")
    for name, members in recipes.EXPERIMENTS.items():
        typer.echo(f"experiment {name}: {', '.join(members)}")
    typer.echo(f"(packaged in {recipes.root()})")


@app.command(
    epilog="Example: softmaso table results/table2 --paper --format latex --out table2.tex"
)
def table(
    results_dir: Annotated[
        Path, typer.Argument(help="A directory of runs (searched recursively).")
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="markdown, latex, csv or json.")
    ] = "markdown",
    paper: Annotated[
        bool,
        typer.Option("--paper", help="Add the paper's Table 2, our difference and Welch tests."),
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="final, best (optimistic) or last:K (mean of the last K evaluated epochs).",
            show_default="the recipe's report.endpoint, else final",
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE: the setting gains are measured against (model.activation=relu); "
            "repeat it for a cell of several settings.",
            show_default="the recipe's report.baseline, else ortho.mode=none",
        ),
    ] = None,
) -> None:
    """Tabulate finished runs: mean +- std over seeds (ddof 1) with n, rows and columns from the
    keys that vary, each gain with its 95% CI, Welch and Holm p and detectable effect; missing,
    started (unfinished) and diverged runs are shown, never averaged in."""
    from softmaso.config import parse_baseline, parse_endpoint
    from softmaso.io import check_output_file
    from softmaso.reporting import tables
    from softmaso.reporting.frame import collect, declared_report

    if fmt not in ("markdown", "latex", "csv", "json"):
        raise UserError("--format", f"{fmt!r}; use markdown, latex, csv or json")
    chosen = parse_endpoint(endpoint, where="--endpoint") if endpoint is not None else None
    versus = parse_baseline(baseline, where="--baseline") if baseline else None
    if out is not None:
        check_output_file(out, where="--out")
    runs, report = collect(results_dir), declared_report(results_dir)
    summary = tables.summarize(
        runs, endpoint=chosen or report.endpoint, baseline=versus or report.baseline
    )
    if versus is not None and not summary.comparisons:
        keys = ", ".join([*summary.row_keys, *([summary.col_key] if summary.col_key else [])])
        raise UserError(
            "--baseline",
            f"{' '.join(baseline or [])!r} matches no cell to compare with (table keys: {keys})",
        )
    tables.write_table(tables.render(summary, fmt, paper=paper), out)


@app.command(epilog="Example: softmaso analyze results/fashion --threads 2")
def analyze(
    target: Annotated[
        Path, typer.Argument(help="A finished run directory, or a results folder of runs.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the outputs.",
            show_default="beside a run: its folder's analysis/RUN; of a results folder: "
            "TARGET/analysis",
        ),
    ] = None,
    images: Annotated[int, typer.Option(min=1, help="Test images each run is analysed on.")] = 500,
    decisions: Annotated[
        int,
        typer.Option(min=2, help="Most (image, position) samples per layer in joint statistics."),
    ] = 20_000,
    data_dir: DataDir = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads of this process (torch.set_num_threads).",
            show_default="torch's: every core",
        ),
    ] = None,
) -> None:
    """Measure the paper's mechanisms in trained networks, per layer: VQ occupancy, soft-VQ
    entropy, unit-firing correlation, the factorial model's cross terms and joint-MAP changes
    (Thm. 4), the Thm. 2 region prior; compared across groups of runs like `softmaso table`.

    Written beside a run directory (never into it), or into a results folder's analysis/."""
    from softmaso.analysis import default_out
    from softmaso.devices import set_threads
    from softmaso.reporting.inside import analyze as run

    set_threads(threads)
    try:
        out = out or default_out(target)
        written = run(target, out=out, images=images, decisions=decisions, data_dir=data_dir)
    except UserError as e:  # a results folder's errors name RESULTS_DIR; here it is TARGET
        raise UserError("TARGET", e.message) if e.where == "RESULTS_DIR" else e from None
    for path in written:
        typer.echo(f"wrote {path}")


@app.command(
    "plot-curves",
    epilog="Example: softmaso plot-curves results/table2 --out results/table2/figures",
)
def plot_curves_(
    results_dir: Annotated[Path, typer.Argument(help="A directory of runs.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Output directory.", show_default="RESULTS_DIR/figures"),
    ] = None,
) -> None:
    """Test accuracy per epoch (mean +- std band over seeds), baseline against ortho, one panel per
    dataset and learning rate; and the orthogonality error per epoch."""
    from softmaso.io import check_output_dir
    from softmaso.reporting.curves import plot_curves

    out = check_output_dir(out or results_dir / "figures", where="--out")
    for path in plot_curves(results_dir, out):
        typer.echo(f"wrote {path}")


@app.command(epilog="Example: softmaso bench --quick --json benchmarks/cpu.json")
def bench(
    device: Device = "auto",
    json_path: JsonOut = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Fewer repeats, no compile on a CPU (about a minute)."),
    ] = False,
) -> None:
    """Measure the training step against a plain loop and compiled, the cost of
    orthogonality, evaluation throughput, packing, the projected Table 2 grid time and peak
    memory (medians, interleaved runs)."""

    from rich.console import Console

    from softmaso import rundir
    from softmaso.bench import measure, render
    from softmaso.devices import resolve_device
    from softmaso.io import check_output_file

    if json_path is not None:
        check_output_file(json_path, where="--json")
    res = measure(resolve_device(device), quick=quick)
    Console().print(render(res))
    if json_path is not None:
        rundir.write_json(json_path, res)
        typer.echo(f"wrote {json_path}")


# Each command's help is its docstring with every paragraph on one line: rich help keeps line
# breaks, so the wrapping of the source would show at every terminal width.
for _info in [*app.registered_commands, *data_app.registered_commands]:
    if _info.help is None and _info.callback is not None and _info.callback.__doc__:
        paragraphs = inspect.cleandoc(_info.callback.__doc__).split("\n\n")
        _info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)


def main() -> None:
    """Console-script entry point."""
    app()
