# Configuration and sample sheets: validated on load; input functions for the rules.

import json
import os
import shlex
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import pandas as pd
from snakemake.settings.types import DeploymentMethod

from histofuse.config import check_plain_data, load_config
from histofuse.configuration import section_json
from histofuse.cohorts.formats import check_format_options, is_published
from histofuse.cohorts.splits import check_split_files
from histofuse.exclusions import EXCLUSIONS_TSV
from histofuse.notes import collect_warnings
from histofuse.sheets import read_sheet, validate_sheet
from histofuse.samples import (
    check_data_root,
    check_slide_patients,
    check_weights_file,
    missing_slide_files,
)
from histofuse.features.precomputed import check_precomputed_folder
from histofuse.folds import FoldSettings, folds_for_tables
from histofuse.slides.tiff_regions import check_region_decoder
from histofuse.stage_settings import check_cohort_settings, check_slide_settings
from histofuse.tables import prepare_cohort_tables, resolve_slide_paths
from histofuse.training.cox import COX_MODELS, check_cox_inputs
from histofuse.training.settings import check_model_list, model_training_section

SCHEMAS = Path(workflow.basedir) / "schemas"

# Every job's `histofuse` is the package of the interpreter Snakemake itself runs in, so jobs find
# it without the environment on PATH: local jobs, group jobs and cluster jobs (these run Snakemake
# with the same interpreter and read this file again). A shell function keeps the rules' commands
# as they read; Snakemake's own strict-mode prefix is kept. Under `--sdm conda` the job's own
# environment provides the command instead.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    shell.prefix(
        # shell.prefix formats its text as a shell command does: braces doubled
        f'set -euo pipefail; histofuse() {{{{ {shlex.quote(sys.executable)} -m histofuse "$@"; }}}}; '
    )

CONFIG_SOURCE = ", ".join(str(f) for f in workflow.configfiles) or "config"
check_plain_data(workflow.configfiles)
# The one validation of the configuration (histofuse.configuration's models): defaults filled in
# `config`, and SETTINGS, the typed sections the rules hand to their stage commands.
SETTINGS = load_config(config, source=CONFIG_SOURCE)
ON_ERROR = config["on_error"]
# Settings that never change a good slide's outputs: on_error decides only what happens to a slide
# that fails, features.num_workers only how many processes read tiles, features.server and
# server_idle_s only which process extracts a slide. The per-slide jobs read them
# from the environment, not from params, so that changing them does not rerun finished slides
# (Snakemake reruns a job whose params changed). Jobs that Snakemake runs in a process of its own
# (cluster jobs) parse this file again and set them the same way.
os.environ.update(
    HISTOFUSE_ON_ERROR=ON_ERROR,
    HISTOFUSE_NUM_WORKERS=str(config["features"]["num_workers"]),
    HISTOFUSE_FEATURES_SERVER=str(config["features"]["server"]),
    HISTOFUSE_SERVER_IDLE_S=str(config["features"]["server_idle_s"]),
)

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
check_format_options(COHORT_FORMAT, COHORT_OPTIONS, source=CONFIG_SOURCE)
MODALITIES = list(config["modalities"])
SLIDES_SHEET = (
    Path(config["samples"]["slides"]) if config["samples"].get("slides") else None
)
PATIENTS_SHEET = (
    Path(config["samples"]["patients"]) if config["samples"].get("patients") else None
)
if not is_published(COHORT_FORMAT) and PATIENTS_SHEET is None:
    raise ValueError(
        f"{', '.join(map(str, workflow.configfiles))}: samples.patients is required with cohort.format "
        "histofuse. Fix: name the patients sheet, or set cohort.format to a published format."
    )
# Slides are tiled and encoded only when the models use them and the cohort has them.
USE_WSI = "wsi" in MODALITIES and SLIDES_SHEET is not None


def read_sample_sheets():
    """The slides sheet (checked, paths resolved; empty without slides) and the patients sheet (or None).

    The readers' notes (ids stripped of whitespace…) are collected and dropped here: they are
    printed once, by check_cohort_tables, which reads the same sheets again.
    """
    with collect_warnings():
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
    return slides, patients


