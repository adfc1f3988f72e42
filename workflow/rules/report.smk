# Metrics per model, task and fold; their summary; figures; the HTML report.


rule evaluate:
    input:
        predictions=get_prediction_files,
    output:
        folds=f"{RESULTS}/metrics/folds.tsv",
        summary=report(
            f"{RESULTS}/metrics/summary.tsv",
            caption="../report/summary.rst",
            category="Metrics",
        ),
        comparison=report(
            f"{RESULTS}/metrics/comparison.tsv",
            caption="../report/comparison.rst",
            category="Metrics",
        ),
        confusion=f"{RESULTS}/metrics/confusion.tsv",
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        settings=EVALUATE_SETTINGS,
    shell:
        "histofuse evaluate --predictions {input.predictions:q} --out-folds {output.folds:q} "
        "--out-summary {output.summary:q} --out-comparison {output.comparison:q} "
        "--out-confusion {output.confusion:q} --settings {params.settings:q} > {log:q} 2>&1"


rule attention:
    input:
        slide=get_slide_path,
        features=get_attention_features,
        checkpoints=get_abmil_checkpoints,
        slides=f"{RESULTS}/tables/slides.parquet",
        folds=f"{RESULTS}/folds/folds.tsv",
    output:
        png=report(
            f"{RESULTS}/plots/attention/{{slide}}.png",
            caption="../report/attention.rst",
            category="Attention",
            labels={"slide": "{slide}"},
        ),
    log:
        f"{RESULTS}/logs/attention/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attention/{{slide}}.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        mpp=get_slide_mpp,
        reader=config["reader"],
    shell:
        "histofuse attention --slide-id {wildcards.slide:q} --slide {input.slide:q} "
        "--features {input.features:q} --checkpoints {input.checkpoints:q} "
        "--slides-table {input.slides:q} --folds {input.folds:q} --out {output.png:q} "
        "--reader {params.reader:q} --mpp={params.mpp:q} > {log:q} 2>&1"


rule report:
    input:
        summary=f"{RESULTS}/metrics/summary.tsv",
        folds_metrics=f"{RESULTS}/metrics/folds.tsv",
        comparison=f"{RESULTS}/metrics/comparison.tsv",
        confusion=f"{RESULTS}/metrics/confusion.tsv",
        predictions=get_prediction_files,
        histories=get_history_files,
        missing_rate=get_missing_rate_table,
        modality_ablation=get_ablation_table,
        attention=get_attention_files,
        patients=f"{RESULTS}/tables/patients.parquet",
        notes=f"{RESULTS}/tables/notes.tsv",
        folds=f"{RESULTS}/folds/folds.tsv",
        preprocessing=get_preprocessing_files,
        qc=get_qc_files,
        tiles=get_tile_files,
        features=get_feature_files,
    output:
        html=f"{RESULTS}/report.html",
        km=report(
            f"{RESULTS}/plots/km.png", caption="../report/km.rst", category="Survival"
        ),
        roc=report(
            f"{RESULTS}/plots/roc.png",
            caption="../report/roc.rst",
            category="Classification",
        ),
        confusion=report(
            f"{RESULTS}/plots/confusion.png",
            caption="../report/confusion.rst",
            category="Classification",
        ),
        training=report(
            f"{RESULTS}/plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        composition=report(
            f"{RESULTS}/plots/fold_composition.png",
            caption="../report/fold_composition.rst",
            category="Cohort",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tables_dir=get_tables_dir,
        benchmarks_dir=f"{RESULTS}/benchmarks",
        exclusions=f"{RESULTS}/exclusions.tsv",
    script:
        "../scripts/report.py"
