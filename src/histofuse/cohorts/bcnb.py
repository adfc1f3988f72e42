"""BCNB-style breast-cancer clinical table (axillary lymph-node metastasis), and a synthetic stand-in.

Columns: ``Patient ID, Age(years), Tumour Size(cm), Tumour Type, ER, PR, HER2, HER2 Expression,
Histological Grading, Ki67, Molecular subtype, Number of lymph node metastases, Surgical, ALN status``.

The label ``aln`` is 0 for ``N0`` and 1 for ``N+(1-2)`` / ``N+(>2)``. ER, PR and HER2 are
Positive / Negative (→ 1 / 0), HER2 expression 0 / 1+ / 2+ / 3+ (→ 0…3), histological grade
1…3, Ki67 a percentage written as text ("30%", "<5%", "15"; see :func:`parse_ki67_text`).
"Number of lymph node metastases" and "Surgical" are known only after axillary surgery and give
the label away: they are dropped (with a warning naming them) unless ``keep_leaky=True``.

The real table may not be redistributed; :func:`synthetic_bcnb` writes one with the same schema
and a planted signal (ALN metastasis more likely with larger tumours, higher grade and Ki67).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.cohorts.checks import (
    choice_column,
    numeric_columns,
    patient_ids,
    require_columns,
    row_list,
    text_column,
)
from histofuse.cohorts.labels import aln_from_status
from histofuse.cohorts.model import CohortTables
from histofuse.cohorts.reading import read_table
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = "bcnb"
ID = "Patient ID"
LABEL = "ALN status"
COLUMNS: tuple[str, ...] = (
    "Patient ID",
    "Age(years)",
    "Tumour Size(cm)",
    "Tumour Type",
    "ER",
    "PR",
    "HER2",
    "HER2 Expression",
    "Histological Grading",
    "Ki67",
    "Molecular subtype",
    "Number of lymph node metastases",
    "Surgical",
    "ALN status",
)
NUMERIC = {"Age(years)": "age", "Tumour Size(cm)": "tumour_size_cm"}
TEXT = {"Tumour Type": "tumour_type", "Molecular subtype": "molecular_subtype"}
RECEPTORS = {"ER": "er", "PR": "pr", "HER2": "her2"}
LEAKY_NUMERIC = {"Number of lymph node metastases": "lymph_node_metastases"}
LEAKY_TEXT = {"Surgical": "surgery"}
LEAKY: tuple[str, ...] = (*LEAKY_NUMERIC, *LEAKY_TEXT)

_BOUND = r"(?:<=|>=|[<>≤≥~])?"
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_KI67_VALUE = re.compile(rf"^{_BOUND}\s*{_NUMBER}\s*(%?)$")
_KI67_RANGE = re.compile(rf"^{_NUMBER}\s*(%?)\s*[-–~]\s*{_NUMBER}\s*(%?)$")

KI67_KINDS: tuple[str, ...] = ("percent", "fraction", "range")
"""How a Ki67 value was read: a percentage (a ``%`` sign, or a number of 1 or more), a fraction
(a number below 1 without ``%``, times 100) or a range (its midpoint, in either unit)."""


@dataclass(frozen=True)
class Ki67Reading:
    """One Ki67 cell read as a percentage, with how it was read."""

    percent: float
    kind: str
    plain: bool = False
    full_width: bool = False


def _is_fraction(number: float, sign: str) -> bool:
    return not sign and number < 1.0


def read_ki67_text(text: str) -> Ki67Reading | None:
    """A Ki67 cell as a percentage and how its unit was decided, or None when it cannot be read.

    Full-width characters (``＜5％``) are read as their ASCII forms. ``30%``, ``30 %`` and ``30``
    → 30 percent; a number below 1 without ``%`` is a fraction (``0.3`` → 30; BCNB writes
    most values so; ``1`` is 1 %); a bound keeps its value (``<5%`` → 5, ``<0.05`` → 5); a range gives its
    midpoint (``30-40%`` → 35, ``0.3-0.4`` → 35). Values outside 0…100 % give None.
    """
    raw = str(text).strip()
    cleaned = unicodedata.normalize("NFKC", raw).strip()
    full_width = cleaned != raw
    match = _KI67_VALUE.match(cleaned)
    if match:
        number, sign = float(match.group(1)), match.group(2)
        kind = "fraction" if _is_fraction(number, sign) and number > 0 else "percent"
        value = number * 100.0 if kind == "fraction" else number
    else:
        match = _KI67_RANGE.match(cleaned)
        if not match:
            return None
        low, high = float(match.group(1)), float(match.group(3))
        if low > high:
            return None
        signed = bool(match.group(2) or match.group(4))
        scale = 100.0 if _is_fraction(high, "%" if signed else "") else 1.0
        kind, value = "range", scale * (low + high) / 2.0
    if not 0.0 <= value <= 100.0:
        return None
    plain = "%" not in cleaned
    return Ki67Reading(percent=value, kind=kind, plain=plain, full_width=full_width)


def parse_ki67_text(text: str) -> float | None:
    """Ki67 percentage from text (see :func:`read_ki67_text`), or None when it cannot be read."""
    reading = read_ki67_text(text)
    return None if reading is None else reading.percent


def parse_ki67(
    values: pd.Series,
    *,
    path: Path | str | None = None,
    column: str = "Ki67",
    ids: pd.Series | None = None,
    notes: list[str] | None = None,
) -> pd.Series:
    """Ki67 percentages (float64), the unit decided per value; what was done is logged and noted.

    Unreadable text becomes missing; a column that mixes fractions with percentages written
    without ``%`` gets a warning naming the rows of each. ``notes`` receives one line per kind of
    change (fractions scaled, ranges averaged, full-width signs read, unreadable cells).
    """
    readings = values.map(lambda v: None if pd.isna(v) else read_ki67_text(v))
    parsed = readings.map(lambda r: np.nan if r is None else r.percent).astype("float64")

    def rows(mask: pd.Series) -> str:
        return f"{int(mask.sum())} value(s) ({row_list(values.index[mask], ids, values)})"

    def where(test: Callable[[Ki67Reading], bool]) -> pd.Series:
        return readings.map(lambda r: r is not None and test(r)).astype(bool)

    fraction = where(lambda r: r.kind == "fraction")
    plain_percent = where(lambda r: r.kind == "percent" and r.plain and r.percent >= 1.0)
    ranges, widened = where(lambda r: r.kind == "range"), where(lambda r: r.full_width)
    unreadable = values.notna() & parsed.isna()
    found = {
        "written as a fraction (below 1, no '%') and multiplied by 100": fraction,
        "given as a range and replaced by its midpoint": ranges,
        "written with full-width characters, read as their ASCII forms": widened,
        "not a readable percentage, treated as missing": unreadable,
    }
    lines = [f"{path or 'table'}, column '{column}': {rows(mask)} {what}" for what, mask in found.items() if mask.any()]
    if fraction.any() and plain_percent.any():
        lines.append(
            f"{path or 'table'}, column '{column}': mixed units without '%': {rows(plain_percent)} of 1 or more read "
            "as percentages beside the fractions; check these rows"
        )
    for line in lines:
        log.warning("%s", line)
    if notes is not None:
        notes.extend(lines)
    return parsed


def _receptor(text: str) -> str | None:
    return {"positive": "1", "pos": "1", "+": "1", "negative": "0", "neg": "0", "-": "0"}.get(text.strip().lower())


def _her2_expression(text: str) -> str | None:
    key = text.strip().replace(" ", "")
    return {"0": "0", "0+": "0", "1+": "1", "2+": "2", "3+": "3"}.get(key)


def _histological_grade(text: str) -> str | None:
    key = text.strip().upper().removeprefix("GRADE").removeprefix("G").strip()
    key = key[:-2] if key.endswith(".0") else key
    return {"1": "1", "2": "2", "3": "3", "I": "1", "II": "2", "III": "3"}.get(key)


def column_key(name: str) -> str:
    """A header as BCNB's columns are matched: full-width forms read as ASCII, case and spaces ignored."""
    return "".join(unicodedata.normalize("NFKC", str(name)).casefold().split())