slides, patients = read_sample_sheets()
# Problems of the sheets stop the run here, before any job; a missing slide file under
# on_error: skip is left to its tiling job, which records the slide as excluded. With precomputed
# features the slide files themselves are never read.
if USE_WSI:
    check_data_root(
        slides, sheet=SLIDES_SHEET, data_root=config["samples"].get("data_root")
    )
    if patients is not None and not is_published(COHORT_FORMAT):
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
    """The default targets: the report, the metrics, the excluded slides, the missing-rate and
    modality-ablation tables when asked, and every per-slide and per-fold file
    (:func:`get_intermediate_files`).
    """
    targets = [
        f"{RESULTS}/report.html",
        f"{RESULTS}/metrics/summary.tsv",
        EXCLUSIONS,
    ]
    if MISSING_RATE_MODELS:
        targets.append(f"{RESULTS}/metrics/missing_rate.tsv")
    targets += get_ablation_table(None)
    return targets + get_intermediate_files()


# The outputs of prepare_tables (tables.smk), in the tables folder.
TABLE_FILES = (
    "patients.parquet",
    "slides.parquet",
    "genomics.parquet",
    "gene_groups.parquet",
    "clinical.parquet",
    "labels.json",
    "cohort_splits.tsv",
    "notes.tsv",
)


def get_intermediate_files():
    """Every per-slide and per-fold output, so that one a user deletes is made again.

    Snakemake looks for missing files only among the targets and the inputs of jobs that run: a
    deleted features file whose report is up to date would otherwise stay missing ("Nothing to be
    done"). As a target it is rebuilt, and every job that reads it runs again after it.
    """
    files = get_feature_files(None) + get_attention_files(None)
    if FEATURES_SOURCE == "extract":
        files += expand(f"{RESULTS}/masks/{{slide}}.png", slide=SLIDE_IDS)
        files += get_qc_files(None) + get_tile_files(None)
        files += expand(f"{RESULTS}/qc/tiles/{{slide}}.png", slide=SLIDE_IDS)
    files += expand(f"{RESULTS}/tables/{{name}}", name=TABLE_FILES) + [
        f"{RESULTS}/folds/folds.tsv"
    ]
    files += expand(f"{RESULTS}/preprocessing/fold{{fold}}.json", fold=FOLDS)
    files += expand(
        f"{RESULTS}/models/{{model}}/fold{{fold}}.pt", model=MODELS, fold=FOLDS
    )
    files += (
        get_history_files(None)
        + get_prediction_files(None)
        + get_missing_rate_files(None)
        + get_ablation_files(None)
    )
    return files


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
    # e.g. region_decoder gpu with device cpu: refused before any job runs
    check_region_decoder(
        config["features"]["region_decoder"],
        device=config["features"]["device"],
        stain_norm=config["features"]["stain_norm"],
    )
# The settings every per-slide and per-fold job builds, built once here: a bad value stops the run
# before any job instead of failing once per job.
if USE_WSI:
    check_slide_settings(config, source=CONFIG_SOURCE)
check_cohort_settings(config, source=CONFIG_SOURCE)
# The settings each stage command reads: the JSON of its resolved configuration sections, passed
# as `--settings {params.settings:q}` (shell-quoted, so that any value survives the shell). A key a
# stage does not read is left out, so that changing it does not rerun the stage's jobs.
TILE_SETTINGS = section_json(
    {"tissue_mask": SETTINGS.tissue_mask, "tiling": SETTINGS.tiling}
)
# num_workers, server and server_idle_s reach extract_features from the environment (see above).
EXTRACT_SETTINGS = section_json(
    SETTINGS.features,
    exclude={"source", "precomputed_dir", "num_workers", "server", "server_idle_s"},
)
FOLDS_SETTINGS = section_json(SETTINGS.folds)
PREPROCESS_SETTINGS = section_json(SETTINGS.preprocessing)
EVALUATE_SETTINGS = section_json(SETTINGS.evaluation, include={"bootstrap", "seed"})
ABLATION_SETTINGS = section_json(
    SETTINGS.evaluation, include={"ablation_repeats", "seed"}
)
MISSING_RATE_SETTINGS = section_json(SETTINGS.missing_rate, include={"rates", "seed"})
# extract: masks, tiles and extract_features; precomputed: import_features only (features.smk)
FEATURES_SOURCE = config["features"]["source"]
PRECOMPUTED_DIR = str(config["features"].get("precomputed_dir") or "")
if USE_WSI and FEATURES_SOURCE == "precomputed":
    check_precomputed_folder(
        SLIDE_IDS, Path(PRECOMPUTED_DIR), ENCODER, on_error=ON_ERROR
    )


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
    if is_published(COHORT_FORMAT):
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


