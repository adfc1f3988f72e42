"""Deterministic synthetic demo cohort: H&E-like pyramidal slides with clinical, outcome and genomic tables.

Generative model, per patient (each patient and slide draws from its own seeded random stream, so
the output does not depend on generation order):

- latent risk ``z ~ N(0, 1)``;
- grade 2/3/4 from ``z + N(0, 0.3²)`` cut at ±0.45 (about a third each); grade index ``g = grade − 2``;
  about 5 % of grades are left blank (missing);
- age ``60 + 4z + N(0, 9²)`` years (clipped to 30–88), sex F/M at random;
- log-hazard ``η = 0.9g + 0.5z + 0.02(age − 60)``;
- survival from a Weibull proportional-hazards model (shape 1.2; median 40 months when
  ``η = 0.9``, e.g. grade 3, ``z = 0``, age 60); independent uniform censoring on [6, 120] months
  (roughly 35–40 % censored); ``event = 1`` when the death is observed;
- genomics: 12 genes in 4 groups (tumour suppressor, oncogene, immune, stroma), each with ``_cnv``
  (−2…2), ``_mut`` (0/1) and ``_rnaseq`` (log-normal, rising with copy number). Planted: TP53
  mutation and EGFR gain rise with grade, CDKN2A loss and EGFR expression with ``z``, MYC expression
  with grade, CD8A/CXCL9 expression fall with ``z``; the other genes are noise; about 1 % missing;
- slides: one or two irregular tissue blobs (elliptical bumps plus low-frequency noise, thresholded
  to cover 32–55 % of the slide) on a near-white background; pink textured stroma; haematoxylin
  nuclei (6–12 px across at 0.5 µm/px) whose density grows as ``exp(0.45(g + 0.4z))`` and whose
  size and darkness grow with ``g``. A patient's second slide shares the patient's parameters with
  a new layout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from histofuse.io import write_text_atomic
from histofuse.slides.pyramid import write_pyramidal_tiff

log = logging.getLogger(__name__)
P = TypeVar("P")

# Independent random streams, combined with the seed and patient/slide numbers.
_STREAM_PATIENT = 1
_STREAM_GENOMICS = 2
_STREAM_SELECTION = 3
_STREAM_GEOMETRY = 4
_STREAM_RENDER = 5

GENE_GROUPS: tuple[tuple[str, str], ...] = (
    ("TP53", "tumor_suppressor"),
    ("PTEN", "tumor_suppressor"),
    ("CDKN2A", "tumor_suppressor"),
    ("EGFR", "oncogene"),
    ("MYC", "oncogene"),
    ("PIK3CA", "oncogene"),
    ("CD8A", "immune"),
    ("PDCD1", "immune"),
    ("CXCL9", "immune"),
    ("COL1A1", "stroma"),
    ("FAP", "stroma"),
    ("ACTA2", "stroma"),
)

# Per gene: baseline mutation probability and mean log-expression.
_GENE_BASE: dict[str, tuple[float, float]] = {
    "TP53": (0.30, 3.0),
    "PTEN": (0.10, 3.5),
    "CDKN2A": (0.05, 2.5),
    "EGFR": (0.08, 4.0),
    "MYC": (0.04, 4.5),
    "PIK3CA": (0.12, 3.2),
    "CD8A": (0.02, 2.8),
    "PDCD1": (0.02, 2.0),
    "CXCL9": (0.02, 3.0),
    "COL1A1": (0.03, 5.5),
    "FAP": (0.03, 3.8),
    "ACTA2": (0.02, 5.0),
}

# Planted effects: (gene, modality) -> (coefficient on centred grade index, coefficient on z).
_GENE_EFFECTS: dict[tuple[str, str], tuple[float, float]] = {
    ("TP53", "mut"): (1.4, 0.0),
    ("TP53", "rnaseq"): (-0.3, 0.0),
    ("CDKN2A", "cnv"): (0.0, -0.7),
    ("EGFR", "cnv"): (0.5, 0.0),
    ("EGFR", "rnaseq"): (0.0, 0.5),
    ("MYC", "rnaseq"): (0.6, 0.0),
    ("CD8A", "rnaseq"): (0.0, -0.6),
    ("CXCL9", "rnaseq"): (0.0, -0.5),
}

_GRADE_CUTS = (-0.45, 0.45)
_WEIBULL_SHAPE = 1.2
_MEDIAN_MONTHS = 40.0
_MEDIAN_AT_ETA = 0.9
_CENSOR_MONTHS = (6.0, 120.0)
_MISSING_GRADE_FRACTION = 0.05
_MISSING_GENOMICS_FRACTION = 0.01

# Rendering: coarse grid for tissue and nuclear density, finer grid for stroma colour.
_COARSE = 32
_MID = 4
_PAD = 11
_GRAIN_TILE = 512
_GRAIN = 6


@dataclass(frozen=True, kw_only=True)
class DemoSpec:
    """Size and seed of the synthetic cohort."""

    n_patients: int = 40
    n_slides: int = 48  # n_slides - n_patients patients get a second slide
    min_side_px: int = 4096
    max_side_px: int = 8192
    mpp: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_patients < 1:
            raise ValueError(f"n_patients must be at least 1, got {self.n_patients}")
        if not self.n_patients <= self.n_slides <= 2 * self.n_patients:
            raise ValueError(
                f"n_slides must lie between n_patients and 2 × n_patients, got {self.n_slides} "
                f"for {self.n_patients} patients"
            )
        if not 256 <= self.min_side_px <= self.max_side_px:
            raise ValueError(
                f"need 256 <= min_side_px <= max_side_px, got {self.min_side_px}, {self.max_side_px}"
            )
        if not self.mpp > 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")

    @classmethod
    def reduced(cls) -> DemoSpec:
        """A small cohort for tests: 30 patients, 34 slides of 1536–2304 px."""
        return cls(n_patients=30, n_slides=34, min_side_px=1536, max_side_px=2304)


@dataclass(frozen=True, kw_only=True)
class Patient:
    """One synthetic patient with its latent variables and observed outcome."""

    index: int
    patient_id: str
    z: float
    grade: int
    grade_observed: bool
    age: int
    sex: str
    survival_months: float
    event: int

    @property
    def grade_index(self) -> int:
        return self.grade - 2


@dataclass(frozen=True, kw_only=True)
class SlidePlan:
    """Everything needed to render one slide reproducibly."""

    slide_id: str
    patient_id: str
    patient_index: int
    slide_index: int
    grade_index: int
    z: float
    height: int
    width: int
    mpp: float
    seed: int

    @property
    def filename(self) -> str:
        return f"{self.slide_id}.tiff"


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def _patient_id(index: int) -> str:
    return f"DEMO-P{index:03d}"


def draw_patients(spec: DemoSpec) -> list[Patient]:
    """Latent risk, grade, demographics and censored survival for every patient."""
    k = _WEIBULL_SHAPE
    scale = _MEDIAN_MONTHS / (math.log(2) * math.exp(-_MEDIAN_AT_ETA)) ** (1 / k)
    patients, blank_draws = [], []
    for index in range(1, spec.n_patients + 1):
        rng = _rng(spec.seed, _STREAM_PATIENT, index)
        z = float(rng.standard_normal())
        grade = 2 + int(np.digitize(z + 0.3 * rng.standard_normal(), _GRADE_CUTS))
        age = int(np.clip(round(60 + 4 * z + 9 * rng.standard_normal()), 30, 88))
        sex = "F" if rng.random() < 0.5 else "M"
        eta = 0.9 * (grade - 2) + 0.5 * z + 0.02 * (age - 60)
        death = scale * (rng.exponential() * math.exp(-eta)) ** (1 / k)
        censor = rng.uniform(*_CENSOR_MONTHS)
        blank_draws.append(float(rng.random()))
        patients.append(
            Patient(
                index=index,
                patient_id=_patient_id(index),
                z=z,
                grade=grade,
                grade_observed=True,
                age=age,
                sex=sex,
                survival_months=max(0.1, round(min(death, censor), 1)),
                event=int(death <= censor),
            )
        )
    # The patients with the smallest draws lose their grade (at least one in cohorts of 10+).
    n_blank = max(1, round(_MISSING_GRADE_FRACTION * spec.n_patients)) if spec.n_patients >= 10 else 0
    for position in np.argsort(blank_draws, kind="stable")[:n_blank]:
        patients[position] = replace(patients[position], grade_observed=False)
    return patients


def _side_lengths(spec: DemoSpec, rng: np.random.Generator) -> tuple[int, int]:
    lo, hi = math.ceil(spec.min_side_px / 256), spec.max_side_px // 256
    if lo <= hi:
        height, width = (int(v) * 256 for v in rng.integers(lo, hi + 1, size=2))
    else:
        height, width = (int(v) for v in rng.integers(spec.min_side_px, spec.max_side_px + 1, size=2))
    return height, width


def plan_slides(spec: DemoSpec, patients: list[Patient]) -> list[SlidePlan]:
    """One slide per patient, and a second slide for ``n_slides - n_patients`` of them."""
    n_extra = spec.n_slides - spec.n_patients
    order = _rng(spec.seed, _STREAM_SELECTION).permutation(len(patients))
    twice = {patients[i].index for i in order[:n_extra]}
    plans = []
    for patient in patients:
        for slide_index in range(2 if patient.index in twice else 1):
            height, width = _side_lengths(spec, _rng(spec.seed, _STREAM_GEOMETRY, patient.index, slide_index))
            plans.append(
                SlidePlan(
                    slide_id=f"{patient.patient_id}-{'AB'[slide_index]}",
                    patient_id=patient.patient_id,
                    patient_index=patient.index,
                    slide_index=slide_index,
                    grade_index=patient.grade_index,
                    z=patient.z,
                    height=height,
                    width=width,
                    mpp=spec.mpp,
                    seed=spec.seed,
                )
            )
    return plans


def _planted(gene: str, modality: str, centred_grade: int, z: float) -> float:
    on_grade, on_z = _GENE_EFFECTS.get((gene, modality), (0.0, 0.0))
    return on_grade * centred_grade + on_z * z


def _genomics_row(patient: Patient, seed: int) -> dict[str, float]:
    rng = _rng(seed, _STREAM_GENOMICS, patient.index)
    centred_grade, z = patient.grade_index - 1, patient.z
    row: dict[str, float] = {}
    for gene, _group in GENE_GROUPS:
        mut_p, log_mean = _GENE_BASE[gene]
        cnv_latent = 0.7 * rng.standard_normal() + _planted(gene, "cnv", centred_grade, z)
        cnv = int(np.clip(round(cnv_latent), -2, 2))
        logit = math.log(mut_p / (1 - mut_p)) + _planted(gene, "mut", centred_grade, z)
        mut = int(rng.random() < 1 / (1 + math.exp(-logit)))
        log_rna = log_mean + 0.25 * cnv + _planted(gene, "rnaseq", centred_grade, z)
        log_rna += 0.5 * rng.standard_normal()
        row[f"{gene}_cnv"] = cnv
        row[f"{gene}_mut"] = mut
        row[f"{gene}_rnaseq"] = round(math.exp(log_rna), 3)
    missing = rng.random(len(row)) < _MISSING_GENOMICS_FRACTION
    for name, gone in zip(list(row), missing, strict=True):
        if gone:
            row[name] = math.nan
    return row


def _genomics_table(patients: list[Patient], seed: int) -> pd.DataFrame:
    rows = [{"patient_id": p.patient_id, **_genomics_row(p, seed)} for p in patients]
    table = pd.DataFrame(rows)
    for column in table.columns:
        if column.endswith(("_cnv", "_mut")):
            table[column] = table[column].round().astype("Int64")
    return table


def make_demo_tables(spec: DemoSpec = DemoSpec()) -> dict[str, pd.DataFrame]:
    """All tables of the cohort: ``slides``, ``patients``, ``genomics``, ``gene_groups``, ``clinical``.

    Slide paths in ``slides`` are relative to the sheet's folder (``slides/{slide_id}.tiff``).
    """
    patients = draw_patients(spec)
    plans = plan_slides(spec, patients)
    slides = pd.DataFrame(
        {
            "slide_id": [p.slide_id for p in plans],
            "patient_id": [p.patient_id for p in plans],
            "path": [f"slides/{p.filename}" for p in plans],
        }
    )
    outcome = pd.DataFrame(
        {
            "patient_id": [p.patient_id for p in patients],
            "grade": pd.array([p.grade if p.grade_observed else None for p in patients], dtype="Int64"),
            "survival_months": [p.survival_months for p in patients],
            "event": [p.event for p in patients],
        }
    )
    clinical = pd.DataFrame(
        {
            "patient_id": [p.patient_id for p in patients],
            "age": [p.age for p in patients],
            "sex": [p.sex for p in patients],
        }
    )
    gene_groups = pd.DataFrame(GENE_GROUPS, columns=["gene", "group"])
    return {
        "slides": slides,
        "patients": outcome,
        "genomics": _genomics_table(patients, spec.seed),
        "gene_groups": gene_groups,
        "clinical": clinical,
    }


# --------------------------------------------------------------------------------------------
# Slide rendering
# --------------------------------------------------------------------------------------------


def _upsample(image: np.ndarray, factor: int, width: int, height: int) -> Image.Image:
    """Bilinear upsampling by ``factor`` of a grid whose cell (i, j) covers level-0 [i·f, (i+1)·f)."""
    box = (0.0, 0.0, width / factor, height / factor)
    return Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR, box=box)


def _unit_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]
) -> np.ndarray:
    """Smoothed Gaussian noise rescaled to zero mean and unit variance."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-6)


