# Cohort-level tables and cross-validation folds.


rule prepare_tables:
    input:
        unpack(get_table_inputs),
    output:
        patients=f"{RESULTS}/tables/patients.parquet",
        slides=f"{RESULTS}/tables/slides.parquet",
        genomics=f"{RESULTS}/tables/genomics.parquet",
        gene_groups=f"{RESULTS}/tables/gene_groups.parquet",
        clinical=f"{RESULTS}/tables/clinical.parquet",
        labels=f"{RESULTS}/tables/labels.json",
        cohort_splits=f"{RESULTS}/tables/cohort_splits.tsv",
        notes=f"{RESULTS}/tables/notes.tsv",
    log:
        f"{RESULTS}/logs/prepare_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_tables.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        optional=get_table_args,
        grade_classes=get_grade_classes,
        out_dir=get_output_tables_dir,
    shell:
        "histofuse prepare-tables {params.optional} --grade-classes {params.grade_classes} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"


rule make_folds:
    input:
        unpack(get_fold_inputs),
    output:
        folds=f"{RESULTS}/folds/folds.tsv",
    log:
        f"{RESULTS}/logs/make_folds.log",
    benchmark:
        f"{RESULTS}/benchmarks/make_folds.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=FOLDS_SETTINGS,
        splits=get_cohort_splits_arg,
        tasks=fold_task_args(),
    shell:
        "histofuse make-folds --patients {input.patients:q} --settings {params.settings:q} "
        "{params.splits} --tasks {params.tasks} --out {output.folds:q} > {log:q} 2>&1"


rule preprocess:
    input:
        genomics=f"{RESULTS}/tables/genomics.parquet",
        clinical=f"{RESULTS}/tables/clinical.parquet",
        gene_groups=f"{RESULTS}/tables/gene_groups.parquet",
        folds=f"{RESULTS}/folds/folds.tsv",
    output:
        fitted=f"{RESULTS}/preprocessing/fold{{fold}}.json",
    log:
        f"{RESULTS}/logs/preprocess/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/preprocess/fold{{fold}}.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tables_dir=get_genomics_dir,
        settings=PREPROCESS_SETTINGS,
    shell:
        "histofuse preprocess --tables-dir {params.tables_dir:q} --folds {input.folds:q} "
        "--fold {wildcards.fold} --settings {params.settings:q} --out {output.fitted:q} > {log:q} 2>&1"