STAGES_BEFORE_FOLDS = frozenset(
    {"tile", "extract_features", "import_features", "exclusions", "prepare_tables"}
)
"""Rules that neither need the folds nor lead to them (`--until` one of them skips the fold check)."""

CHECKED_TABLES = {}
"""The folder of the tables prepared when the DAG is built (kept until Snakemake exits)."""


def check_cohort_tables():
    """Every check of the cohort's tables, before any job: they are prepared into a temporary folder.

    A bad table stops the run here with its message; the notes about the input (ids stripped of
    surrounding whitespace, rows of patients the cohort does not have…) are printed. prepare_tables
    writes the same notes to tables/notes.tsv for the report. Jobs that Snakemake runs in a process
    of their own (cluster jobs) skip this. The folds are checked when make_folds enters the DAG
    (:func:`check_cohort_folds`), so that a run that stops before them (`--until tile`, feature
    files as targets) works on a cohort too small to fold.
    """
    import atexit
    import shutil
    import tempfile

    from snakemake.logging import logger

    inputs = get_table_inputs(None)
    tmp = tempfile.mkdtemp(prefix="histofuse-tables-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    notes = prepare_cohort_tables(
        cohort_format=COHORT_FORMAT,
        format_options=COHORT_OPTIONS,
        slides=Path(inputs["slides"]) if "slides" in inputs else None,
        patients=Path(inputs["patients"]) if "patients" in inputs else None,
        genomics=Path(inputs["genomics"]) if "genomics" in inputs else None,
        gene_groups=(Path(inputs["gene_groups"]) if "gene_groups" in inputs else None),
        clinical=Path(inputs["clinical"]) if "clinical" in inputs else None,
        grade_classes=tuple(str(c) for c in config["labels"]["grade_classes"]),
        modalities=tuple(MODALITIES),
        out_dir=Path(tmp),
    )
    CHECKED_TABLES["dir"] = Path(tmp)
    for note in notes:
        logger.warning(f"histofuse: {note}")


def check_cohort_folds():
    """The folds made from the tables checked at DAG build: a task whose labels a fold lacks, or a
    cohort too small for folds.k, stops the run before any job. Once per run."""
    tmp = CHECKED_TABLES.pop("dir", None)
    if tmp is None:  # checked already, or a job in a process of its own
        return
    until = set(getattr(workflow.dag_settings, "until", None) or ())
    if until and until <= STAGES_BEFORE_FOLDS:  # make_folds will not run
        return
    folds = config["folds"]
    folds_for_tables(
        tmp / "patients.parquet",
        FoldSettings(
            **{
                key: folds[key]
                for key in ("k", "seed", "val_fraction", "source", "stratify")
            }
        ),
        tasks=tuple(config["training"]["tasks"]),
        binary_label=config["training"]["binary_label"],
        cohort_splits=tmp / "cohort_splits.tsv",
        split_files=dict(folds.get("files") or {}) or None,
        source=get_table_inputs(None).get("patients") or CONFIG_SOURCE,
    )


