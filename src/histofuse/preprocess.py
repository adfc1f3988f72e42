"""Per-fold preprocessing of the genomic and clinical tables, fitted on the fold's training part only.

For each table a :class:`TableTransform` is fitted on the training patients' rows and then applied
unchanged to every patient of the fold (train, validation and test):

* genomic column groups (by name suffix) that are z-scored already (MCAT's expression) are
  detected and left as they are (no ``log1p``, no rescaling); ``log1p`` (expression columns, by
  suffix) applies only to columns without negative training values; both decisions are logged and
  kept in the fold's ``notes``;
* numeric columns: optional ``log1p`` as above, median imputation with a
  missing-indicator column for every column that had missing values in the training part,
  z-scoring with the training mean and standard deviation, clipping to ±``clip`` deviations;
* categorical columns (text): mode imputation plus indicator, one-hot over the training part's
  categories (a value unseen in training gives all zeros);
* columns constant on the training part are dropped; ``top_k`` keeps the most variable numeric
  columns (variance after ``log1p``, on the training part).

The fitted state is plain JSON (``FoldPreprocessing.to_json``), so it is saved per fold, read back
by training and inspected by eye; nothing is pickled. Gene groups map onto the output columns so
that group-wise models (SNN per family, KSF subspaces) find their features after filtering.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from histofuse.configuration import PreprocessingConfig
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "FoldPreprocessing",
    "NumericColumn",
    "PreprocessSettings",
    "TableTransform",
    "fit_fold_preprocessing",
]

_VERSION = 1


_PREPROCESSSETTINGS_DEFAULTS = PreprocessingConfig()
"""Defaults of ``PreprocessSettings``, from the configuration's description (:mod:`histofuse.configuration`)."""


@dataclass(frozen=True, kw_only=True)
class PreprocessSettings:
    """How the tables are preprocessed (config section ``preprocessing``)."""

    log1p_suffixes: tuple[str, ...] = tuple(_PREPROCESSSETTINGS_DEFAULTS.log1p_suffixes)
    """Numeric genomic columns whose names end with one of these get ``log1p`` (expression)."""
    top_k_genomic: int | None = _PREPROCESSSETTINGS_DEFAULTS.top_k_genomic
    """Keep the ``top_k`` most variable genomic columns (None = all non-constant columns)."""
    missing_indicators: bool = _PREPROCESSSETTINGS_DEFAULTS.missing_indicators
    """Add a 0/1 column for each column that has missing values in the training part."""
    clip: float = _PREPROCESSSETTINGS_DEFAULTS.clip
    """Scaled values are clipped to ±clip training standard deviations."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "log1p_suffixes", tuple(self.log1p_suffixes))
        if self.top_k_genomic is not None and self.top_k_genomic < 1:
            raise ConfigError(
                f"preprocessing.top_k_genomic must be at least 1 or null, got {self.top_k_genomic}.",
                column="preprocessing.top_k_genomic",
            )
        if not self.clip > 0:
            raise ConfigError(f"preprocessing.clip must be positive, got {self.clip}.", column="preprocessing.clip")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> PreprocessSettings:
        values = dict(mapping or {})
        unknown = sorted(set(values) - {"log1p_suffixes", "top_k_genomic", "missing_indicators", "clip"})
        if unknown:
            raise ConfigError(f"unknown preprocessing key(s) {unknown}.", column="preprocessing")
        if "log1p_suffixes" in values:
            values["log1p_suffixes"] = tuple(values["log1p_suffixes"] or ())
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class NumericColumn:
    """One numeric input column's fitted statistics."""

    name: str
    log1p: bool
    median: float
    mean: float
    std: float
    indicator: bool


@dataclass(frozen=True, kw_only=True)
class CategoricalColumn:
    """One categorical input column's training categories and mode."""

    name: str
    categories: tuple[str, ...]
    mode: str
    indicator: bool


