# Does each multi-modal model use each modality? Test predictions with one modality permuted across
# the test patients (evaluation.ablation_repeats), then the metric drop with bootstrap intervals.


rule modality_ablation:
    input:
        checkpoint=f"{RESULTS}/models/{{model}}/fold{{fold}}.pt",
        features=get_train_features,
        patients=f"{RESULTS}/tables/patients.parquet",
        slides=f"{RESULTS}/tables/slides.parquet",
        genomics=f"{RESULTS}/tables/genomics.parquet",
        clinical=f"{RESULTS}/tables/clinical.parquet",
        folds=f"{RESULTS}/folds/folds.tsv",
        preprocessing=f"{RESULTS}/preprocessing/fold{{fold}}.json",
    output:
        predictions=f"{RESULTS}/modality_ablation/{{model}}/fold{{fold}}.parquet",
    log:
        f"{RESULTS}/logs/modality_ablation/{{model}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/modality_ablation/{{model}}/fold{{fold}}.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        features_dir=f"{RESULTS}/features/{ENCODER}",
        tables_dir=get_tables_dir,
        settings=ABLATION_SETTINGS,
        wsi="" if USE_WSI else "--no-wsi",
    shell:
        "histofuse modality-ablation --checkpoint {input.checkpoint:q} --fold {wildcards.fold} "
        "--features-dir {params.features_dir:q} --tables-dir {params.tables_dir:q} "
        "--folds {input.folds:q} --preprocessing {input.preprocessing:q} "
        "--settings {params.settings:q} {params.wsi} --threads {threads} "
        "--out {output.predictions:q} > {log:q} 2>&1"


rule modality_ablation_table:
    input:
        predictions=get_ablation_files,
    output:
        table=f"{RESULTS}/metrics/modality_ablation.tsv",
        figure=report(
            f"{RESULTS}/plots/modality_ablation.png",
            caption="../report/modality_ablation.rst",
            category="Modalities",
        ),
    log:
        f"{RESULTS}/logs/modality_ablation_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/modality_ablation_table.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        settings=EVALUATE_SETTINGS,
    shell:
        "histofuse modality-ablation-table --tables {input.predictions:q} --out {output.table:q} "
        "--figure {output.figure:q} --settings {params.settings:q} > {log:q} 2>&1"