def get_table_args(wildcards, input):
    """Command-line options naming the cohort's format and the tables that exist in it."""
    args = [f"--format {COHORT_FORMAT}", f"--modalities {' '.join(MODALITIES)}"]
    if is_published(COHORT_FORMAT):
        options = json.dumps(COHORT_OPTIONS, sort_keys=True)
        args.append(f"--format-options {shlex.quote(options)}")
    for key in ("slides", "patients", "genomics", "gene_groups", "clinical"):
        if key in input.keys():
            args.append(f"--{key.replace('_', '-')} {shlex.quote(str(input[key]))}")
    return " ".join(args)


def get_grade_classes(wildcards):
    return " ".join(shlex.quote(str(c)) for c in config["labels"]["grade_classes"])


def fold_task_args():
    """The tasks whose labels every fold must have, and the binary task's label column.

    `--binary-label` follows the task names only when `binary` is trained, so the folds of
    existing runs without that task are not rebuilt (which would retrain every model).
    """
    tasks = list(config["training"]["tasks"])
    args = " ".join(tasks)
    if "binary" in tasks:
        args += f" --binary-label {shlex.quote(config['training']['binary_label'])}"
    return args


def get_train_settings(wildcards):
    """The model's training settings (with its overrides) as JSON for `histofuse train --settings`."""
    return json.dumps(TRAIN_SETTINGS[wildcards.model], sort_keys=True)


COX_SETTINGS = {
    "cox_clinical": json.dumps(config["training"].get("cox", {}), sort_keys=True),
    "cox_genomic": json.dumps(
        config["training"].get("cox_genomic", {}), sort_keys=True
    ),
}


def get_cox_settings(wildcards):
    """The Cox model's own section (training.cox or training.cox_genomic) as JSON; {} for other models."""
    return COX_SETTINGS.get(wildcards.model, "{}")


def clinical_sheet_columns():
    """The clinical sheet's columns when known before any job (histofuse's format), else None."""
    path = config["tables"].get("clinical")
    if (
        "cox_clinical" not in MODELS
        or is_published(COHORT_FORMAT)
        or not path
        or not Path(path).is_file()
    ):
        return None
    return [c for c in read_sheet(Path(path)).columns if c != "patient_id"]


check_cox_inputs(
    MODELS,
    modalities=MODALITIES,
    cox=config["training"].get("cox"),
    cox_genomic=config["training"].get("cox_genomic"),
    clinical_columns=clinical_sheet_columns(),
    source=CONFIG_SOURCE,
)


def get_train_features(wildcards):
    """The tile features training reads: every slide's, or none for a cohort without slides."""
    return get_feature_files(wildcards) if USE_WSI else []


def get_cohort_splits_arg(wildcards, input):
    """make_folds' option naming the cohort's split files, if it reads them (folds.files travel in
    its settings)."""
    if "cohort_splits" in input.keys():
        return f"--cohort-splits {shlex.quote(input.cohort_splits)}"
    return ""


def get_genomics_dir(wildcards, input):
    """The tables folder, derived from the genomics table among the inputs."""
    return str(Path(input.genomics).parent)


SPLIT_FILES = dict(config["folds"].get("files") or {})
if config["folds"]["source"] == "files":
    check_split_files(SPLIT_FILES, k=config["folds"]["k"], source=CONFIG_SOURCE)


def get_fold_inputs(wildcards):
    """make_folds reads the format's split files (source cohort) or folds.files (source files)."""
    check_cohort_folds()
    inputs = {"patients": f"{RESULTS}/tables/patients.parquet"}
    if config["folds"]["source"] == "cohort":
        inputs["cohort_splits"] = f"{RESULTS}/tables/cohort_splits.tsv"
    if config["folds"]["source"] == "files":
        inputs.update({f"split_{key}": path for key, path in SPLIT_FILES.items()})
    return inputs


def get_prediction_files(wildcards):
    return expand(
        f"{RESULTS}/predictions/{{model}}/fold{{fold}}.parquet",
        model=MODELS,
        fold=FOLDS,
    )


def get_preprocessing_files(wildcards):
    """Every fold's fitted preprocessing (the report lists what it changed)."""
    return expand(f"{RESULTS}/preprocessing/fold{{fold}}.json", fold=FOLDS)


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


if workflow.is_main_process:
    check_cohort_tables()
