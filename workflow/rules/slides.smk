# Per-slide stages: tissue mask (+ QC thumbnail) and tile coordinates (+ QC of the tile grid).


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
        background_filter=config["tissue_mask"]["background_filter"],
        max_grey=config["tissue_mask"]["max_background_grey"],
        min_saturation=config["tissue_mask"]["min_saturation"],
        min_tissue_um2=config["tissue_mask"]["min_tissue_um2"],
        pen_marks=" ".join(config["tissue_mask"]["pen_marks"]),
    shell:
        "histofuse tissue-mask --slide '{input.slide}' --slide-id '{wildcards.slide}' "
        "--mpp '{params.mpp}' --reader {params.reader} --method {params.method} "
        "--mask-mpp {params.mask_mpp} --background-filter {params.background_filter} "
        "--max-background-grey {params.max_grey} --min-saturation {params.min_saturation} "
        "--min-tissue-um2 {params.min_tissue_um2} --pen-marks {params.pen_marks} "
        "--mask '{output.mask}' --qc '{output.qc}' > '{log}' 2>&1"


rule tile:
    input:
        slide=get_slide_path,
        mask=f"{RESULTS}/masks/{{slide}}.png",
        mask_qc=f"{RESULTS}/qc/{{slide}}.png",
    output:
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
        mem_mb=1000,
        runtime=10,
    params:
        mpp=get_slide_mpp,
        reader=config["reader"],
        tile_mpp=config["tiling"]["mpp"],
        tile_px=config["tiling"]["tile_px"],
        overlap_px=config["tiling"]["overlap_px"],
        threshold=config["tiling"]["tissue_threshold"],
        max_tiles=config["tiling"]["max_tiles"] or "",
        seed=config["tiling"]["seed"],
    shell:
        "histofuse tile --slide '{input.slide}' --slide-id '{wildcards.slide}' --mpp '{params.mpp}' "
        "--reader {params.reader} --mask '{input.mask}' --tile-mpp {params.tile_mpp} "
        "--tile-px {params.tile_px} --overlap-px {params.overlap_px} "
        "--tissue-threshold {params.threshold} --max-tiles '{params.max_tiles}' --seed {params.seed} "
        "--out '{output.tiles}' --qc '{output.qc}' --qc-base '{input.mask_qc}' > '{log}' 2>&1"
