"""Regenerate every committed table, in every variant, into OUT with the softmaso on sys.path.

    python scripts/regen_tables.py OUT   (scripts/regen-tables.sh compares two commits' output)

For each grid under results/ (a folder with a grid.json, and each pilot's folder): the table with its declared
endpoint and baseline and with each variant below, plain and --paper, in the four formats; its
curves.csv; and the report as `reproduce` writes it (into a copy), its stamp lines removed.
"""

import shutil
import sys
from pathlib import Path

from softmaso.config import parse_baseline, parse_endpoint
from softmaso.reporting import curves, tables
from softmaso.reporting.frame import collect, declared_report
from softmaso.reporting.report import write_report

VARIANTS = {  # file stem -> (--endpoint, --baseline)
    "table": (None, None),
    "table-final": ("final", None),
    "table-best": ("best", None),
    "table-last3": ("last:3", None),
    "table-vs-relu": (None, ["model.activation=relu"]),
    "table-vs-relu-none": (None, ["model.activation=relu", "ortho.mode=none"]),
    "table-vs-exact": (None, ["ortho.mode=exact"]),
}
FORMATS = {"markdown": "md", "latex": "tex", "csv": "csv", "json": "json"}


def regenerate(root: Path, out: Path) -> None:
    runs, report = collect(root), declared_report(root)
    for stem, (endpoint, baseline) in VARIANTS.items():
        chosen = parse_endpoint(endpoint, where="--endpoint") if endpoint else None
        versus = parse_baseline(baseline, where="--baseline") if baseline else None
        summary = tables.summarize(
            runs, endpoint=chosen or report.endpoint, baseline=versus or report.baseline
        )
        for paper in (False, True):
            for fmt, ext in FORMATS.items():
                path = out / f"{stem}{'-paper' if paper else ''}.{ext}"
                tables.write_table(tables.render(summary, fmt, paper=paper), path)
    curves.load_curves(root).to_csv(out / "curves.csv", index=False)
    copy = out.parent / "copies" / out.name
    shutil.copytree(root, copy)
    write_report(copy, paper=root.name.startswith("table2"), command=f"softmaso reproduce {root}")
    for name in ("table.md", "table.tex", "table.csv"):
        lines = (copy / name).read_text().splitlines()
        kept = [line for line in lines if not line.startswith("Made by")]
        (out / f"report-{name}").write_text("\n".join(kept) + "\n")


def main() -> None:
    out = Path(sys.argv[1])
    grids = {p.parent for p in Path("results").glob("**/grid.json")}
    grids |= {p.parent.parent for p in Path("results/pilots").glob("*/*/config.yaml")}
    for root in sorted(grids):
        if "smoke" in root.parts or ".submitit" in root.parts:
            continue
        name = "+".join(root.relative_to("results").parts)
        regenerate(root, out / name)
        print("regenerated", root, flush=True)


if __name__ == "__main__":
    main()
