"""Snakemake script of rule `report`: figures for `snakemake --report` and results/report.html."""

import logging
from pathlib import Path

logging.basicConfig(
    filename=snakemake.log[0],  # noqa: F821 - injected by Snakemake
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

from histofuse.report import build_report  # noqa: E402
from histofuse.report.plots import write_km_png, write_roc_png  # noqa: E402

sm = snakemake  # noqa: F821
predictions = [Path(p) for p in sm.input.predictions]
tables_dir = Path(sm.params.tables_dir)
try:
    write_km_png(predictions, Path(sm.output.km))
    write_roc_png(predictions, Path(sm.output.roc), labels_json=tables_dir / "labels.json")
    build_report(
        out_html=Path(sm.output.html),
        summary_tsv=Path(sm.input.summary),
        folds_tsv_metrics=Path(sm.input.folds_metrics),
        prediction_files=predictions,
        tables_dir=tables_dir,
        folds_tsv=Path(sm.input.folds),
        qc_pngs=[Path(p) for p in sm.input.qc],
        tile_files=[Path(p) for p in sm.input.tiles],
        feature_files=[Path(p) for p in sm.input.features],
        config=dict(sm.config),
        title=sm.config["report"]["title"],
        missing_rate_tsv=Path(sm.input.missing_rate[0]) if sm.input.missing_rate else None,
    )
except Exception:
    logging.exception("report failed")
    raise
