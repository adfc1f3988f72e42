"""Small BCNB clinical workbooks in the shape BCNB publishes (the real table may not be shipped).

The published ``.xlsx`` has one sheet; its header differs in case from the paper's column list
(``Histological grading``); ids, ages and most Ki67 values are numeric cells, Ki67 mostly a
fraction (``0.3``), sometimes a percentage range (``30-40%``) or a bound with full-width signs
(``＜5%``, ``＞50%``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openpyxl

HEADER = [
    "Patient ID",
    "Age(years)",
    "Tumour Size(cm)",
    "Tumour Type",
    "ER",
    "PR",
    "HER2",
    "HER2 Expression",
    "Histological grading",
    "Surgical",
    "Ki67",
    "Molecular subtype",
    "Number of lymph node metastases",
    "ALN status",
]
KI67_CELLS: list[object] = [0.3, "30-40%", "＜5%", "＞50%", 0.05, 0.6, 0.15, 0.2]
"""Ki67 cells in the published styles, cycled over the rows; read as 30, 35, 5, 50, 5, 60, 15, 20 %."""
KI67_PERCENT = [30.0, 35.0, 5.0, 50.0, 5.0, 60.0, 15.0, 20.0]


def bcnb_rows(n_patients: int, seed: int = 0) -> list[list[object]]:
    """``n_patients`` rows (ids 1…n) with both ALN classes and every Ki67 style."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        positive = i % 3 == 0
        rows.append(
            [
                i + 1,
                int(rng.integers(30, 80)),
                round(float(rng.uniform(1.0, 5.0)), 1),
                "Invasive ductal carcinoma",
                "Positive" if i % 4 else "Negative",
                "Positive" if i % 5 else "Negative",
                "Negative",
                ["0", "1+", "2+", "3+"][i % 4],
                [1, 2, 3][i % 3],
                "Breast-conserving surgery",
                KI67_CELLS[i % len(KI67_CELLS)],
                "Luminal B",
                (i % 4) + 1 if positive else 0,
                ("N+(1-2)" if i % 2 else "N+(>2)") if positive else "N0",
            ]
        )
    return rows


def write_bcnb_xlsx(path: Path, n_patients: int = 24, *, header: list[str] | None = None, seed: int = 0) -> Path:
    """A one-sheet workbook in BCNB's published shape; returns its path."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append(header or HEADER)
    for row in bcnb_rows(n_patients, seed):
        sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path