def _tissue_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Soft tissue mask on the coarse grid: one or two irregular blobs away from the edges."""
    hc, wc = shape
    yy, xx = np.meshgrid((np.arange(hc) + 0.5) / hc, (np.arange(wc) + 0.5) / wc, indexing="ij")
    if rng.random() < 0.5:
        blobs = [((rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)), rng.uniform(0.22, 0.34, size=2))]
    else:
        first = rng.uniform(0.25, 0.35)
        split_y = rng.random() < 0.5
        blobs = []
        for along in (first, first + 0.4):
            across = rng.uniform(0.4, 0.6)
            centre = (along, across) if split_y else (across, along)
            radii = rng.uniform(0.13, 0.2), rng.uniform(0.2, 0.3)
            blobs.append((centre, np.array(radii if split_y else radii[::-1])))
    field = np.zeros(shape, dtype=np.float32)
    for (cy, cx), (ry, rx) in blobs:
        angle = rng.uniform(-0.5, 0.5)
        dy, dx = yy - cy, xx - cx
        u = (dy * math.cos(angle) - dx * math.sin(angle)) / ry
        v = (dy * math.sin(angle) + dx * math.cos(angle)) / rx
        field += np.exp(-0.5 * (u * u + v * v)).astype(np.float32)
    side = max(shape)
    field += 0.18 * _unit_noise(rng, shape, side / 14) + 0.07 * _unit_noise(rng, shape, side / 40)
    edge = np.minimum(np.minimum(yy, 1 - yy), np.minimum(xx, 1 - xx))
    field *= np.clip(edge / 0.08, 0, 1).astype(np.float32)
    coverage = rng.uniform(0.32, 0.55)
    mask = field > np.quantile(field, 1 - coverage)
    return ndimage.gaussian_filter(mask.astype(np.float32), 0.8)


def _sharpen(soft: np.ndarray) -> np.ndarray:
    return np.clip((soft - 0.5) * 2.5 + 0.5, 0, 1)


@dataclass(frozen=True, kw_only=True)
class _Template:
    rim_offsets: np.ndarray
    rim_values: np.ndarray
    core_offsets: np.ndarray
    core_values: np.ndarray


_RADII = np.arange(2.5, 7.01, 0.5)
_VARIANTS = 8


def _nucleus_templates(rng: np.random.Generator, row_stride: int) -> list[_Template]:
    """Anti-aliased, slightly irregular ellipses with chromatin speckle, ``_VARIANTS`` per radius."""
    span = np.arange(-_PAD + 1, _PAD)
    dy, dx = np.meshgrid(span, span, indexing="ij")
    theta = np.arctan2(dy, dx)
    templates = []
    for radius in _RADII:
        for _ in range(_VARIANTS):
            aspect = rng.uniform(1.0, 1.6)
            angle = rng.uniform(0, math.pi)
            a, b = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
            u = dy * math.cos(angle) + dx * math.sin(angle)
            v = -dy * math.sin(angle) + dx * math.cos(angle)
            wobble = 1 + 0.07 * np.cos(3 * theta + rng.uniform(0, 2 * math.pi))
            dist = np.sqrt((u / a) ** 2 + (v / b) ** 2) * wobble
            cover = np.clip((1 - dist) * b + 0.5, 0, 1)
            speckle = 0.8 + 0.2 * rng.random(cover.shape)
            offsets = dy * row_stride + dx
            rim, core = (cover > 0) & (cover < 1), cover >= 1
            templates.append(
                _Template(
                    rim_offsets=offsets[rim],
                    rim_values=(cover * speckle)[rim],
                    core_offsets=offsets[core],
                    core_values=speckle[core],
                )
            )
    return templates


def _nuclear_alpha(rng: np.random.Generator, plan: SlidePlan, tissue: np.ndarray) -> np.ndarray:
    """Haematoxylin opacity (uint8, level 0) of nuclei scattered through the tissue."""
    height, width = plan.height, plan.width
    g, z = plan.grade_index, plan.z
    atypia = g + 0.4 * z
    density = math.exp(0.45 * atypia) / 650.0
    modulation = np.exp(0.3 * _unit_noise(rng, tissue.shape, max(tissue.shape) / 10))
    expected = tissue * modulation * (density * _COARSE * _COARSE)
    counts = rng.poisson(expected).ravel()
    cells = np.repeat(np.arange(counts.size), counts)
    wc = tissue.shape[1]
    cy = (cells // wc) * _COARSE + rng.random(cells.size) * _COARSE
    cx = (cells % wc) * _COARSE + rng.random(cells.size) * _COARSE
    inside = (cy < height) & (cx < width)
    tissue_there = ndimage.map_coordinates(tissue, [cy / _COARSE - 0.5, cx / _COARSE - 0.5], order=1)
    inside &= _sharpen(tissue_there) > 0.3
    cy, cx = cy[inside].astype(np.int64), cx[inside].astype(np.int64)
    n = cy.size
    radius = np.clip(rng.normal(3.4 + 0.45 * g + 0.15 * z, 0.5 + 0.2 * g, n), _RADII[0], _RADII[-1])
    darkness = np.clip(rng.normal(0.78 + 0.05 * g, 0.06, n), 0.5, 0.98)
    log.debug("%s: %d nuclei", plan.slide_id, n)
    return stamp_nuclei(rng, (height, width), cy, cx, radius, darkness)


def stamp_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    cy: np.ndarray,
    cx: np.ndarray,
    radius: np.ndarray,
    darkness: np.ndarray,
) -> np.ndarray:
    """Haematoxylin opacity (uint8, ``shape``) of nuclei centred at integer ``(cy, cx)`` inside it.

    ``radius`` lies in [2.5, 7] px; ``darkness`` in (0, 1] scales the template's opacity.
    """
    height, width = shape
    n = cy.size
    kind = np.rint((radius - _RADII[0]) / 0.5).astype(np.int64) * _VARIANTS + rng.integers(0, _VARIANTS, n)

    stride = width + 2 * _PAD
    templates = _nucleus_templates(rng, stride)
    alpha = np.zeros((height + 2 * _PAD) * stride, dtype=np.uint8)
    centres = (cy + _PAD) * stride + (cx + _PAD)
    order = np.argsort(kind, kind="stable")
    bounds = np.searchsorted(kind[order], np.arange(len(templates) + 1))
    for part in ("rim", "core"):  # cores last, so overlapping rims never cut into a nucleus
        for t, template in enumerate(templates):
            chosen = order[bounds[t] : bounds[t + 1]]
            if chosen.size == 0:
                continue
            offsets = getattr(template, f"{part}_offsets")
            values = getattr(template, f"{part}_values")
            index = centres[chosen, None] + offsets[None, :]
            alpha[index.ravel()] = (255 * darkness[chosen, None] * values[None, :]).astype(np.uint8).ravel()
    return np.ascontiguousarray(alpha.reshape(height + 2 * _PAD, stride)[_PAD:-_PAD, _PAD:-_PAD])


def _stain_colours(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-slide stain colours with a little batch-to-batch variation."""
    return {
        "background": np.array([243, 242, 246]) + rng.normal(0, 1.5, 3),
        "paper": np.array([248, 244, 248]),
        "eosin": np.array([230, 150, 190]) + rng.normal(0, 5, 3),
        "haematoxylin": np.array([90, 50, 140]) + rng.normal(0, 6, 3),
    }


