# Per-slide feature extraction with the configured encoder (GPU when the node has one).


rule extract_features:
    input:
        slide=get_slide_path,
        tiles=f"{RESULTS}/tiles/{{slide}}.h5",
    output:
        features=f"{RESULTS}/features/{{encoder}}/{{slide}}.h5",
    log:
        f"{RESULTS}/logs/extract_features/{{encoder}}/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_features/{{encoder}}/{{slide}}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: extract_threads()
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_request(config["features"]["device"]),
    params:
        mpp=get_slide_mpp,
        reader=config["reader"],
        weights=ENCODER_WEIGHTS,
        batch_size=config["features"]["batch_size"],
        num_workers=config["features"]["num_workers"],
        device=config["features"]["device"],
        precision=config["features"]["precision"],
    shell:
        "histofuse extract --slide '{input.slide}' --tiles '{input.tiles}' --mpp '{params.mpp}' "
        "--reader {params.reader} --encoder '{wildcards.encoder}' --weights '{params.weights}' "
        "--batch-size {params.batch_size} --num-workers {params.num_workers} "
        "--device {params.device} --precision {params.precision} --threads {threads} "
        "--out '{output.features}' > '{log}' 2>&1"
