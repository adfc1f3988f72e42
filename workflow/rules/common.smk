# Configuration and sample sheets: validated on load; input functions for the rules.

import json
import shutil
from functools import lru_cache
from pathlib import Path

import pandas as pd

from histofuse.config import (
    check_plain_data,
    read_sheet,
    validate_config,
    validate_sheet,
)
from histofuse.exclusions import EXCLUSIONS_TSV
from histofuse.samples import (
    check_data_root,
    check_slide_patients,
    check_weights_file,
    missing_slide_files,
)
from histofuse.tables import resolve_slide_paths
from histofuse.training.cox import COX_MODELS
from histofuse.training.settings import check_model_list, model_training_section

SCHEMAS = Path(workflow.basedir) / "schemas"

CONFIG_SOURCE = ", ".join(str(f) for f in workflow.configfiles) or "config"
check_plain_data(workflow.configfiles)
validate_config(
    config, schema_path=SCHEMAS / "config.schema.yaml", source=CONFIG_SOURCE
)
ON_ERROR = config["on_error"]

RESULTS = config["results"].rstrip("/")
ENCODER = config["features"]["encoder"]
MODELS = list(config["training"]["models"])
check_model_list(MODELS)
# Every model's settings are checked here, so a bad override stops the run before any job.
TRAIN_SETTINGS = {
    model: model_training_section(config["training"], model) for model in MODELS
}
FOLDS = list(range(config["folds"]["k"]))
MISSING_RATE = config["missing_rate"]
MISSING_RATE_MODELS = list(MISSING_RATE["models"])
_untrained = [m for m in MISSING_RATE_MODELS if m not in MODELS]
if _untrained:
    raise ValueError(
        f"{', '.join(map(str, workflow.configfiles))}: missing_rate.models names {_untrained}, which "
        f"training.models ({MODELS}) does not train. Fix: add them to training.models or remove them "
        "from missing_rate.models."
    )

COHORT_FORMAT = config["cohort"]["format"]
COHORT_OPTIONS = config["cohort"]["options"]
MODALITIES = list(config["modalities"])
SLIDES_SHEET = (
    Path(config["samples"]["slides"]) if config["samples"].get("slides") else None
)
PATIENTS_SHEET = (
    Path(config["samples"]["patients"]) if config["samples"].get("patients") else None
)
if COHORT_FORMAT == "histofuse" and PATIENTS_SHEET is None:
    raise ValueError(
        f"{', '.join(map(str, workflow.configfiles))}: samples.patients is required with cohort.format "
        "histofuse. Fix: name the patients sheet, or set cohort.format to a published format."
    )
# Slides are tiled and encoded only when the models use them and the cohort has them.
USE_WSI = "wsi" in MODALITIES and SLIDES_SHEET is not None

slides = (
    resolve_slide_paths(
        validate_sheet(
            read_sheet(SLIDES_SHEET),
            schema_path=SCHEMAS / "slides.schema.yaml",
            path=SLIDES_SHEET,
            id_column="slide_id",
        ),
        SLIDES_SHEET,
    ).set_index("slide_id", drop=False)
    if USE_WSI
    else pd.DataFrame({"slide_id": [], "patient_id": [], "path": []})
)
patients = (
    validate_sheet(
        read_sheet(PATIENTS_SHEET),
        schema_path=SCHEMAS / "patients.schema.yaml",
        path=PATIENTS_SHEET,
        id_column="patient_id",
    )
    if PATIENTS_SHEET is not None
    else None
)
# Problems of the sheets stop the run here, before any job; a missing slide file under
# on_error: skip is left to its tiling job, which records the slide as excluded. With precomputed
# features the slide files themselves are never read.
if USE_WSI:
    check_data_root(
        slides, sheet=SLIDES_SHEET, data_root=config["samples"].get("data_root")
    )
    if patients is not None and COHORT_FORMAT == "histofuse":
        check_slide_patients(
            slides,
            slides_sheet=SLIDES_SHEET,
            patients=patients,
            patients_sheet=PATIENTS_SHEET,
        )
