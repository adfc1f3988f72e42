# Per-slide tiling: tissue mask (+ QC thumbnail) and tile coordinates (+ QC of the tile grid) in one
# job, so that a cohort of thousands of slides is two jobs per slide (tiling, features). Under
# on_error: skip a slide that fails writes these outputs flagged as excluded instead of failing.


rule tile:
    input:
        slide=get_slide_input,
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
        "../envs/histofuse.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        path=get_slide_path,
        mpp=get_slide_mpp,
        reader=config["reader"],
        settings=TILE_SETTINGS,
    shell:
        "histofuse tile --slide {params.path:q} --slide-id {wildcards.slide:q} --mpp={params.mpp:q} "
        '--reader {params.reader:q} --on-error "$HISTOFUSE_ON_ERROR" --settings {params.settings:q} '
        "--mask {output.mask:q} --mask-qc {output.mask_qc:q} --out {output.tiles:q} --qc {output.qc:q} "
        "> {log:q} 2>&1"
