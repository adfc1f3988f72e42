# One model x one fold: checkpoint, training history and per-patient predictions. The run's
# last-epoch state (fold{fold}.state.pt, not an output) lets a killed job resume where it stopped.


rule train:
    input:
        features=get_train_features,
        exclusions=EXCLUSIONS,
        patients=f"{RESULTS}/tables/patients.parquet",
        slides=f"{RESULTS}/tables/slides.parquet",
        genomics=f"{RESULTS}/tables/genomics.parquet",
        clinical=f"{RESULTS}/tables/clinical.parquet",
        labels=f"{RESULTS}/tables/labels.json",
        folds=f"{RESULTS}/folds/folds.tsv",
        preprocessing=f"{RESULTS}/preprocessing/fold{{fold}}.json",
    output:
        checkpoint=f"{RESULTS}/models/{{model}}/fold{{fold}}.pt",
        history=f"{RESULTS}/models/{{model}}/fold{{fold}}_history.tsv",
        predictions=f"{RESULTS}/predictions/{{model}}/fold{{fold}}.parquet",
    log:
        f"{RESULTS}/logs/train/{{model}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/fold{{fold}}.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=lambda wildcards: gpu_request(TRAIN_SETTINGS[wildcards.model]["device"]),
    params:
        features_dir=f"{RESULTS}/features/{ENCODER}",
        tables_dir=get_tables_dir,
        settings=get_train_settings,
        cox=get_cox_settings,
        wsi="" if USE_WSI else "--no-wsi",
        state=f"{RESULTS}/models/{{model}}/fold{{fold}}.state.pt",
    shell:
        "histofuse train --model {wildcards.model} --fold {wildcards.fold} "
        "--features-dir {params.features_dir:q} --tables-dir {params.tables_dir:q} "
        "--folds {input.folds:q} --settings {params.settings:q} "
        "--checkpoint {output.checkpoint:q} --history {output.history:q} "
        "--predictions {output.predictions:q} --preprocessing {input.preprocessing:q} "
        "--cox-settings {params.cox:q} --state {params.state:q} {params.wsi} "
        "--threads {threads} > {log:q} 2>&1"
