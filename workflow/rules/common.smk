# Configuration and sample sheets: validated on load; input functions for the rules.

import json
import shutil
from functools import lru_cache
from pathlib import Path

import pandas as pd

from histofuse.config import read_sheet, validate_config, validate_sheet
from histofuse.tables import resolve_slide_paths

SCHEMAS = Path(workflow.basedir) / "schemas"

validate_config(
    config,
    schema_path=SCHEMAS / "config.schema.yaml",
    source=", ".join(str(f) for f in workflow.configfiles) or "config",
)

RESULTS = config["results"].rstrip("/")
ENCODER = config["features"]["encoder"]
MODELS = list(config["training"]["models"])
FOLDS = list(range(config["folds"]["k"]))

SLIDES_SHEET = Path(config["samples"]["slides"])
PATIENTS_SHEET = Path(config["samples"]["patients"])

slides = resolve_slide_paths(
    validate_sheet(
        read_sheet(SLIDES_SHEET),
        schema_path=SCHEMAS / "slides.schema.yaml",
        path=SLIDES_SHEET,
        id_column="slide_id",
    ),
    SLIDES_SHEET,
).set_index("slide_id", drop=False)
patients = validate_sheet(
    read_sheet(PATIENTS_SHEET),
    schema_path=SCHEMAS / "patients.schema.yaml",
    path=PATIENTS_SHEET,
    id_column="patient_id",
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


def get_final_output():
    """The targets of the default run: the report and the metrics."""
    return [
        f"{RESULTS}/report.html",
        f"{RESULTS}/metrics/summary.tsv",
    ]


def get_slide_path(wildcards):
    return SLIDE_PATHS[wildcards.slide]


def get_slide_mpp(wildcards):
    """The sheet's mpp for this slide, or an empty string (then the slide's metadata is used)."""
    return SLIDE_MPPS.get(wildcards.slide, "")


ENCODER_WEIGHTS = str(config["features"].get("weights") or "")


def get_feature_files(wildcards):
    return expand(
        f"{RESULTS}/features/{{encoder}}/{{slide}}.h5", encoder=ENCODER, slide=SLIDE_IDS
    )


def get_tile_files(wildcards):
    return expand(f"{RESULTS}/tiles/{{slide}}.h5", slide=SLIDE_IDS)


def get_qc_files(wildcards):
    return expand(f"{RESULTS}/qc/{{slide}}.png", slide=SLIDE_IDS)


def get_table_inputs(wildcards):
    inputs = {"patients": str(PATIENTS_SHEET), "slides": str(SLIDES_SHEET)}
    for key in ("genomics", "gene_groups", "clinical"):
        value = config["tables"].get(key)
        if value:
            inputs[key] = value
    return inputs


def get_table_args(wildcards, input):
    """Command-line options naming the optional tables that exist in this cohort."""
    args = []
    for key in ("genomics", "gene_groups", "clinical"):
        if key in input.keys():
            args.append(f"--{key.replace('_', '-')} '{input[key]}'")
    return " ".join(args)


def get_grade_classes(wildcards):
    return " ".join(str(c) for c in config["labels"]["grade_classes"])


def get_train_settings(wildcards):
    """The training section as JSON for `histofuse train --settings`."""
    settings = {k: v for k, v in config["training"].items() if k != "models"}
    return json.dumps(settings, sort_keys=True)


def get_prediction_files(wildcards):
    return expand(
        f"{RESULTS}/predictions/{{model}}/fold{{fold}}.parquet",
        model=MODELS,
        fold=FOLDS,
    )


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