MISSING_SLIDES = (
    missing_slide_files(slides, sheet=SLIDES_SHEET, on_error=ON_ERROR)
    if USE_WSI and config["features"]["source"] == "extract"
    else set()
)
SLIDE_IDS = list(slides["slide_id"])
# Plain dicts: input functions run once per job, and a pandas lookup per call adds up for
# cohorts of thousands of slides.
SLIDE_PATHS = dict(zip(slides["slide_id"], slides["path"]))
SLIDE_MPPS = (
    {k: "" if pd.isna(v) else str(v) for k, v in zip(slides["slide_id"], slides["mpp"])}
    if "mpp" in slides.columns
    else {}
)


wildcard_constraints:
    slide=r"[^/]+",
    model="|".join(MODELS),
    fold=r"\d+",
    encoder=r"[A-Za-z0-9_.:\-]+",


EXCLUSIONS = f"{RESULTS}/{EXCLUSIONS_TSV}"


def get_final_output():
    """The default targets: the report, the metrics, the excluded slides and, when asked, the
    missing-rate and modality-ablation tables."""
    targets = [
        f"{RESULTS}/report.html",
        f"{RESULTS}/metrics/summary.tsv",
        EXCLUSIONS,
    ]
    if MISSING_RATE_MODELS:
        targets.append(f"{RESULTS}/metrics/missing_rate.tsv")
    targets += get_ablation_table(None)
    return targets


def get_slide_path(wildcards):
    """The slide's file as the sheet gives it (resolved against the sheet's folder)."""
    return SLIDE_PATHS[wildcards.slide]


def get_slide_input(wildcards):
    """The slide file as a job input; none for a missing file under on_error: skip (then excluded)."""
    if wildcards.slide in MISSING_SLIDES:
        return []
    return SLIDE_PATHS[wildcards.slide]


def get_slide_mpp(wildcards):
    """The sheet's mpp for this slide, or an empty string (then the slide's metadata is used)."""
    return SLIDE_MPPS.get(wildcards.slide, "")


ENCODER_WEIGHTS = str(config["features"].get("weights") or "")
if USE_WSI and config["features"]["source"] == "extract":
    check_weights_file(ENCODER_WEIGHTS, source=CONFIG_SOURCE)
# The tile rule's mask and tiling options, formatted once (they are the same for every slide).
_MASK = config["tissue_mask"]
TISSUE_MASK_ARGS = (
    f"--method {_MASK['method']} --mask-mpp {_MASK['mpp']} "
    f"--background-filter {_MASK['background_filter']} --max-background-grey {_MASK['max_background_grey']} "
    f"--min-saturation {_MASK['min_saturation']} --min-tissue-um2 {_MASK['min_tissue_um2']} "
    f"--pen-marks {' '.join(_MASK['pen_marks'])}"
)
_TILING = config["tiling"]
TILING_ARGS = (
    f"--tile-mpp {_TILING['mpp']} --tile-px {_TILING['tile_px']} --overlap-px {_TILING['overlap_px']} "
    f"--tissue-threshold {_TILING['tissue_threshold']} --max-tiles '{_TILING['max_tiles'] or ''}' "
    f"--seed {_TILING['seed']}"
)
# extract: masks, tiles and extract_features; precomputed: import_features only (features.smk)
FEATURES_SOURCE = config["features"]["source"]
PRECOMPUTED_DIR = str(config["features"].get("precomputed_dir") or "")


def get_feature_files(wildcards):
    """Every slide's features, made by extract_features or import_features (features.source)."""
    return expand(
        f"{RESULTS}/features/{{encoder}}/{{slide}}.h5", encoder=ENCODER, slide=SLIDE_IDS
    )


