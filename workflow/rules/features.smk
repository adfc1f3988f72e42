# Per-slide tile features: extracted with the configured encoder (GPU when the node has one), or
# imported from precomputed CLAM / TRIDENT files (features.source). Only the chosen rule exists, so
# with precomputed features the DAG has no tile or extract_features jobs. With features.server,
# each extract_features job hands its slide to one extraction process per machine (per cluster
# group job under profiles/slurm), which loads the encoder once (histofuse.features.server).


if FEATURES_SOURCE == "precomputed":

    rule import_features:
        input:
            precomputed=get_precomputed_features,
        output:
            features=f"{RESULTS}/features/{{encoder}}/{{slide}}.h5",
        log:
            f"{RESULTS}/logs/import_features/{{encoder}}/{{slide}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/import_features/{{encoder}}/{{slide}}.tsv"
        conda:
            "../envs/histofuse.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            folder=PRECOMPUTED_DIR,
        shell:
            "histofuse import-features --folder {params.folder:q} --slide-id {wildcards.slide:q} "
            '--encoder {wildcards.encoder:q} --on-error "$HISTOFUSE_ON_ERROR" --out {output.features:q} '
            "> {log:q} 2>&1"

else:

    rule extract_features:
        input:
            slide=get_slide_input,
            tiles=f"{RESULTS}/tiles/{{slide}}.h5",
        output:
            features=f"{RESULTS}/features/{{encoder}}/{{slide}}.h5",
        log:
            f"{RESULTS}/logs/extract_features/{{encoder}}/{{slide}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/extract_features/{{encoder}}/{{slide}}.tsv"
        conda:
            "../envs/histofuse.yaml"
        threads: extract_threads()
        resources:
            mem_mb=8000,
            runtime=60,
            gpu=gpu_request(config["features"]["device"]),
        params:
            path=get_slide_path,
            mpp=get_slide_mpp,
            reader=config["reader"],
            settings=EXTRACT_SETTINGS,
        shell:
            "histofuse extract --slide {params.path:q} --slide-id {wildcards.slide:q} "
            '--tiles {input.tiles:q} --mpp={params.mpp:q} --on-error "$HISTOFUSE_ON_ERROR" '
            "--reader {params.reader:q} --settings {params.settings:q} --encoder {wildcards.encoder:q} "
            '--num-workers "$HISTOFUSE_NUM_WORKERS" --server "$HISTOFUSE_FEATURES_SERVER" '
            '--server-idle-s "$HISTOFUSE_SERVER_IDLE_S" --threads {threads} '
            "--out {output.features:q} > {log:q} 2>&1"


# The cohort's excluded slides (on_error: skip), read from every slide's features file; every other
# file must come from the configured encoder. Training waits for this check.
rule exclusions:
    input:
        features=get_feature_files,
    output:
        exclusions=EXCLUSIONS,
    log:
        f"{RESULTS}/logs/exclusions.log",
    benchmark:
        f"{RESULTS}/benchmarks/exclusions.tsv"
    conda:
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        encoder=ENCODER,
    script:
        "../scripts/exclusions.py"