def match_columns(table: pd.DataFrame, *, path: Path, notes: list[str]) -> pd.DataFrame:
    """``table`` with its BCNB columns renamed to :data:`COLUMNS`, matched by :func:`column_key`.

    Two headers that match one BCNB column raise ConfigError naming both; renamed headers are noted.
    """
    wanted = {column_key(c): c for c in COLUMNS}
    renames: dict[str, str] = {}
    for header in table.columns:
        canonical = wanted.get(column_key(header))
        if canonical is None:
            continue
        twin = next((h for h, c in renames.items() if c == canonical), None)
        if twin is not None:
            raise ConfigError(
                f"columns {twin!r} and {header!r} both match the BCNB column {canonical!r}.",
                path=path,
                row=1,
                column=str(header),
                fix="remove or rename one of them.",
            )
        renames[header] = canonical
    changed = {h: c for h, c in renames.items() if h != c}
    if changed:
        line = f"{path}: BCNB columns matched ignoring case and spaces: " + ", ".join(
            f"{h!r} as {c!r}" for h, c in changed.items()
        )
        log.info("%s", line)
        notes.append(line)
    return table.rename(columns=renames)


def read_bcnb(clinical: str | Path, *, keep_leaky: bool = False, sep: str | None = None) -> CohortTables:
    """Read a BCNB-style clinical table: ``aln`` label and a clinical table (sorted by patient id).

    ``clinical``: the published ``.xlsx`` workbook or a delimited text table (``sep`` for a text
    table whose suffix does not tell its separator). Column names match case- and space-insensitively.
    """
    path = Path(clinical)
    notes: list[str] = []
    table = match_columns(read_table(path, sep=sep), path=path, notes=notes)
    require_columns(table, list(COLUMNS), path=path, what="BCNB clinical table")
    extra = [c for c in table.columns if c not in COLUMNS]
    if extra:
        log.warning("%s: columns outside the BCNB schema are ignored: %s", path, ", ".join(extra))
    ids = patient_ids(table, ID, path=path)

    patients = pd.DataFrame({"patient_id": ids}, index=table.index)
    patients["aln"] = aln_from_status(table[LABEL], path=path, column=LABEL, ids=ids)

    out = pd.DataFrame({"patient_id": ids}, index=table.index)
    numeric = numeric_columns(table, list(NUMERIC), path=path, ids=ids)
    for column, name in NUMERIC.items():
        out[name] = numeric[column]
    for column, name in TEXT.items():
        out[name] = text_column(table[column])
    for column, name in RECEPTORS.items():
        out[name] = _as_float(
            choice_column(table[column], _receptor, path=path, column=column, allowed=("Positive", "Negative"), ids=ids)
        )
    out["her2_expression"] = _as_float(
        choice_column(
            table["HER2 Expression"],
            _her2_expression,
            path=path,
            column="HER2 Expression",
            allowed=("0", "1+", "2+", "3+"),
            ids=ids,
        )
    )
    out["histological_grade"] = _as_float(
        choice_column(
            table["Histological Grading"],
            _histological_grade,
            path=path,
            column="Histological Grading",
            allowed=("1", "2", "3"),
            ids=ids,
        )
    )
    out["ki67"] = parse_ki67(table["Ki67"], path=path, column="Ki67", ids=ids, notes=notes)
    if keep_leaky:
        leaky_numbers = numeric_columns(table, list(LEAKY_NUMERIC), path=path, ids=ids)
        for column, name in LEAKY_NUMERIC.items():
            out[name] = leaky_numbers[column]
        for column, name in LEAKY_TEXT.items():
            out[name] = text_column(table[column])
        line = f"{path}: keeping columns that give the ALN label away, as asked: {', '.join(LEAKY)}"
    else:
        line = (
            f"{path}: dropping columns that give the ALN label away (known only after axillary surgery): "
            f"{', '.join(LEAKY)} (keep_leaky: true keeps them)"
        )
    log.warning("%s", line)
    notes.append(line)
    patients = patients.sort_values("patient_id").reset_index(drop=True)
    out = out.sort_values("patient_id").reset_index(drop=True)
    log.info("%s: %d patients, %d with ALN metastasis", path, len(patients), int(patients["aln"].sum()))
    return CohortTables(patients=patients, clinical=out, source=SOURCE, notes=tuple(notes))


