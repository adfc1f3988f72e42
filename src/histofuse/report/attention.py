"""Tile attention of a trained ``abmil`` model over a slide thumbnail, with its top tiles.

For a slide, the checkpoint used is the one of the fold whose *test* part holds the slide's patient
(so the model never trained on it); the slide's tile features form the bag on their own and the
gated-attention weights (``outputs["attention"]``, softmax over the slide's tiles) are drawn over
the thumbnail. The top tiles are read from the slide at the tiles' read level.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from numpy.typing import NDArray

from histofuse import h5layout
from histofuse.errors import HistofuseError
from histofuse.report.plots import new_figure, save_figure
from histofuse.slides.reader import open_slide
from histofuse.training.trainer import load_trained_model

__all__ = ["SlideAttention", "attention_figure", "choose_fold", "slide_attention", "write_attention_png"]

log = logging.getLogger(__name__)

THUMBNAIL_MAX_PX = 1024


@dataclass(frozen=True, kw_only=True)
class SlideAttention:
    """Attention weights of one slide's tiles and what is needed to draw them."""

    slide_id: str
    model: str
    fold: int
    coords: NDArray[np.int64]
    weights: NDArray[np.float64]
    tile_px_level0: int
    read_level: int
    read_tile_px: int


def choose_fold(
    slide_id: str, slides: pd.DataFrame, folds: pd.DataFrame, available: Mapping[int, Path]
) -> int:
    """The fold whose test part holds the slide's patient; the lowest available fold otherwise."""
    if not available:
        raise HistofuseError(f"no abmil checkpoint for slide {slide_id}", fix="train abmil first")
    patient = slides.loc[slides["slide_id"].astype(str) == slide_id, "patient_id"].astype(str)
    if not patient.empty:
        test = folds[(folds["patient_id"].astype(str) == patient.iloc[0]) & (folds["split"] == "test")]
        for fold in sorted(int(value) for value in test["fold"]):
            if fold in available:
                return fold
    fold = min(available)
    log.warning("slide %s: its patient is in no test part; using fold %d", slide_id, fold)
    return fold


def _attr(attrs: Mapping[str, Any], name: str, path: Path) -> int:
    if name not in attrs:
        raise HistofuseError(
            "feature file lacks an attribute", path=path, column=name, fix="re-extract the features"
        )
    return int(np.asarray(attrs[name]).reshape(-1)[0])


def slide_attention(checkpoint: Path, features_h5: Path, *, slide_id: str, fold: int) -> SlideAttention:
    """Attention of the model in ``checkpoint`` over the tiles of one feature file."""
    model, content = load_trained_model(checkpoint)
    features, coords, attrs = h5layout.read_features(features_h5)
    tile_px_level0 = _attr(attrs, h5layout.TILE_PX_LEVEL0, features_h5)
    read_level = _attr(attrs, h5layout.READ_LEVEL, features_h5)
    read_tile_px = _attr(attrs, h5layout.READ_TILE_PX, features_h5)
    if len(features) == 0:
        raise HistofuseError("feature file has no tiles", path=features_h5)
    with torch.inference_mode():
        outputs = model([torch.from_numpy(features)], None, None)
    if "attention" not in outputs or len(outputs["attention"]) != 1:
        raise HistofuseError(
            f"model {content['model_name']!r} returns no tile attention",
            path=checkpoint,
            fix="attention heatmaps need an attention-MIL model (abmil)",
        )
    weights = outputs["attention"][0].double().cpu().numpy()
    return SlideAttention(
        slide_id=slide_id,
        model=str(content["model_name"]),
        fold=fold,
        coords=coords,
        weights=weights,
        tile_px_level0=tile_px_level0,
        read_level=read_level,
        read_tile_px=read_tile_px,
    )


