"""The paper's Table 2 (its numbers, and which of our cells are its settings)."""

from __future__ import annotations

import math
from typing import Any

# The paper's Table 2: (data.name, ortho.mode, optim.lr) -> (mean, std), accuracy in %, over
# 5 runs. Typed from /work/shared/spec/paper-notes.md section 7 (Balestriero & Baraniuk,
# "From Hard to Soft", ICLR 2019, Table 2); its "ortho" rows are the penalty of eq. 11.
PAPER_SOURCE = "Balestriero & Baraniuk (ICLR 2019), Table 2"
# The paper's setting besides those three keys: the full training set, largeCNN (App. D), ReLU.
PAPER_SETUP = {"data.subset": None, "model.width": 1.0, "model.activation": "relu"}
PAPER_TABLE2: dict[tuple[str, str, float], tuple[float, float]] = {
    ("svhn", "none", 0.001): (94.3, 0.1),
    ("svhn", "none", 0.0005): (94.4, 0.1),
    ("svhn", "none", 0.0001): (93.4, 0.0),
    ("svhn", "penalty", 0.001): (94.6, 0.2),
    ("svhn", "penalty", 0.0005): (95.0, 0.2),
    ("svhn", "penalty", 0.0001): (93.8, 0.1),
    ("cifar10", "none", 0.001): (80.3, 0.4),
    ("cifar10", "none", 0.0005): (80.2, 0.2),
    ("cifar10", "none", 0.0001): (76.2, 0.3),
    ("cifar10", "penalty", 0.001): (84.0, 0.3),
    ("cifar10", "penalty", 0.0005): (82.3, 0.1),
    ("cifar10", "penalty", 0.0001): (79.1, 0.2),
    ("cifar100", "none", 0.001): (43.6, 0.2),
    ("cifar100", "none", 0.0005): (44.1, 0.4),
    ("cifar100", "none", 0.0001): (37.5, 0.5),
    ("cifar100", "penalty", 0.001): (46.1, 0.2),
    ("cifar100", "penalty", 0.0005): (46.3, 0.2),
    ("cifar100", "penalty", 0.0001): (42.1, 0.3),
}


def _lookup(name: Any, mode: Any, lr: Any) -> tuple[float, float] | None:
    """Table 2's (mean, std) for a dataset, ortho mode and learning rate; None if absent."""
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        return None
    for (n, m, paper_lr), value in PAPER_TABLE2.items():
        if n == name and m == mode and math.isclose(lr, paper_lr, rel_tol=1e-9):
            return value
    return None


def paper_value(cell: Any) -> tuple[float, float] | None:
    """The paper's (mean, std) for a cell, if it is one of Table 2's 18 settings."""
    s = cell.settings
    if any(s.get(k) != v for k, v in PAPER_SETUP.items()):
        return None
    if s.get("ortho.mode") == "penalty" and s.get("ortho.weight") != 1.0:
        return None
    return _lookup(s.get("data.name"), s.get("ortho.mode"), s.get("optim.lr"))


def paper_gain(name: str, lr: Any) -> float | None:
    """The paper's ortho - baseline gain (points) on dataset `name` at learning rate `lr`;
    None where Table 2 has no such column."""
    ortho, base = _lookup(name, "penalty", lr), _lookup(name, "none", lr)
    return ortho[0] - base[0] if ortho and base else None
