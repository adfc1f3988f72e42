"""The installed environment: the packages whose versions fight each other all import."""

from __future__ import annotations


def test_tiatoolbox_masker_and_timm_import() -> None:
    import timm
    import torch
    import torchvision
    from tiatoolbox.tools.tissuemask import OtsuTissueMasker

    assert OtsuTissueMasker is not None
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    assert torchvision.ops.nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1.0]), 0.5).tolist() == [0]


def test_openslide_library_is_bundled() -> None:
    import openslide

    assert openslide.__library_version__


def test_every_rule_uses_the_one_environment_file() -> None:
    """`--sdm conda` builds one environment, installed like `make install`."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rules = sorted((repo / "workflow" / "rules").glob("*.smk"))
    envs = set()
    for path in rules:
        text = path.read_text()
        n_rules = len(re.findall(r"^\s*rule \w+:", text, flags=re.M))
        found = re.findall(r"conda:\s*\n\s*\"([^\"]+)\"", text)
        assert len(found) == n_rules - text.count("localrule: True"), path.name
        envs.update((path.parent / env).resolve() for env in found)
    assert envs == {(repo / "workflow" / "envs" / "histofuse.yaml").resolve()}
    deploy = (repo / "workflow" / "envs" / "histofuse.post-deploy.sh").read_text()
    makefile = (repo / "Makefile").read_text()
    for command in ("--no-deps -r requirements/lock.txt", "--no-deps --no-build-isolation -e ."):
        assert command in deploy and command in makefile, command
