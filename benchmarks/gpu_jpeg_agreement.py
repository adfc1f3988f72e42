"""How closely a device JPEG decoder (nvJPEG through torchvision) agrees with libjpeg-turbo.

For every stored JPEG tile of a slide's pages, the complete stream that ``region_decoder: gpu``
decodes is decoded twice: by torchvision on the CPU (libjpeg-turbo, the reference the CPU decoders
match) and on ``--device``. One JSON line per page and stream variant gives the distribution of
the absolute pixel differences (max, mean, 99th and 99.99th percentiles, share of values off by
more than 2 grey levels). For RGB-coded pages (Aperio) the variants are how the stream says
"RGB, no colour transform": the Adobe APP14 marker (what histofuse writes), component ids
'R', 'G', 'B' in the frame header, and both.

    python benchmarks/gpu_jpeg_agreement.py --slide SLIDE.svs [--slide PYRAMID.tiff] --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from histofuse.slides.jpeg_tiles import ADOBE_RGB, complete_stream

SOF_MARKERS = (0xC0, 0xC1, 0xC2)


def rgb_component_ids(stream: bytes) -> bytes:
    """The stream with its frame header's component ids (and the scan's selectors) set to 'R', 'G', 'B'."""
    data = bytearray(stream)
    at = 2  # past SOI
    ids: dict[int, int] = {}
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        body = at + 4
        if marker in SOF_MARKERS:
            for index in range(min(data[body + 5], 3)):
                ids[data[body + 6 + 3 * index]] = b"RGB"[index]
                data[body + 6 + 3 * index] = b"RGB"[index]
        elif marker == 0xDA:  # start of scan: rename its component selectors, then the entropy data
            for index in range(data[body]):
                data[body + 1 + 2 * index] = ids[data[body + 1 + 2 * index]]
            return bytes(data)
        at += 2 + length
    raise ValueError("no scan header in the stream")


def variants(tile: bytes, tables: bytes | None, rgb: bool) -> dict[str, bytes]:
    if not rgb:
        return {"ycbcr": complete_stream(tile, tables, rgb=False)}
    plain = complete_stream(tile, tables, rgb=False)
    adobe = complete_stream(tile, tables, rgb=True)
    return {"no_marker": plain, "adobe_marker": adobe, "component_ids": rgb_component_ids(plain), "both": rgb_component_ids(adobe)}


def page_streams(path: Path, page_index: int, limit: int) -> tuple[bool, dict[str, list[bytes]]]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page_index]
        rgb = int(page.photometric) == 2
        streams: dict[str, list[bytes]] = {}
        pairs = list(zip(page.dataoffsets, page.databytecounts, strict=True))[:limit]
        for offset, count in pairs:
            tif.filehandle.seek(offset)
            for name, stream in variants(tif.filehandle.read(count), page.jpegtables, rgb).items():
                streams.setdefault(name, []).append(stream)
    return rgb, streams


def decode(streams: list[bytes], device: str) -> list[np.ndarray]:
    data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
    if device == "cpu":
        return [decode_jpeg(d, mode=ImageReadMode.RGB).numpy() for d in data]
    return [t.cpu().numpy() for t in decode_jpeg(data, mode=ImageReadMode.RGB, device=device)]


def agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> dict[str, float]:
    diff = np.concatenate([np.abs(a.astype(np.int16) - b.astype(np.int16)).ravel() for a, b in zip(reference, other, strict=True)])
    return {
        "max": int(diff.max()),
        "mean": round(float(diff.mean()), 4),
        "p99": float(np.percentile(diff, 99)),
        "p9999": float(np.percentile(diff, 99.99)),
        "share_over_2": round(float((diff > 2).mean()), 6),
    }


def write_pyramid_of(slide: Path, out: Path) -> None:
    from histofuse.slides.pyramid import write_pyramidal_tiff
    from histofuse.slides.reader import open_slide

    with open_slide(slide) as source:
        width, height = source.info.width // 4 * 4, source.info.height // 4 * 4
        image = source.read_region((0, 0), 0, (width, height))
        mpp = source.info.mpp
    write_pyramidal_tiff(out, image, mpp=mpp, levels=3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, action="append", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiles", type=int, default=400, help="stored tiles per page at most")
    parser.add_argument("--pyramid", type=Path, help="also write a 3-level JPEG (YCbCr) pyramid of the first slide here and measure it")
    args = parser.parse_args(argv)
    if args.pyramid:
        write_pyramid_of(args.slide[0], args.pyramid)
        args.slide.append(args.pyramid)
    for path in args.slide:
        with tifffile.TiffFile(path) as tif:
            pages = [i for i, p in enumerate(tif.pages) if p.is_tiled and p.compression == 7]
        for page_index in pages:
            rgb, streams = page_streams(path, page_index, args.tiles)
            cpu_reference = decode(streams["ycbcr" if not rgb else "adobe_marker"], "cpu")
            for name, group in streams.items():
                line = {
                    "benchmark": "gpu_jpeg_agreement", "slide": path.name, "page": page_index,
                    "rgb_coded": rgb, "variant": name, "tiles": len(group), "device": args.device,
                    "unit": "grey levels vs libjpeg-turbo", **agreement(cpu_reference, decode(group, args.device)),
                }  # fmt: skip
                print(json.dumps(line), flush=True)
    if ADOBE_RGB not in b"".join(streams.get("adobe_marker", [ADOBE_RGB])):
        sys.exit("the Adobe marker is missing from the RGB streams")


if __name__ == "__main__":
    main()
