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


def paper_value(cell: Any) -> tuple[float, float] | None:
    """The paper's (mean, std) for a cell, if it is one of Table 2's 18 settings."""
    s = cell.settings
    lr = s.get("optim.lr")
    if not isinstance(lr, (int, float)) or any(s.get(k) != v for k, v in PAPER_SETUP.items()):
        return None
    if s.get("ortho.mode") == "penalty" and s.get("ortho.weight") != 1.0:
        return None
    for (name, mode, paper_lr), value in PAPER_TABLE2.items():
        same = s.get("data.name") == name and s.get("ortho.mode") == mode
        if same and math.isclose(lr, paper_lr, rel_tol=1e-9):
            return value
    return None
