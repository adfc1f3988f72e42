"""Per trained model and fold: test predictions with one modality permuted across the test patients.

See :mod:`histofuse.modality_ablation` for the procedure and the table built from these files.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histofuse.errors import HistofuseError
from histofuse.io import atomic_path
from histofuse.modality_ablation import FULL, MODALITIES
from histofuse.models.registry import TaskSpec
from histofuse.training.data import FoldData, load_fold_for
from histofuse.training.settings import TrainSettings
from histofuse.training.trainer import infer, load_trained_model, prediction_table

log = logging.getLogger(__name__)

__all__ = ["MODALITY_FIELDS", "ablation_fold", "fold_modalities", "permutation", "permuted_data"]

MODALITY_FIELDS: dict[str, str] = dict(zip(MODALITIES, ("bags", "genomics", "clinical"), strict=True))
"""Modality -> the :class:`FoldData` field it lives in; per-patient tensors whose field name starts
with the same word (e.g. a clinical presence mask) are permuted with it."""


def permutation(n_test: int, *, seed: int, fold: int, modality: str, repeat: int) -> np.ndarray:
    """The seeded permutation ``π`` of the ``n_test`` test patients: position ``j`` gets ``π[j]``'s data."""
    rng = np.random.default_rng([seed, fold, MODALITIES.index(modality), repeat])
    return rng.permutation(n_test)


def permuted_data(data: FoldData, modality: str, test: np.ndarray, order: np.ndarray) -> FoldData:
    """``data`` with ``modality``'s inputs of the test patients ``test`` reordered by ``order``.

    Test patient ``test[j]`` gets the inputs of ``test[order[j]]``; every other patient and every
    other input is unchanged.
    """
    source = np.arange(data.n_patients)
    source[test] = test[order]
    name = MODALITY_FIELDS[modality]
    changes: dict[str, object] = {}
    if modality == "wsi":
        bags = data.bags
        changes["bags"] = dataclasses.replace(
            bags,
            files=tuple(bags.files[i] for i in source),
            sizes=tuple(bags.sizes[i] for i in source),
        )
    for item in dataclasses.fields(data):
        value = getattr(data, item.name)
        if (
            item.name.startswith(name)
            and isinstance(value, torch.Tensor)
            and value.ndim >= 1
            and value.shape[0] == data.n_patients
        ):
            changes[item.name] = value[torch.from_numpy(source)]
    return dataclasses.replace(data, **changes)  # type: ignore[arg-type]


def fold_modalities(data: FoldData, use_wsi: bool) -> list[str]:
    """The modalities this fold has data for."""
    present = {"wsi": use_wsi and len(data.bags) > 0, "genomics": data.n_genomic > 0, "clinical": data.n_clinical > 0}
    return [name for name in MODALITY_FIELDS if present[name]]


def _test_table(logits: dict[str, torch.Tensor], data: FoldData, test: np.ndarray, *, model_name: str, spec: TaskSpec) -> pd.DataFrame:
    """The predictions table of the test patients ``test`` from their logits (the fold's table cut to them)."""
    full = {
        task: torch.zeros((data.n_patients, *values.shape[1:]), dtype=values.dtype).index_copy(0, torch.from_numpy(test), values)
        for task, values in logits.items()
    }
    table = prediction_table(full, data, model_name=model_name, spec=spec)
    return table.iloc[test].reset_index(drop=True)


def ablation_fold(
    *,
    checkpoint: Path,
    fold: int,
    features_dir: Path,
    tables_dir: Path,
    folds_tsv: Path,
    preprocessing: Path,
    repeats: int,
    seed: int,
    out: Path,
    use_wsi: bool = True,
) -> pd.DataFrame:
    """Test predictions of one trained model and fold, full and with each modality permuted (parquet)."""
    model, content = load_trained_model(Path(checkpoint))
    model_name = str(content["model_name"])
    if int(content["fold"]) != fold:
        raise HistofuseError(f"checkpoint is of fold {content['fold']}, not fold {fold}.", path=checkpoint)
    settings = TrainSettings.from_mapping({**content["settings"], "device": "cpu", "resume": False})
    spec = TaskSpec.from_dict(content["task_spec"])
    data = load_fold_for(
        settings,
        fold=fold,
        features_dir=features_dir,
        tables_dir=tables_dir,
        folds_tsv=folds_tsv,
        preprocessing=preprocessing,
        use_wsi=use_wsi,
    )
    test = data.indices("test")
    device = torch.device("cpu")
    tables = [_test_table(infer(model, data, test, device, settings), data, test, model_name=model_name, spec=spec).assign(modality=FULL, repeat=0)]
    for modality in fold_modalities(data, use_wsi):
        for repeat in range(repeats):
            order = permutation(len(test), seed=seed, fold=fold, modality=modality, repeat=repeat)
            shuffled = permuted_data(data, modality, test, order)
            logits = infer(model, shuffled, test, device, settings)
            tables.append(_test_table(logits, data, test, model_name=model_name, spec=spec).assign(modality=modality, repeat=repeat))
        log.info("%s fold %d: %s permuted %d times", model_name, fold, modality, repeats)
    table = pd.concat(tables, ignore_index=True)
    with atomic_path(Path(out)) as tmp:
        table.to_parquet(tmp, index=False)
    return table
