"""The paper's claims as `softmaso theory` shows them (the checks themselves are in
:mod:`softmaso.theory.checks`): the check table, the notes, the paper's Table 1, theory.json."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from softmaso.theory.checks import TABLE1, CheckResult


def _verdict(r: CheckResult) -> str:
    if r.refutes:
        return "[yellow]paper contradicted[/]" if r.passed else "[red]FAIL (not contradicted)[/]"
    if r.contrast:
        return "[green]pass (differs)[/]" if r.passed else "[red]FAIL (should differ)[/]"
    return "[green]pass[/]" if r.passed else "[red]FAIL[/]"


def checks_table(results: list[CheckResult]) -> Table:
    """One row per claim: what it says (with the paper's place), what was compared, the largest
    error against its bound, the verdict; four columns, so that 80 columns break no word."""
    t = Table(title="Claims of the paper, checked numerically", show_lines=False)
    t.add_column("claim (paper)", ratio=1)
    t.add_column("compared", ratio=1, overflow="fold")  # code may be one long token
    t.add_column("max error", justify="right", no_wrap=True)
    t.add_column("verdict")
    for r in results:
        op = ">" if r.contrast or r.refutes else "<="
        t.add_row(
            f"[bold]{r.id}[/]\n{escape(r.claim)} [dim]({escape(r.ref)})[/]",
            escape(r.compared),
            f"{r.max_error:.1e}\n{op} {r.tol:.0e}",
            _verdict(r),
        )
    return t


def table1(results: list[CheckResult]) -> Table:
    by_id = {r.id: r for r in results}
    t = Table(title="Table 1: VQ type, the problem it solves, the nonlinearities it yields")
    for col in ("VQ type", escape("T[k,:] ="), "examples (check that derives it: verdict)"):
        t.add_column(col, overflow="fold")
    for row in TABLE1:
        lines = []
        for name, cid in row["examples"]:
            ok = by_id[cid].passed if cid in by_id else None
            mark = "[green]pass[/]" if ok else "[red]FAIL[/]" if ok is False else "[dim]not run[/]"
            lines.append(f"{escape(name)} ({cid}: {mark})")
        t.add_row(escape(row["vq"]), escape(row["problem"]), "\n".join(lines))
    return t


def render(results: list[CheckResult], console: Console) -> None:
    console.print(checks_table(results))
    notes = [r for r in results if r.note]
    if notes:
        console.print("[bold]Notes[/]")
        for r in notes:
            console.print(f"- [bold]{r.id}[/]: {escape(r.note)}")
    console.print(table1(results))
    failed = [r.id for r in results if not r.passed]
    summary = f"{len(results) - len(failed)}/{len(results)} claims verified"
    console.print(
        f"[red]{summary}; failed: {', '.join(failed)}[/]" if failed else f"[green]{summary}[/]"
    )


def write_json(results: list[CheckResult], path: Path, *, seed: int, trials: int) -> None:
    """theory.json: every check's result, Table 1, and what produced them."""
    import torch

    from softmaso import __version__, rundir

    doc = {
        "softmaso": __version__,
        "command": "softmaso " + " ".join(sys.argv[1:]),
        "git_commit": rundir.git_commit(),
        "torch": torch.__version__,
        "device": "cpu (float64)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "trials": trials,
        "all_passed": all(r.passed for r in results),
        "checks": [r.to_dict() for r in results],
        "table1": [
            {
                "vq": row["vq"],
                "problem": row["problem"],
                "examples": [{"name": n, "check": c} for n, c in row["examples"]],
            }
            for row in TABLE1
        ],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(Path(path), doc)


def check_claims(*, seed: int = 0, trials: int = 200, json_path: Path | None = None) -> bool:
    """Check every claim (:func:`softmaso.theory.checks.run_checks`), print the table and
    Table 1, write `json_path` if given; True if every claim passes. What `softmaso theory`
    and `softmaso reproduce theory` run."""
    from softmaso.theory.checks import run_checks

    results = run_checks(seed=seed, trials=trials)
    render(results, Console())
    if json_path is not None:
        write_json(results, json_path, seed=seed, trials=trials)
        print(f"wrote {json_path}")
    return all(r.passed for r in results)