def get_precomputed_features(wildcards):
    """The slide's precomputed file(s) found in precomputed_dir; none when absent.

    import_features then names the slide, the folder and the file names it looked for.
    """
    from histofuse.features.precomputed import candidate_paths

    candidates = candidate_paths(PRECOMPUTED_DIR, wildcards.slide, wildcards.encoder)
    return [str(path) for path in candidates if path.is_file()]


def get_tile_files(wildcards):
    """Tiles files for the report; none when features are precomputed (no tiling runs)."""
    if FEATURES_SOURCE == "precomputed":
        return []
    return expand(f"{RESULTS}/tiles/{{slide}}.h5", slide=SLIDE_IDS)


def get_qc_files(wildcards):
    """Mask QC thumbnails for the report; none when features are precomputed (no masks run)."""
    if FEATURES_SOURCE == "precomputed":
        return []
    return expand(f"{RESULTS}/qc/{{slide}}.png", slide=SLIDE_IDS)


# Options of the published cohort formats that name files (their changes rerun the tables).
COHORT_FILE_OPTIONS = (
    "dataset",
    "grade_data",
    "splits",
    "table",
    "signatures",
    "clinical",
    "path",
)


def get_table_inputs(wildcards):
    inputs = {}
    if USE_WSI:
        inputs["slides"] = str(SLIDES_SHEET)
    if COHORT_FORMAT != "histofuse":
        for key in COHORT_FILE_OPTIONS:
            value = COHORT_OPTIONS.get(key)
            if isinstance(value, str) and value:
                inputs[f"cohort_{key}"] = value
        if config["cohort"].get("gene_groups"):
            inputs["gene_groups"] = config["cohort"]["gene_groups"]
        return inputs
    inputs["patients"] = str(PATIENTS_SHEET)
    for key in ("genomics", "gene_groups", "clinical"):
        value = config["tables"].get(key)
        if value:
            inputs[key] = value
    return inputs


def get_table_args(wildcards, input):
    """Command-line options naming the cohort's format and the tables that exist in it."""
    args = [f"--format {COHORT_FORMAT}", f"--modalities {' '.join(MODALITIES)}"]
    if COHORT_FORMAT != "histofuse":
        args.append(f"--format-options '{json.dumps(COHORT_OPTIONS, sort_keys=True)}'")
    for key in ("slides", "patients", "genomics", "gene_groups", "clinical"):
        if key in input.keys():
            args.append(f"--{key.replace('_', '-')} '{input[key]}'")
    return " ".join(args)


def get_grade_classes(wildcards):
    return " ".join(str(c) for c in config["labels"]["grade_classes"])


def fold_task_args():
    """The tasks whose labels every fold must have, and the binary task's label column.

    `--binary-label` follows the task names only when `binary` is trained, so the folds of
    existing runs without that task are not rebuilt (which would retrain every model).
    """
    tasks = list(config["training"]["tasks"])
    args = " ".join(tasks)
    if "binary" in tasks:
        args += f" --binary-label '{config['training']['binary_label']}'"
    return args


def get_train_settings(wildcards):
    """The model's training settings (with its overrides) as JSON for `histofuse train --settings`."""
    return json.dumps(TRAIN_SETTINGS[wildcards.model], sort_keys=True)


COX_SETTINGS = json.dumps(config["training"].get("cox", {}), sort_keys=True)
PREPROCESS_SETTINGS = json.dumps(config["preprocessing"], sort_keys=True)


def get_train_features(wildcards):
    """The tile features training reads: every slide's, or none for a cohort without slides."""
    return get_feature_files(wildcards) if USE_WSI else []


def get_cohort_splits_arg(wildcards, input):
    """make_folds' option naming the cohort's split table, when it reads one."""
    return (
        f"--cohort-splits '{input.cohort_splits}'"
        if "cohort_splits" in input.keys()
        else ""
    )


def get_genomics_dir(wildcards, input):
    """The tables folder, derived from the genomics table among the inputs."""
    return str(Path(input.genomics).parent)