def attention_figure(
    attention: SlideAttention, thumbnail: NDArray[np.uint8], scale: float, tiles: list[NDArray[np.uint8]]
) -> Figure:
    """Thumbnail with the tiles' attention (min–max scaled within the slide) and the top tiles.

    ``scale`` is thumbnail pixels per level-0 pixel.
    """
    height, width = thumbnail.shape[:2]
    heat = np.full((height, width), np.nan)
    span = float(np.ptp(attention.weights))
    relative = (attention.weights - attention.weights.min()) / span if span > 0 else np.ones_like(attention.weights)
    side = max(1, int(round(attention.tile_px_level0 * scale)))
    for (x, y), value in zip(attention.coords, relative, strict=True):
        top, left = int(y * scale), int(x * scale)
        heat[top : top + side, left : left + side] = value
    n_top = len(tiles)
    fig = new_figure(7.0, 5.0 + (1.9 if n_top else 0.0))
    grid = fig.add_gridspec(2 if n_top else 1, max(n_top, 1), height_ratios=[3.4, 1] if n_top else [1])
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(thumbnail)
    shown = ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="attention (min–max within the slide)")
    ax.set_title(
        f"{attention.slide_id}: {attention.model} fold {attention.fold} "
        f"({len(attention.weights)} tiles)",
        fontsize=10,
    )
    ax.axis("off")
    order = np.argsort(-attention.weights)
    for index, tile in enumerate(tiles):
        tile_ax = fig.add_subplot(grid[1, index])
        tile_ax.imshow(tile)
        tile_ax.set_title(f"#{index + 1}: {attention.weights[order[index]]:.3f}", fontsize=8)
        tile_ax.axis("off")
    return fig


def _excluded_figure(slide_id: str, text: str) -> Figure:
    import textwrap

    fig = new_figure(6, 2)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, f"{slide_id}\n" + textwrap.fill(text, 80), ha="center", va="center", fontsize=9)
    return fig


def write_attention_png(
    *,
    slide_id: str,
    slide_path: Path,
    features_h5: Path,
    checkpoints: Mapping[int, Path],
    slides_table: Path,
    folds_tsv: Path,
    out_png: Path,
    reader: str = "openslide",
    mpp: float | None = None,
    top_k: int = 4,
) -> None:
    """Draw one slide's attention heatmap and top tiles to ``out_png`` (atomically).

    A slide excluded under ``on_error: skip`` has no tiles to weigh: its image says why instead.
    """
    from histofuse.exclusions import read_exclusion

    excluded = read_exclusion(features_h5)
    if excluded is not None:
        save_figure(_excluded_figure(slide_id, f"excluded at {excluded.stage}: {excluded.reason}"), out_png)
        log.info("%s: excluded (%s); no attention to draw -> %s", slide_id, excluded.reason, out_png)
        return
    slides = pd.read_parquet(slides_table)
    folds = pd.read_csv(folds_tsv, sep="\t", dtype={"patient_id": str})
    fold = choose_fold(slide_id, slides, folds, checkpoints)
    attention = slide_attention(checkpoints[fold], features_h5, slide_id=slide_id, fold=fold)
    with open_slide(slide_path, reader=reader, mpp=mpp) as handle:
        info = handle.info
        thumb_mpp = info.mpp * max(info.width, info.height) / THUMBNAIL_MAX_PX
        thumbnail, thumb_px_mpp = handle.thumbnail_at_mpp(thumb_mpp)
        scale = info.mpp / thumb_px_mpp
        order = np.argsort(-attention.weights)[:top_k]
        tiles = [
            handle.read_region(
                (int(attention.coords[i, 0]), int(attention.coords[i, 1])),
                attention.read_level,
                (attention.read_tile_px, attention.read_tile_px),
            )
            for i in order
        ]
    save_figure(attention_figure(attention, thumbnail, scale, tiles), out_png)
    log.info(
        "%s: attention of %s fold %d over %d tiles -> %s",
        slide_id,
        attention.model,
        fold,
        len(attention.weights),
        out_png,
    )
