"""Synthetic cohort on which slides, genomics and clinical data are complementary (``histofuse demo --kind methods``).

Generative model, per patient (each patient and slide draws from its own seeded random stream):

- five independent latent factors ``N(0, 1)``: tumour morphology ``m`` (seen in the slides' tumour
  nests), tumour molecular state ``t`` (seen only in the tumour genes), immune infiltrate ``i``
  (seen in the slides' stroma, echoed by two immune genes), immune exhaustion ``e`` (seen only in
  the microenvironment genes) and tumour burden ``s`` (seen only in the clinical tumour size);
- grade 2/3/4 from ``0.75m + 0.75t + N(0, 0.35²)`` cut at ±0.48 (about a third each);
- log-hazard ``η = 0.55m + 0.55t − 0.4i + 0.4e + 0.015(age − 60)``; survival from the Weibull
  proportional-hazards model and uniform censoring of the default demo;
- ``aln`` (a binary, lymph-node-like endpoint): 1 with probability ``σ(−0.4 + 1.2s + 1.0m)``;
- clinical table: age ``60 + N(0, 9²)``, sex, tumour size ``exp(ln 22 + 0.35s + N(0, 0.08²))`` mm;
- genomics: the default demo's 12 genes and four groups (tumour suppressor and oncogene: the
  tumour genes; immune and stroma: the microenvironment genes). Planted: ``t`` raises TP53 and
  PIK3CA mutation, EGFR copy number and expression, and lowers CDKN2A copy number and PTEN
  expression; ``m`` raises MYC expression (proliferation); ``i`` raises CD8A and CXCL9 expression;
  ``e`` raises PDCD1, FAP and COL1A1 expression; the rest is noise;
- slides: the default demo's tissue, stain and grain, with two compartments. Tumour nests (a
  smooth random field covering 30–50 % of the tissue, paler purple cytoplasm) hold crowded tumour (one per 120 px² at m = 0)
  nuclei whose density grows as ``exp(0.3m)``, size as ``4.2 + 0.55m`` px and darkness and
  pleomorphism with ``m``. The stroma between them holds sparse small fibroblast nuclei and
  lymphocytes (small, round, very dark) in patchy aggregates whose density grows as ``exp(0.6i)``.

So grade and risk need slides (``m``, ``i``) and genomics (``t``, ``e``) together, the tumour and
microenvironment compartments each echo their own gene group, and ``aln`` is carried partly by the
clinical table (``s``) and partly by the slides (``m``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from histofuse.demo import (
    _CENSOR_MONTHS,
    _COARSE,
    _GENE_BASE,
    _MEDIAN_AT_ETA,
    _MEDIAN_MONTHS,
    _MID,
    _RADII,
    _WEIBULL_SHAPE,
    GENE_GROUPS,
    DemoSpec,
    _add_grain,
    _base_colour,
    _rng,
    _sharpen,
    _side_lengths,
    _stain_colours,
    _tissue_field,
    _unit_noise,
    _upsample,
    pyramid_levels,
    stamp_nuclei,
    write_cohort_tables,
    write_slides,
)
from histofuse.slides.pyramid import write_pyramidal_tiff

log = logging.getLogger(__name__)

_STREAM_PATIENT = 11
_STREAM_GENOMICS = 12
_STREAM_SELECTION = 13
_STREAM_GEOMETRY = 14
_STREAM_RENDER = 15

_GRADE_WEIGHTS = (0.75, 0.75, 0.35)  # m, t, noise
_GRADE_CUTS = (-0.48, 0.48)
_ETA = {"m": 0.55, "t": 0.55, "i": -0.4, "e": 0.4, "age": 0.015}
_ALN = {"intercept": -0.4, "s": 1.2, "m": 1.0}
_TUMOUR_SIZE_MM = 22.0

# Planted genomic effects: (gene, modality) -> (latent, coefficient).
_GENE_EFFECTS: dict[tuple[str, str], tuple[str, float]] = {
    ("TP53", "mut"): ("t", 1.5),
    ("PIK3CA", "mut"): ("t", 1.0),
    ("EGFR", "cnv"): ("t", 0.6),
    ("EGFR", "rnaseq"): ("t", 0.6),
    ("CDKN2A", "cnv"): ("t", -0.6),
    ("PTEN", "rnaseq"): ("t", -0.6),
    ("MYC", "rnaseq"): ("m", 0.5),
    ("CD8A", "rnaseq"): ("i", 0.5),
    ("CXCL9", "rnaseq"): ("i", 0.3),
    ("PDCD1", "rnaseq"): ("e", 0.6),
    ("FAP", "rnaseq"): ("e", 0.5),
    ("COL1A1", "rnaseq"): ("e", 0.4),
}

LATENTS: tuple[str, ...] = ("m", "t", "i", "e", "s")


def methods_spec(*, reduced: bool = False, seed: int = 0) -> DemoSpec:
    """The methods cohort's size: 120 patients, 128 slides of 3.5–5k px at 0.5 µm/px.

    ``reduced``: 60 patients, 64 slides of 1.5–2.3k px (the tests).
    """
    if reduced:
        return DemoSpec(n_patients=60, n_slides=64, min_side_px=1536, max_side_px=2304, seed=seed)
    return DemoSpec(n_patients=120, n_slides=128, min_side_px=3584, max_side_px=5120, seed=seed)


@dataclass(frozen=True, kw_only=True)
class MethodsPatient:
    """One patient of the methods cohort: latent factors and what is observed of them."""

    index: int
    patient_id: str
    latent: dict[str, float]
    grade: int
    age: int
    sex: str
    tumour_size_mm: float
    aln: int
    survival_months: float
    event: int


@dataclass(frozen=True, kw_only=True)
class MethodsSlide:
    slide_id: str
    patient_index: int
    slide_index: int
    latent: dict[str, float]
    height: int
    width: int
    mpp: float
    seed: int


def draw_methods_patients(spec: DemoSpec) -> list[MethodsPatient]:
    """Latent factors, grade, clinical data, ``aln`` and censored survival of every patient."""
    k = _WEIBULL_SHAPE
    scale = _MEDIAN_MONTHS / (math.log(2) * math.exp(-_MEDIAN_AT_ETA)) ** (1 / k)
    patients = []
    for index in range(1, spec.n_patients + 1):
        rng = _rng(spec.seed, _STREAM_PATIENT, index)
        latent = {name: float(rng.standard_normal()) for name in LATENTS}
        w_m, w_t, w_noise = _GRADE_WEIGHTS
        score = w_m * latent["m"] + w_t * latent["t"] + w_noise * rng.standard_normal()
        grade = 2 + int(np.digitize(score, _GRADE_CUTS))
        age = int(np.clip(round(60 + 9 * rng.standard_normal()), 30, 88))
        sex = "F" if rng.random() < 0.5 else "M"
        size = _TUMOUR_SIZE_MM * math.exp(0.35 * latent["s"] + 0.08 * rng.standard_normal())
        aln_logit = _ALN["intercept"] + _ALN["s"] * latent["s"] + _ALN["m"] * latent["m"]
        aln = int(rng.random() < 1 / (1 + math.exp(-aln_logit)))
        eta = sum(_ETA[name] * latent[name] for name in ("m", "t", "i", "e")) + _ETA["age"] * (age - 60)
        death = scale * (rng.exponential() * math.exp(-eta)) ** (1 / k)
        censor = rng.uniform(*_CENSOR_MONTHS)
        patients.append(
            MethodsPatient(
                index=index,
                patient_id=f"METH-P{index:03d}",
                latent=latent,
                grade=grade,
                age=age,
                sex=sex,
                tumour_size_mm=round(size, 1),
                aln=aln,
                survival_months=max(0.1, round(min(death, censor), 1)),
                event=int(death <= censor),
            )
        )
    return patients


def plan_methods_slides(spec: DemoSpec, patients: list[MethodsPatient]) -> list[MethodsSlide]:
    """One slide per patient, a second for ``n_slides - n_patients`` of them."""
    order = _rng(spec.seed, _STREAM_SELECTION).permutation(len(patients))
    twice = {patients[i].index for i in order[: spec.n_slides - spec.n_patients]}
    plans = []
    for patient in patients:
        for slide_index in range(2 if patient.index in twice else 1):
            height, width = _side_lengths(spec, _rng(spec.seed, _STREAM_GEOMETRY, patient.index, slide_index))
            plans.append(
                MethodsSlide(
                    slide_id=f"{patient.patient_id}-{'AB'[slide_index]}",
                    patient_index=patient.index,
                    slide_index=slide_index,
                    latent=patient.latent,
                    height=height,
                    width=width,
                    mpp=spec.mpp,
                    seed=spec.seed,
                )
            )
    return plans


def _genomics_row(patient: MethodsPatient, seed: int) -> dict[str, float]:
    rng = _rng(seed, _STREAM_GENOMICS, patient.index)
    row: dict[str, float] = {}
    for gene, _group in GENE_GROUPS:
        mut_p, log_mean = _GENE_BASE[gene]
        planted = {}
        for modality in ("cnv", "mut", "rnaseq"):
            name, coefficient = _GENE_EFFECTS.get((gene, modality), ("m", 0.0))
            planted[modality] = coefficient * patient.latent[name]
        cnv = int(np.clip(round(0.7 * rng.standard_normal() + planted["cnv"]), -2, 2))
        logit = math.log(mut_p / (1 - mut_p)) + planted["mut"]
        mut = int(rng.random() < 1 / (1 + math.exp(-logit)))
        log_rna = log_mean + 0.25 * cnv + planted["rnaseq"] + 0.5 * rng.standard_normal()
        row[f"{gene}_cnv"] = cnv
        row[f"{gene}_mut"] = mut
        row[f"{gene}_rnaseq"] = round(math.exp(log_rna), 3)
    return row


def make_methods_tables(spec: DemoSpec) -> dict[str, pd.DataFrame]:
    """``slides``, ``patients`` (with ``aln``), ``genomics``, ``gene_groups`` and ``clinical``."""
    patients = draw_methods_patients(spec)
    plans = plan_methods_slides(spec, patients)
    ids = {p.index: p.patient_id for p in patients}
    genomics = pd.DataFrame([{"patient_id": p.patient_id, **_genomics_row(p, spec.seed)} for p in patients])
    return {
        "slides": pd.DataFrame(
            {
                "slide_id": [s.slide_id for s in plans],
                "patient_id": [ids[s.patient_index] for s in plans],
                "path": [f"slides/{s.slide_id}.tiff" for s in plans],
            }
        ),
        "patients": pd.DataFrame(
            {
                "patient_id": [p.patient_id for p in patients],
                "grade": [p.grade for p in patients],
                "survival_months": [p.survival_months for p in patients],
                "event": [p.event for p in patients],
                "aln": [p.aln for p in patients],
            }
        ),
        "genomics": genomics,
        "gene_groups": pd.DataFrame(GENE_GROUPS, columns=["gene", "group"]),
        "clinical": pd.DataFrame(
            {
                "patient_id": [p.patient_id for p in patients],
                "age": [p.age for p in patients],
                "sex": [p.sex for p in patients],
                "tumour_size_mm": [p.tumour_size_mm for p in patients],
            }
        ),
    }


# --------------------------------------------------------------------------------------------
# Slide rendering: tumour nests and stroma with lymphocytes
# --------------------------------------------------------------------------------------------


def _nest_field(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """Soft tumour-nest mask on the coarse grid covering 30–50 % of the tissue."""
    field = _unit_noise(rng, tissue.shape, 2.5)
    inside = tissue > 0.5
    if not inside.any():
        return np.zeros_like(tissue)
    share = rng.uniform(0.3, 0.5)
    nests = (field > np.quantile(field[inside], 1 - share)) & inside
    return ndimage.gaussian_filter(nests.astype(np.float32), 0.7)


def _scatter(
    rng: np.random.Generator, expected: np.ndarray, keep: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson points with ``expected`` counts per coarse cell, kept where ``keep`` (coarse) is > 0.5."""
    counts = rng.poisson(np.maximum(expected, 0)).ravel()
    cells = np.repeat(np.arange(counts.size), counts)
    wc = expected.shape[1]
    cy = (cells // wc) * _COARSE + rng.random(cells.size) * _COARSE
    cx = (cells % wc) * _COARSE + rng.random(cells.size) * _COARSE
    inside = (cy < shape[0]) & (cx < shape[1])
    there = ndimage.map_coordinates(keep, [cy / _COARSE - 0.5, cx / _COARSE - 0.5], order=1)
    inside &= _sharpen(there) > 0.5
    return cy[inside].astype(np.int64), cx[inside].astype(np.int64)


def _nuclei(rng: np.random.Generator, plan: MethodsSlide, tissue: np.ndarray, nests: np.ndarray) -> np.ndarray:
    """Haematoxylin opacity of tumour, fibroblast and lymphocyte nuclei."""
    m, i = plan.latent["m"], plan.latent["i"]
    cell = _COARSE * _COARSE
    stroma = tissue * (1 - nests)
    aggregates = np.exp(1.2 * _unit_noise(rng, tissue.shape, 2.0))
    aggregates /= aggregates.mean()
    populations = (
        # (expected per coarse cell, where, radius mean, radius sd, darkness mean, darkness sd)
        (nests * math.exp(0.3 * m) / 120 * cell, nests * tissue, 4.2 + 0.55 * m, 0.45 + 0.25 / (1 + math.exp(-m)), 0.72 + 0.05 * m, 0.06),
        (stroma / 2200 * cell, stroma, 2.8, 0.3, 0.70, 0.06),
        (stroma * aggregates * math.exp(0.6 * i) / 1100 * cell, stroma, 2.7, 0.2, 0.93, 0.03),
    )
    parts = []
    for expected, where, r_mean, r_sd, d_mean, d_sd in populations:
        cy, cx = _scatter(rng, expected, where, (plan.height, plan.width))
        radius = np.clip(rng.normal(r_mean, r_sd, cy.size), _RADII[0], _RADII[-1])
        darkness = np.clip(rng.normal(d_mean, d_sd, cy.size), 0.5, 0.98)
        parts.append((cy, cx, radius, darkness))
    cy, cx, radius, darkness = (np.concatenate(column) for column in zip(*parts, strict=True))
    log.debug("%s: %d nuclei", plan.slide_id, cy.size)
    return stamp_nuclei(rng, (plan.height, plan.width), cy, cx, radius, darkness)


def _nest_colour(base: np.ndarray, nests: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Blend the tumour nests of the mid-grid ``base`` towards a paler, purpler cytoplasm."""
    hm, wm = base.shape[:2]
    factor = _COARSE // _MID
    weight = np.asarray(_upsample(nests * tissue, factor, wm, hm))[..., None] * 0.45
    cytoplasm = np.array([215.0, 170.0, 210.0])
    return np.clip(np.rint(base * (1 - weight) + cytoplasm * weight), 8, 247).astype(np.uint8)


def render_methods_slide(plan: MethodsSlide) -> np.ndarray:
    """The level-0 RGB uint8 image of one slide of the methods cohort."""
    rng = _rng(plan.seed, _STREAM_RENDER, plan.patient_index, plan.slide_index)
    coarse_shape = (math.ceil(plan.height / _COARSE), math.ceil(plan.width / _COARSE))
    tissue = _tissue_field(rng, coarse_shape)
    nests = _nest_field(rng, tissue)
    colours = _stain_colours(rng)
    base = _nest_colour(_base_colour(rng, tissue, colours), nests, tissue)
    image = _upsample(base, _MID, plan.width, plan.height)
    alpha = Image.fromarray(_nuclei(rng, plan, tissue, nests))
    haematoxylin = tuple(int(c) for c in np.rint(colours["haematoxylin"]))
    image.paste(haematoxylin, (0, 0, plan.width, plan.height), mask=alpha)
    return _add_grain(rng, np.asarray(image))


def _write_slide(plan: MethodsSlide, slides_dir: Path) -> Path:
    path = slides_dir / f"{plan.slide_id}.tiff"
    image = render_methods_slide(plan)
    write_pyramidal_tiff(path, image, mpp=plan.mpp, levels=pyramid_levels(plan.height, plan.width))
    return path


def make_methods_cohort(out_dir: Path, spec: DemoSpec | None = None, *, workers: int = 1) -> dict[str, Path]:
    """Write the methods cohort (slides and tables) into ``out_dir``; returns the paths written."""
    spec = spec if spec is not None else methods_spec()
    out_dir = Path(out_dir)
    slides_dir = out_dir / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    patients = draw_methods_patients(spec)
    plans = plan_methods_slides(spec, patients)
    log.info("methods cohort: %d patients, %d slides -> %s", spec.n_patients, len(plans), out_dir)
    write_slides(plans, lambda plan: _write_slide(plan, slides_dir), workers=workers)
    paths = write_cohort_tables(make_methods_tables(spec), out_dir)
    log.info("methods cohort written to %s", out_dir)
    return {**paths, "slides_dir": slides_dir}
