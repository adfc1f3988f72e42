# Per-slide stages: tissue mask (+ QC thumbnail) and tile coordinates.


rule tissue_mask:
    input:
        slide=get_slide_path,
    output:
        mask=f"{RESULTS}/masks/{{slide}}.png",
        qc=report(
            f"{RESULTS}/qc/{{slide}}.png",
            caption="../report/qc.rst",
            category="Slides QC",
            labels={"slide": "{slide}"},
        ),
    log:
        f"{RESULTS}/logs/tissue_mask/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tissue_mask/{{slide}}.tsv"
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        mpp=get_slide_mpp,
        reader=config["reader"],
        method=config["tissue_mask"]["method"],
        mask_mpp=config["tissue_mask"]["mpp"],
    shell:
        "histofuse tissue-mask --slide '{input.slide}' --slide-id '{wildcards.slide}' "
        "--mpp '{params.mpp}' --reader {params.reader} --method {params.method} "
        "--mask-mpp {params.mask_mpp} --mask '{output.mask}' --qc '{output.qc}' > '{log}' 2>&1"


rule tile:
    input:
        slide=get_slide_path,
        mask=f"{RESULTS}/masks/{{slide}}.png",
    output:
        tiles=f"{RESULTS}/tiles/{{slide}}.h5",
    log:
        f"{RESULTS}/logs/tile/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tile/{{slide}}.tsv"
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        mpp=get_slide_mpp,
        reader=config["reader"],
        tile_mpp=config["tiling"]["mpp"],
        tile_px=config["tiling"]["tile_px"],
        overlap_px=config["tiling"]["overlap_px"],
        threshold=config["tiling"]["tissue_threshold"],
    shell:
        "histofuse tile --slide '{input.slide}' --slide-id '{wildcards.slide}' --mpp '{params.mpp}' "
        "--reader {params.reader} --mask '{input.mask}' --tile-mpp {params.tile_mpp} "
        "--tile-px {params.tile_px} --overlap-px {params.overlap_px} "
        "--tissue-threshold {params.threshold} --out '{output.tiles}' > '{log}' 2>&1"
