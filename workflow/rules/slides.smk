# Per-slide tiling: tissue mask (+ QC thumbnail) and tile coordinates (+ QC of the tile grid) in one
# job, so that a cohort of thousands of slides is two jobs per slide (tiling, features).


rule tile:
    input:
        slide=get_slide_path,
    output:
        mask=f"{RESULTS}/masks/{{slide}}.png",
        mask_qc=report(
            f"{RESULTS}/qc/{{slide}}.png",
            caption="../report/qc.rst",
            category="Slides QC",
            labels={"slide": "{slide}"},
        ),
        tiles=f"{RESULTS}/tiles/{{slide}}.h5",
        qc=report(
            f"{RESULTS}/qc/tiles/{{slide}}.png",
            caption="../report/qc_tiles.rst",
            category="Tiles QC",
            labels={"slide": "{slide}"},
        ),
    log:
        f"{RESULTS}/logs/tile/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tile/{{slide}}.tsv"
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        mpp=get_slide_mpp,
        reader=config["reader"],
        mask=TISSUE_MASK_ARGS,
        tiling=TILING_ARGS,
    shell:
        "histofuse tile --slide '{input.slide}' --slide-id '{wildcards.slide}' --mpp '{params.mpp}' "
        "--reader {params.reader} {params.mask} {params.tiling} --mask '{output.mask}' "
        "--mask-qc '{output.mask_qc}' --out '{output.tiles}' --qc '{output.qc}' > '{log}' 2>&1"
