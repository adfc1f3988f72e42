"""histofuse: multi-modal computational pathology, from whole-slide images to trained models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("histofuse")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
