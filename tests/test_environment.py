"""The installed environment: the packages whose versions fight each other all import."""

from __future__ import annotations


def test_tiatoolbox_masker_and_timm_import() -> None:
    from tiatoolbox.tools.tissuemask import OtsuTissueMasker

    import timm
    import torch
    import torchvision

    assert OtsuTissueMasker is not None
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    assert torchvision.ops.nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1.0]), 0.5).tolist() == [0]


def test_openslide_library_is_bundled() -> None:
    import openslide

    assert openslide.__library_version__