def get_fold_inputs(wildcards):
    """make_folds reads the cohort's own split files when folds.source is cohort."""
    inputs = {"patients": f"{RESULTS}/tables/patients.parquet"}
    if config["folds"]["source"] == "cohort":
        inputs["cohort_splits"] = f"{RESULTS}/tables/cohort_splits.tsv"
    return inputs


def get_prediction_files(wildcards):
    return expand(
        f"{RESULTS}/predictions/{{model}}/fold{{fold}}.parquet",
        model=MODELS,
        fold=FOLDS,
    )


def get_history_files(wildcards):
    """Every model's training history per fold (training curves)."""
    return expand(
        f"{RESULTS}/models/{{model}}/fold{{fold}}_history.tsv", model=MODELS, fold=FOLDS
    )


def get_missing_rate_files(wildcards):
    return expand(
        f"{RESULTS}/missing_rate/{{model}}/fold{{fold}}.tsv",
        model=MISSING_RATE_MODELS,
        fold=FOLDS,
    )


def get_missing_rate_table(wildcards):
    """The missing-rate table for the report, when missing_rate.models asks for one."""
    return [f"{RESULTS}/metrics/missing_rate.tsv"] if MISSING_RATE_MODELS else []


ABLATION_REPEATS = config["evaluation"]["ablation_repeats"]
# Every trained network is permuted; the table keeps those that read two or more modalities.
ABLATION_MODELS = (
    [model for model in MODELS if model not in COX_MODELS]
    if ABLATION_REPEATS > 0 and len(MODALITIES) >= 2
    else []
)


def get_ablation_files(wildcards):
    return expand(
        f"{RESULTS}/modality_ablation/{{model}}/fold{{fold}}.parquet",
        model=ABLATION_MODELS,
        fold=FOLDS,
    )


def get_ablation_table(wildcards):
    """The modality-ablation table for the report, when there is one."""
    return [f"{RESULTS}/metrics/modality_ablation.tsv"] if ABLATION_MODELS else []


MISSING_RATE_ARGS = f"--rates {' '.join(str(r) for r in MISSING_RATE['rates'])} --seed {MISSING_RATE['seed']}"


ATTENTION_SLIDES = (
    sorted(SLIDE_IDS)[: config["report"]["attention_slides"]]
    if USE_WSI and "abmil" in MODELS
    else []
)


def get_attention_files(wildcards):
    """Attention heatmaps of the first report.attention_slides slides; none without abmil."""
    return expand(f"{RESULTS}/plots/attention/{{slide}}.png", slide=ATTENTION_SLIDES)


def get_abmil_checkpoints(wildcards):
    return expand(f"{RESULTS}/models/abmil/fold{{fold}}.pt", fold=FOLDS)


def get_attention_features(wildcards):
    return f"{RESULTS}/features/{ENCODER}/{wildcards.slide}.h5"


def get_tables_dir(wildcards, input):
    """The tables folder, derived from the patients table among the inputs."""
    return str(Path(input.patients).parent)


def get_output_tables_dir(wildcards, output):
    """The tables folder, derived from the patients table among the outputs."""
    return str(Path(output.patients).parent)


@lru_cache(maxsize=None)
def gpu_request(device):
    """GPUs a job asks for: 1 for cuda, 0 for cpu; for auto, 1 only where nvidia-smi is on PATH.

    The cluster profile sets the GPU request of its GPU rules explicitly.
    """
    if device == "cpu":
        return 0
    if device == "auto":
        return int(shutil.which("nvidia-smi") is not None)
    return 1


def extract_threads():
    """Threads of an extraction job: loader workers + 1 on a GPU, one per job on the CPU.

    On the CPU, starting Python and the encoder costs seconds per slide, so one-thread jobs side by
    side use the cores better than one wide job at a time.
    """
    if gpu_request(config["features"]["device"]):
        return 1 + int(config["features"]["num_workers"])
    return 1
