"""Snakemake script of rule `report`: figures for `snakemake --report` and results/report.html."""

import logging
from pathlib import Path

logging.basicConfig(
    filename=snakemake.log[0],  # noqa: F821 - injected by Snakemake
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

from histofuse.report import build_report  # noqa: E402
from histofuse.report.standalone import write_figures  # noqa: E402

sm = snakemake  # noqa: F821
predictions = [Path(p) for p in sm.input.predictions]
tables_dir = Path(sm.params.tables_dir)
missing_rate = list(sm.input.missing_rate)
ablation = list(sm.input.modality_ablation)
try:
    write_figures(
        prediction_files=predictions,
        labels_json=tables_dir / "labels.json",
        confusion_tsv=Path(sm.input.confusion),
        history_files=[Path(p) for p in sm.input.histories],
        folds_tsv=Path(sm.input.folds),
        patients=Path(sm.input.patients),
        out_km=Path(sm.output.km),
        out_roc=Path(sm.output.roc),
        out_confusion=Path(sm.output.confusion),
        out_training=Path(sm.output.training),
        out_composition=Path(sm.output.composition),
    )
    build_report(
        out_html=Path(sm.output.html),
        summary_tsv=Path(sm.input.summary),
        folds_tsv_metrics=Path(sm.input.folds_metrics),
        comparison_tsv=Path(sm.input.comparison),
        confusion_tsv=Path(sm.input.confusion),
        prediction_files=predictions,
        history_files=[Path(p) for p in sm.input.histories],
        missing_rate_tsv=Path(missing_rate[0]) if missing_rate else None,
        modality_ablation_tsv=Path(ablation[0]) if ablation else None,
        attention_pngs=[Path(p) for p in sm.input.attention],
        tables_dir=tables_dir,
        folds_tsv=Path(sm.input.folds),
        qc_pngs=[Path(p) for p in sm.input.qc],
        tile_files=[Path(p) for p in sm.input.tiles],
        feature_files=[Path(p) for p in sm.input.features],
        benchmarks_dir=Path(sm.params.benchmarks_dir),
        exclusions_tsv=Path(sm.params.exclusions),
        preprocessing_files=[Path(p) for p in sm.input.preprocessing],
        config=dict(sm.config),
        title=sm.config["report"]["title"],
    )
except Exception:
    logging.exception("report failed")
    raise