def _as_float(values: pd.Series) -> pd.Series:
    return values.astype("Float64").astype("float64")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_bcnb(n_patients: int, seed: int) -> pd.DataFrame:
    """A seeded synthetic table with the BCNB schema and a planted ALN signal.

    ALN metastasis log-odds rise with log tumour size, histological grade and Ki67; the leaky
    columns follow the label (metastasis count from the ALN class, mastectomy more frequent when
    node-positive). Ki67 is written in the mixed styles of real tables ("30%", "30", "<5%"), with a
    few unreadable ("not assessed") and missing cells; a few grades are missing.
    """
    if not isinstance(n_patients, int) or n_patients < 1:
        raise ConfigError(f"n_patients must be a positive integer (got {n_patients!r}).", fix="ask for at least one patient.")
    rng = np.random.default_rng(seed)
    n = n_patients
    age = np.clip(rng.normal(53.0, 11.0, n), 25, 88).round().astype(int)
    log_size = rng.normal(np.log(2.4), 0.45, n)
    size = np.clip(np.exp(log_size), 0.5, 10.0).round(1)
    grade = rng.choice([1, 2, 3], p=[0.15, 0.55, 0.30], size=n)
    ki67 = np.clip(rng.normal(8.0 + 12.0 * (grade - 1), 10.0), 1.0, 95.0).round()
    er = rng.random(n) < 0.75
    pr = np.where(er, rng.random(n) < 0.85, rng.random(n) < 0.05)
    her2_expression = rng.choice(np.array(["0", "1+", "2+", "3+"]), p=[0.3, 0.3, 0.22, 0.18], size=n)
    her2 = (her2_expression == "3+") | ((her2_expression == "2+") & (rng.random(n) < 0.3))
    tumour_type = rng.choice(
        np.array(["Invasive ductal carcinoma", "Invasive lobular carcinoma", "Other type"]), p=[0.85, 0.07, 0.08], size=n
    )

    logit = -0.6 + 1.2 * (log_size - np.log(2.4)) / 0.45 + 0.7 * (grade - 2) + 0.6 * (ki67 - 25.0) / 15.0
    positive = rng.random(n) < _sigmoid(logit)
    many = positive & (rng.random(n) < _sigmoid(logit - 0.5))
    status = np.where(~positive, "N0", np.where(many, "N+(>2)", "N+(1-2)"))
    metastases = np.where(~positive, 0, np.where(many, 3 + rng.poisson(4.0, n), rng.integers(1, 3, n)))
    mastectomy = rng.random(n) < np.where(positive, 0.85, 0.45)
    surgery = np.where(mastectomy, "Modified radical mastectomy", "Breast-conserving surgery")

    hormone = er | pr
    subtype = np.select(
        [hormone & ~her2 & (ki67 < 20), hormone, her2],
        ["Luminal A", "Luminal B", "HER2(+)"],
        default="Triple negative",
    )
    style = rng.random(n)
    ki67_text = np.where(
        ki67 < 5,
        "<5%",
        np.where(style < 0.7, [f"{k:.0f}%" for k in ki67], [f"{k:.0f}" for k in ki67]),
    ).astype(object)
    damaged = rng.random(n)
    ki67_text[damaged < 0.02] = "not assessed"
    ki67_text[(damaged >= 0.02) & (damaged < 0.05)] = None
    grade_text = pd.array(grade, dtype="Int64")
    grade_text[rng.random(n) < 0.05] = pd.NA

    def receptor(flags: np.ndarray) -> np.ndarray:
        return np.where(flags, "Positive", "Negative")

    return pd.DataFrame(
        {
            "Patient ID": np.arange(1, n + 1),
            "Age(years)": age,
            "Tumour Size(cm)": size,
            "Tumour Type": tumour_type,
            "ER": receptor(er),
            "PR": receptor(pr),
            "HER2": receptor(her2),
            "HER2 Expression": her2_expression,
            "Histological Grading": grade_text,
            "Ki67": ki67_text,
            "Molecular subtype": subtype,
            "Number of lymph node metastases": metastases,
            "Surgical": surgery,
            "ALN status": status,
        }
    )


def write_synthetic_bcnb(path: str | Path, n_patients: int, seed: int) -> Path:
    """Write :func:`synthetic_bcnb` as UTF-8 CSV with LF line endings; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_bcnb(n_patients, seed).to_csv(path, index=False, lineterminator="\n")
    return path
