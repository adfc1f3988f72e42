# Test AUC with the clinical data of a growing share of test patients withheld (missing_rate:).


rule missing_rate:
    input:
        checkpoint=f"{RESULTS}/models/{{model}}/fold{{fold}}.pt",
        features=get_train_features,
        patients=f"{RESULTS}/tables/patients.parquet",
        slides=f"{RESULTS}/tables/slides.parquet",
        clinical=f"{RESULTS}/tables/clinical.parquet",
        folds=f"{RESULTS}/folds/folds.tsv",
        preprocessing=f"{RESULTS}/preprocessing/fold{{fold}}.json",
    output:
        table=f"{RESULTS}/missing_rate/{{model}}/fold{{fold}}.tsv",
    log:
        f"{RESULTS}/logs/missing_rate/{{model}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/missing_rate/{{model}}/fold{{fold}}.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        features_dir=f"{RESULTS}/features/{ENCODER}",
        tables_dir=get_tables_dir,
        settings=MISSING_RATE_SETTINGS,
        wsi="" if USE_WSI else "--no-wsi",
    shell:
        "histofuse missing-rate --checkpoint {input.checkpoint:q} --fold {wildcards.fold} "
        "--features-dir {params.features_dir:q} --tables-dir {params.tables_dir:q} "
        "--folds {input.folds:q} --preprocessing {input.preprocessing:q} --settings {params.settings:q} "
        "{params.wsi} --threads {threads} --out {output.table:q} > {log:q} 2>&1"


rule missing_rate_table:
    input:
        tables=get_missing_rate_files,
    output:
        table=f"{RESULTS}/metrics/missing_rate.tsv",
    log:
        f"{RESULTS}/logs/missing_rate_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/missing_rate_table.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "histofuse missing-rate-table --tables {input.tables:q} --out {output.table:q} > {log:q} 2>&1"