@dataclass(frozen=True, kw_only=True)
class TableTransform:
    """A fitted transform for one table: input columns → ``output_columns`` (float32)."""

    numeric: tuple[NumericColumn, ...] = ()
    categorical: tuple[CategoricalColumn, ...] = ()
    clip: float = 10.0
    output_columns: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        names: list[str] = []
        for column in self.numeric:
            names.append(column.name)
        for cat in self.categorical:
            names.extend(f"{cat.name}={value}" for value in cat.categories)
        for column in self.numeric:
            if column.indicator:
                names.append(f"{column.name}__missing")
        for cat in self.categorical:
            if cat.indicator:
                names.append(f"{cat.name}__missing")
        object.__setattr__(self, "output_columns", tuple(names))

    @property
    def n_outputs(self) -> int:
        return len(self.output_columns)

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.numeric) + tuple(c.name for c in self.categorical)

    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        *,
        log1p_columns: Sequence[str] = (),
        as_is_columns: Sequence[str] = (),
        top_k: int | None = None,
        missing_indicators: bool = True,
        clip: float = 10.0,
    ) -> TableTransform:
        """Fit on the training rows (one column per feature; NaN / empty = missing).

        ``as_is_columns`` (already standardised) keep their values: mean 0 and deviation 1 are stored.
        """
        log1p_set = set(map(str, log1p_columns))
        as_is = set(map(str, as_is_columns))
        numeric: list[NumericColumn] = []
        categorical: list[CategoricalColumn] = []
        variances: list[float] = []
        for name in map(str, train.columns):
            series = train[name]
            if _is_numeric(series):
                values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                values = np.where(np.isfinite(values), values, np.nan)
                use_log = name in log1p_set
                if use_log:
                    values = np.log1p(np.clip(values, 0.0, None))
                present = values[~np.isnan(values)]
                if present.size == 0:
                    log.info("column %s has no value in the training part: dropped", name)
                    continue
                median = float(np.median(present))
                imputed = np.where(np.isnan(values), median, values)
                std = float(imputed.std())
                if not std > 1e-12 * max(1.0, abs(float(imputed.mean()))):
                    continue  # constant on the training part: carries no information
                numeric.append(
                    NumericColumn(
                        name=name,
                        log1p=use_log,
                        median=median,
                        mean=0.0 if name in as_is else float(imputed.mean()),
                        std=1.0 if name in as_is else std,
                        indicator=missing_indicators and bool(np.isnan(values).any()),
                    )
                )
                variances.append(float(imputed.var()))
            else:
                text = series.astype("string")
                counts = text.dropna().value_counts()
                if counts.empty:
                    continue
                categories = tuple(sorted(map(str, counts.index)))
                if len(categories) < 2 and not text.isna().any():
                    continue
                mode = str(sorted(counts[counts == counts.max()].index)[0])
                categorical.append(
                    CategoricalColumn(
                        name=name,
                        categories=categories,
                        mode=mode,
                        indicator=missing_indicators and bool(text.isna().any()),
                    )
                )
        if top_k is not None and len(numeric) > top_k:
            order = np.argsort(-np.asarray(variances), kind="stable")[:top_k]
            keep = sorted(int(i) for i in order)
            numeric = [numeric[i] for i in keep]
        return cls(numeric=tuple(numeric), categorical=tuple(categorical), clip=clip)

    def transform(self, frame: pd.DataFrame) -> npt.NDArray[np.float32]:
        """Rows of ``frame`` (same input columns as at fit time) → ``(n, n_outputs)`` float32."""
        missing = [name for name in self.input_columns if name not in frame.columns]
        if missing:
            raise ConfigError(
                f"columns {missing[:10]} seen at fit time are absent.",
                fix="preprocess and train from the same tables (rerun the preprocessing stage).",
            )
        blocks: list[npt.NDArray[np.float64]] = []
        indicators: list[npt.NDArray[np.float64]] = []
        n = len(frame)
        for column in self.numeric:
            values = pd.to_numeric(frame[column.name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            values = np.where(np.isfinite(values), values, np.nan)
            if column.log1p:
                values = np.log1p(np.clip(values, 0.0, None))
            is_missing = np.isnan(values)
            scaled = (np.where(is_missing, column.median, values) - column.mean) / column.std
            blocks.append(np.clip(scaled, -self.clip, self.clip)[:, None])
            if column.indicator:
                indicators.append(is_missing.astype(np.float64)[:, None])
        for cat in self.categorical:
            text = frame[cat.name].astype("string")
            is_missing = text.isna().to_numpy()
            filled = text.fillna(cat.mode).to_numpy(dtype=object)
            onehot = np.stack([(filled == value) for value in cat.categories], axis=1).astype(np.float64)
            blocks.append(onehot)
            if cat.indicator:
                indicators.append(is_missing.astype(np.float64)[:, None])
        parts = blocks + indicators
        if not parts:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "numeric": [vars(c) for c in self.numeric],
            "categorical": [{**vars(c), "categories": list(c.categories)} for c in self.categorical],
            "output_columns": list(self.output_columns),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableTransform:
        return cls(
            numeric=tuple(NumericColumn(**c) for c in data.get("numeric", [])),
            categorical=tuple(
                CategoricalColumn(**{**c, "categories": tuple(c["categories"])}) for c in data.get("categorical", [])
            ),
            clip=float(data.get("clip", 10.0)),
        )


def _is_numeric(series: pd.Series) -> bool:
    """Numbers (and booleans) are numeric; a pandas ``string`` column is categorical even when its
    values look like numbers (class labels); an ``object`` column is numeric when every value parses."""
    if isinstance(series.dtype, pd.StringDtype):
        return False
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return True
    if pd.api.types.is_bool_dtype(series):
        return True
    present = series.dropna()
    return len(present) > 0 and bool(pd.to_numeric(present, errors="coerce").notna().all())


@dataclass(frozen=True, kw_only=True)
class FoldPreprocessing:
    """The fitted transforms of one fold, the training patients they saw, and the gene groups."""

    fold: int
    train_patients: tuple[str, ...]
    genomics: TableTransform
    clinical: TableTransform
    genomic_groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Group name → indices of ``genomics.output_columns`` (a feature may be in several groups)."""
    notes: tuple[str, ...] = ()
    """What fitting decided about the user's values that the settings alone do not say."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": _VERSION,
                "fold": self.fold,
                "train_patients": list(self.train_patients),
                "genomics": self.genomics.to_dict(),
                "clinical": self.clinical.to_dict(),
                "genomic_groups": {k: list(v) for k, v in self.genomic_groups.items()},
                "notes": list(self.notes),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, *, path: Path | None = None) -> FoldPreprocessing:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not a preprocessing file ({exc}).", path=path, fix="rerun the preprocessing stage.") from None
        if data.get("version") != _VERSION:
            raise ConfigError(
                f"preprocessing file version {data.get('version')!r}, expected {_VERSION}.",
                path=path,
                fix="rerun the preprocessing stage.",
            )
        return cls(
            fold=int(data["fold"]),
            train_patients=tuple(data["train_patients"]),
            genomics=TableTransform.from_dict(data["genomics"]),
            clinical=TableTransform.from_dict(data["clinical"]),
            genomic_groups={k: tuple(v) for k, v in data.get("genomic_groups", {}).items()},
            notes=tuple(data.get("notes", ())),
        )

    @classmethod
    def read(cls, path: str | Path) -> FoldPreprocessing:
        path = Path(path)
        return cls.from_json(path.read_text(encoding="utf-8"), path=path)


def _group_indices(output_columns: Sequence[str], gene_groups: pd.DataFrame | None) -> dict[str, tuple[int, ...]]:
    """Group → output column indices, from a ``feature, group`` table (features may repeat)."""
    if gene_groups is None or gene_groups.empty:
        return {"all": tuple(range(len(output_columns)))} if output_columns else {}
    by_feature: dict[str, list[str]] = {}
    for feature, group in zip(gene_groups["feature"].astype(str), gene_groups["group"].astype(str), strict=True):
        by_feature.setdefault(feature, []).append(group)
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(output_columns):
        base = name.removesuffix("__missing")
        for group in by_feature.get(base, ["ungrouped"]):
            groups.setdefault(group, []).append(index)
    return {group: tuple(indices) for group, indices in sorted(groups.items())}


STANDARDISED_MEAN = 0.25
"""A column group is z-scored already when its columns' median training mean is within ±this …"""
STANDARDISED_STD = (0.75, 1.33)
"""… their median training standard deviation within this range …"""
STANDARDISED_SHARE = 0.9
"""… this share of its columns has a mean within ±1 and a deviation within 0.5…2, and its values
are continuous (not all whole numbers, as copy-number calls are) with some below 0."""


def column_group(name: str) -> str:
    """A genomic column's group: its name suffix from the last ``_`` (``TP53_rnaseq`` → ``_rnaseq``)."""
    return name[name.rfind("_") :] if "_" in name else "(no suffix)"


def _numeric_values(frame: pd.DataFrame) -> pd.DataFrame:
    numeric = [c for c in frame.columns if _is_numeric(frame[c])]
    values = frame[numeric].apply(pd.to_numeric, errors="coerce").astype("float64")
    return values.where(np.isfinite(values))


def _looks_standardised(values: pd.DataFrame) -> bool:
    mean, std = values.mean(), values.std(ddof=0)
    present = values.stack()
    return bool(
        len(present) > 0
        and (present < 0).any()
        and (present % 1 != 0).any()
        and abs(float(mean.median())) <= STANDARDISED_MEAN
        and STANDARDISED_STD[0] <= float(std.median()) <= STANDARDISED_STD[1]
        and float(((mean.abs() <= 1.0) & std.between(0.5, 2.0)).mean()) >= STANDARDISED_SHARE
    )


def standardised_groups(train: pd.DataFrame) -> dict[str, list[str]]:
    """Column groups (by name suffix) already z-scored on the training part: group → its columns.

    The test is on the group as a whole (see :data:`STANDARDISED_MEAN` … :data:`STANDARDISED_SHARE`),
    so that a small training part does not split a standardised group by chance.
    """
    values = _numeric_values(train)
    groups: dict[str, list[str]] = {}
    for name in map(str, values.columns):
        groups.setdefault(column_group(name), []).append(name)
    return {g: cols for g, cols in groups.items() if len(cols) >= 2 and _looks_standardised(values[cols])}


def plan_genomic_columns(train: pd.DataFrame, log1p_suffixes: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Which genomic columns get ``log1p``, which are left as they are, and notes saying why.

    ``log1p`` applies to columns ending with ``log1p_suffixes`` that are non-negative on the training
    part; an already standardised group is neither logged nor rescaled.
    """
    values = _numeric_values(train)
    as_is_groups = standardised_groups(train)
    as_is = sorted(c for cols in as_is_groups.values() for c in cols)
    notes = [
        f"genomic columns '*{group}' ({len(cols)}) are already standardised (training mean ≈ 0, deviation ≈ 1): "
        "left as they are, without log1p or rescaling"
        for group, cols in sorted(as_is_groups.items())
    ]
    suffixed = [c for c in map(str, values.columns) if log1p_suffixes and c.endswith(tuple(log1p_suffixes))]
    candidates = [c for c in suffixed if c not in set(as_is)]
    negative = [c for c in candidates if (values[c] < 0).any()]
    if negative:
        notes.append(
            f"log1p skipped on {len(negative)} column(s) with negative training values ({', '.join(negative[:5])}"
            + (" …" if len(negative) > 5 else "")
            + "): log1p applies to non-negative columns only"
        )
    return [c for c in candidates if c not in set(negative)], as_is, notes


def fit_fold_preprocessing(
    *,
    fold: int,
    fold_rows: pd.DataFrame,
    genomics: pd.DataFrame,
    clinical: pd.DataFrame,
    gene_groups: pd.DataFrame | None,
    settings: PreprocessSettings,
) -> FoldPreprocessing:
    """Fit the fold's transforms on the rows of its ``train`` patients only.

    ``fold_rows``: ``patient_id, split`` of this fold; ``genomics`` / ``clinical``: ``patient_id`` +
    feature columns (patients without a row count as all-missing).
    """
    train_ids = sorted(fold_rows.loc[fold_rows["split"] == "train", "patient_id"].astype(str))
    if not train_ids:
        raise ConfigError(f"fold {fold} has no training patient.", column="split")

    def train_part(table: pd.DataFrame) -> pd.DataFrame:
        indexed = table.assign(patient_id=table["patient_id"].astype(str)).set_index("patient_id")
        return indexed.reindex(train_ids)

    genomic_train = train_part(genomics)
    log1p_columns, as_is_columns, notes = plan_genomic_columns(genomic_train, settings.log1p_suffixes)
    for note in notes:
        log.warning("fold %d: %s", fold, note)
    genomic_transform = TableTransform.fit(
        genomic_train,
        log1p_columns=log1p_columns,
        as_is_columns=as_is_columns,
        top_k=settings.top_k_genomic,
        missing_indicators=settings.missing_indicators,
        clip=settings.clip,
    )
    clinical_transform = TableTransform.fit(
        train_part(clinical), missing_indicators=settings.missing_indicators, clip=settings.clip
    )
    log.info(
        "fold %d: fitted on %d training patients: %d genomic and %d clinical output columns",
        fold,
        len(train_ids),
        genomic_transform.n_outputs,
        clinical_transform.n_outputs,
    )
    return FoldPreprocessing(
        fold=fold,
        train_patients=tuple(train_ids),
        genomics=genomic_transform,
        clinical=clinical_transform,
        genomic_groups=_group_indices(genomic_transform.output_columns, gene_groups),
        notes=tuple(notes),
    )
