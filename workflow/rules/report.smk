# Metrics per model, task and fold; their summary; figures; the HTML report.


rule evaluate:
    input:
        predictions=get_prediction_files,
    output:
        folds=f"{RESULTS}/metrics/folds.tsv",
        summary=report(
            f"{RESULTS}/metrics/summary.tsv",
            caption="../report/summary.rst",
            category="Results",
        ),
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "histofuse evaluate --predictions {input.predictions:q} --out-folds '{output.folds}' "
        "--out-summary '{output.summary}' > '{log}' 2>&1"


rule report:
    input:
        summary=f"{RESULTS}/metrics/summary.tsv",
        folds_metrics=f"{RESULTS}/metrics/folds.tsv",
        predictions=get_prediction_files,
        patients=f"{RESULTS}/tables/patients.parquet",
        folds=f"{RESULTS}/folds/folds.tsv",
        qc=get_qc_files,
        tiles=get_tile_files,
        features=get_feature_files,
        missing_rate=get_missing_rate_table,
    output:
        html=f"{RESULTS}/report.html",
        km=report(
            f"{RESULTS}/plots/km.png", caption="../report/km.rst", category="Results"
        ),
        roc=report(
            f"{RESULTS}/plots/roc.png", caption="../report/roc.rst", category="Results"
        ),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tables_dir=get_tables_dir,
    script:
        "../scripts/report.py"
