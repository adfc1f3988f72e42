"""Encoder registry: shipped ImageNet weights, CLAM's truncated ResNet50 and generic timm checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from histofuse.errors import ConfigError, WeightsError
from histofuse.features.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    build_encoder,
    is_known_encoder,
    list_encoders,
    load_efficientnet_lite0_classifier,
    sha256_file,
)

ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0() -> Encoder:
    return build_encoder("efficientnet_lite0")


def _imagenet_input(image: np.ndarray, side: int = 224) -> torch.Tensor:
    """Resize the short side to 256/224 × ``side``, centre-crop ``side`` px, ImageNet-normalise."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    scale = round(side * 256 / 224) / min(h, w)
    resized = resize(image, (round(h * scale), round(w * scale)), anti_aliasing=True)
    top = (resized.shape[0] - side) // 2
    left = (resized.shape[1] - side) // 2
    crop = resized[top : top + side, left : left + side]
    x = torch.tensor(crop, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_registry_lists_all_encoders() -> None:
    assert list_encoders() == ["efficientnet_lite0", "resnet50_trunc", "timm:<model_name>"]
    assert is_known_encoder("timm:vit_small_patch16_224")
    assert not is_known_encoder("timm:")
    assert not is_known_encoder("vgg16")


def test_unknown_encoder_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="efficientnet_lite0, resnet50_trunc, timm:<model_name>"):
        build_encoder("vgg16")


def test_efficientnet_lite0_classifies_coffee_as_espresso(lite0: Encoder) -> None:
    from skimage import data

    classifier = load_efficientnet_lite0_classifier()
    x = _imagenet_input(data.coffee())
    with torch.inference_mode():
        probabilities = classifier(x).softmax(dim=1)[0]
        features = lite0.model(x)
    assert int(probabilities.argmax()) == ESPRESSO
    assert float(probabilities[ESPRESSO]) > 0.6
    assert features.shape == (1, 1280)
    # the feature model is the classifier's pooled pre-logits
    with torch.inference_mode():
        pre_logits = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
    torch.testing.assert_close(features, pre_logits)


def test_efficientnet_lite0_metadata(lite0: Encoder) -> None:
    assert (lite0.dim, lite0.input_px, lite0.mean, lite0.std) == (1280, 224, IMAGENET_MEAN, IMAGENET_STD)
    assert lite0.weights_sha256 == sha256_file(lite0.weights_path)
    assert lite0.weights_sha256.startswith("57934424")  # the shipped file is named after its hash
    assert not lite0.model.training


def test_efficientnet_lite0_rejects_foreign_weights(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"a.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsError, match="EfficientNet-Lite0") as info:
        build_encoder("efficientnet_lite0", weights=path)
    assert str(path) in str(info.value)


def test_sha256_file_reads_in_chunks(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "blob.bin"
    payload = bytes(range(256)) * 1000
    path.write_bytes(payload)
    assert sha256_file(path, chunk_bytes=1000) == hashlib.sha256(payload).hexdigest()


def test_resnet50_trunc_loads_torchvision_weights(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    full = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    saved = full.state_dict()
    torch.save(saved, path)

    encoder = build_encoder("resnet50_trunc", weights=path)
    assert (encoder.dim, encoder.input_px) == (1024, 224)
    assert encoder.weights_sha256 == sha256_file(path)
    loaded = encoder.model.state_dict()
    assert not any(key.startswith(("layer4.", "fc.")) for key in loaded)
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    with torch.inference_mode():
        out = encoder.model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1024)


def test_resnet50_trunc_loads_a_truncated_checkpoint(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(1)
    state = {
        key: value
        for key, value in resnet50(weights=None).state_dict().items()
        if not key.startswith(("layer4.", "fc.")) and not key.endswith("num_batches_tracked")
    }
    path = tmp_path / "trunk.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    encoder = build_encoder("resnet50_trunc", weights=path)
    torch.testing.assert_close(encoder.model.state_dict()["layer3.5.conv3.weight"], state["layer3.5.conv3.weight"])


def test_resnet50_trunc_wrong_keys_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(WeightsError, match="missing keys: ") as info:
        build_encoder("resnet50_trunc", weights=path)
    assert str(path) in str(info.value)
    assert "features.weights" in str(info.value)


def test_timm_checkpoint_round_trip(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    original = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(original.state_dict(), path)

    encoder = build_encoder("timm:resnet18", weights=path)
    assert encoder.dim == 512
    x = torch.randn(2, 3, encoder.input_px, encoder.input_px)
    with torch.inference_mode():
        torch.testing.assert_close(encoder.model(x), original(x))


def test_timm_checkpoint_with_classifier_and_safetensors(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    original = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "resnet18.safetensors"
    save_file(original.state_dict(), str(path))

    encoder = build_encoder("timm:resnet18", weights=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        expected = original.forward_head(original.forward_features(x), pre_logits=True)
        torch.testing.assert_close(encoder.model(x), expected)


def test_timm_mismatched_checkpoint(tmp_path: Path) -> None:
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), path)
    with pytest.raises(WeightsError, match="missing keys") as info:
        build_encoder("timm:resnet34", weights=path)
    assert str(path) in str(info.value)


def test_timm_unknown_model(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({}, path)
    with pytest.raises(ConfigError, match="no_such_model"):
        build_encoder("timm:no_such_model", weights=path)


@pytest.mark.parametrize("name", ["resnet50_trunc", "timm:resnet18", "efficientnet_lite0"])
def test_missing_weights_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / "absent.pth"
    with pytest.raises(WeightsError, match="does not exist") as info:
        build_encoder(name, weights=path)
    assert str(path) in str(info.value)
    assert "features.weights" in str(info.value)


@pytest.mark.parametrize("name", ["resnet50_trunc", "timm:resnet18"])
def test_weights_required(name: str) -> None:
    with pytest.raises(WeightsError, match="features.weights"):
        build_encoder(name)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module needs full unpickling
    with pytest.raises(WeightsError, match="cannot read the weights file"):
        build_encoder("resnet50_trunc", weights=path)
