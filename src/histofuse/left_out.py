"""Patients a model left out of its predictions, and why, kept in the predictions file itself.

A model with no input for a patient (a slides-only model and a patient without tile features)
does not predict for them: their rows are absent from ``predictions/{model}/fold{k}.parquet``,
whose parquet metadata lists them (``patient_id, split, reason``) for the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from histofuse.errors import HistofuseError
from histofuse.io import atomic_path

LEFT_OUT_KEY = b"histofuse.left_out"
LEFT_OUT_COLUMNS: tuple[str, ...] = ("patient_id", "split", "reason")


def write_predictions(predictions: pd.DataFrame, path: Path, *, left_out: pd.DataFrame) -> None:
    """Write ``predictions`` to parquet (atomically) with ``left_out`` in its metadata."""
    table = pa.Table.from_pandas(predictions, preserve_index=False)
    records = left_out[list(LEFT_OUT_COLUMNS)].astype(str).to_dict(orient="records")
    metadata = {**(table.schema.metadata or {}), LEFT_OUT_KEY: json.dumps(records).encode()}
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)


def read_left_out(path: Path) -> pd.DataFrame:
    """The patients the predictions file ``path`` leaves out (none for files written without the list)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise HistofuseError(f"cannot read predictions ({exc}).", path=path, fix="re-run the training step.") from exc
    records = json.loads(metadata.get(LEFT_OUT_KEY, b"[]"))
    return pd.DataFrame(records, columns=list(LEFT_OUT_COLUMNS), dtype=str)