def _base_colour(rng: np.random.Generator, tissue: np.ndarray, colours: dict[str, np.ndarray]) -> np.ndarray:
    """Background and stroma colour without nuclei on the mid grid (uint8 RGB).

    Colour = background + t·(paper − background) − t·s·(paper − eosin), for tissue opacity t and
    stain strength s (fibrous texture on the mid grid, patchy variation on the coarse grid).
    """
    hm, wm = tissue.shape[0] * (_COARSE // _MID), tissue.shape[1] * (_COARSE // _MID)
    patches = _unit_noise(rng, tissue.shape, 2.5)
    t = _sharpen(np.asarray(_upsample(tissue, _COARSE // _MID, wm, hm)))
    patch = np.asarray(_upsample(patches, _COARSE // _MID, wm, hm))
    fibres = _unit_noise(rng, (hm, wm), (0.6, 3.0) if rng.random() < 0.5 else (3.0, 0.6))
    ts = t * np.clip(0.8 + 0.12 * fibres + 0.1 * patch, 0.55, 1.15)
    base = np.empty((hm, wm, 3), dtype=np.uint8)
    paper, background, eosin = colours["paper"], colours["background"], colours["eosin"]
    for c in range(3):
        channel = background[c] + t * (paper[c] - background[c]) - ts * (paper[c] - eosin[c])
        base[..., c] = np.clip(np.rint(channel), _GRAIN, 255 - _GRAIN)
    return base


def _add_grain(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` plus a tiled per-pixel noise texture of at most ±_GRAIN (no clipping needed)."""
    tile = np.clip(np.rint(2.2 * rng.standard_normal((_GRAIN_TILE, _GRAIN_TILE, 3))), -_GRAIN, _GRAIN)
    height, width = image.shape[:2]
    band = np.tile(tile.astype(np.int8), (1, math.ceil(width / _GRAIN_TILE), 1))[:, :width].view(np.uint8)
    out = np.empty_like(image)
    for y0 in range(0, height, _GRAIN_TILE):
        rows = slice(y0, min(height, y0 + _GRAIN_TILE))
        np.add(image[rows], band[: rows.stop - y0], out=out[rows])  # wraps modulo 256 = signed add
    return out


def render_slide(plan: SlidePlan) -> np.ndarray:
    """The level-0 RGB uint8 image of one synthetic H&E slide."""
    rng = _rng(plan.seed, _STREAM_RENDER, plan.patient_index, plan.slide_index)
    coarse_shape = (math.ceil(plan.height / _COARSE), math.ceil(plan.width / _COARSE))
    tissue = _tissue_field(rng, coarse_shape)
    colours = _stain_colours(rng)
    image = _upsample(_base_colour(rng, tissue, colours), _MID, plan.width, plan.height)
    nuclei = Image.fromarray(_nuclear_alpha(rng, plan, tissue))
    haematoxylin = tuple(int(c) for c in np.rint(colours["haematoxylin"]))
    image.paste(haematoxylin, (0, 0, plan.width, plan.height), mask=nuclei)
    del nuclei
    return _add_grain(rng, np.asarray(image))


def pyramid_levels(height: int, width: int, *, smallest: int = 512) -> int:
    """At least three levels, more until the smallest side is about ``smallest`` px."""
    return max(3, 1 + int(math.floor(math.log2(max(1, min(height, width) / smallest)))))


def _write_slide(plan: SlidePlan, slides_dir: Path) -> Path:
    path = slides_dir / plan.filename
    image = render_slide(plan)
    write_pyramidal_tiff(path, image, mpp=plan.mpp, levels=pyramid_levels(plan.height, plan.width))
    return path


def _write_table(table: pd.DataFrame, path: Path, *, sep: str = "\t") -> None:
    write_text_atomic(path, table.to_csv(sep=sep, index=False, lineterminator="\n", na_rep=""))


def _progress(items: Iterator[Path], total: int) -> Iterator[Path]:
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc="demo slides", unit="slide", disable=None)


def make_demo_cohort(out_dir: Path, spec: DemoSpec = DemoSpec(), *, workers: int = 1) -> dict[str, Path]:
    """Write the demo cohort (slides and tables) into ``out_dir``; returns the paths written.

    ``workers`` slides are rendered at a time (in threads). The output depends only on ``spec``.
    """
    out_dir = Path(out_dir)
    slides_dir = out_dir / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    patients = draw_patients(spec)
    plans = plan_slides(spec, patients)
    log.info(
        "demo cohort: %d patients, %d slides of %d-%d px -> %s",
        spec.n_patients,
        len(plans),
        spec.min_side_px,
        spec.max_side_px,
        out_dir,
    )
    write_slides(plans, lambda plan: _write_slide(plan, slides_dir), workers=workers)
    paths = write_cohort_tables(make_demo_tables(spec), out_dir)
    log.info("demo cohort written to %s", out_dir)
    return {**paths, "slides_dir": slides_dir}


def write_slides(plans: Sequence[P], write: Callable[[P], Path], *, workers: int) -> None:
    """Render and write the planned slides with ``write``, ``workers`` at a time (threads), with a progress bar."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path in _progress(pool.map(write, plans), len(plans)):
            log.debug("wrote %s", path)


def write_cohort_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """The sheets and tables of a synthetic cohort in ``out_dir`` (gene groups as csv); their paths."""
    paths = {
        "slides_sheet": out_dir / "slides.tsv",
        "patients_sheet": out_dir / "patients.tsv",
        "genomics": out_dir / "genomics.tsv",
        "gene_groups": out_dir / "gene_groups.csv",
        "clinical": out_dir / "clinical.tsv",
    }
    for name, key in (("slides", "slides_sheet"), ("patients", "patients_sheet"), ("genomics", "genomics"), ("clinical", "clinical")):
        _write_table(tables[name], paths[key])
    _write_table(tables["gene_groups"], paths["gene_groups"], sep=",")
    return paths
