"""The tiles of one slide as extraction reads them: a tiles file, validated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histofuse import h5layout
from histofuse.errors import HistofuseError


@dataclass(frozen=True, kw_only=True)
class TileSpec:
    """Where and how to read the tiles of one slide (from ``tiles.h5``)."""

    coords: np.ndarray
    read_level: int
    read_tile_px: int
    tile_px: int
    attrs: dict[str, Any]
    coords_attrs: dict[str, Any]
    extra: dict[str, np.ndarray]


def read_tile_spec(tiles_h5: str | Path) -> TileSpec:
    """Coordinates, geometry and attributes of a tiles file, validated against the contract."""
    path = Path(tiles_h5)
    fix = "rerun tiling for this slide (delete the tiles file so the pipeline rebuilds it)."
    if not path.is_file():
        raise HistofuseError("tiles file does not exist.", path=path, fix=fix)
    try:
        tiles = h5layout.read_tiles(path)
    except KeyError:
        raise HistofuseError(f"tiles file has no '{h5layout.COORDS}' dataset.", path=path, fix=fix) from None
    except OSError as err:
        raise HistofuseError(f"cannot read the tiles file ({err}).", path=path, fix=fix) from err
    attrs = tiles.attrs
    missing = [key for key in h5layout.REQUIRED_TILE_ATTRS if key not in attrs]
    if missing:
        raise HistofuseError(f"tiles file lacks the attributes {', '.join(missing)}.", path=path, fix=fix)
    return TileSpec(
        coords=tiles.coords,
        read_level=int(attrs[h5layout.READ_LEVEL]),
        read_tile_px=int(attrs[h5layout.READ_TILE_PX]),
        tile_px=int(attrs[h5layout.TILE_PX]),
        attrs=attrs,
        coords_attrs=tiles.coords_attrs,
        extra=tiles.extra,
    )
