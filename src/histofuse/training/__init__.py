"""Training engine: one registered model trained and evaluated on one cross-validation fold."""

from __future__ import annotations

from histofuse.training.data import FoldData, load_fold_data, read_grade_classes
from histofuse.training.settings import TrainSettings
from histofuse.training.trainer import load_trained_model, predict_fold, train_fold

__all__ = [
    "FoldData",
    "TrainSettings",
    "load_fold_data",
    "load_trained_model",
    "predict_fold",
    "read_grade_classes",
    "train_fold",
]
