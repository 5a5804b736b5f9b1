"""Evaluation of pretrained trunks on object boxes: RoI linear evaluation, RoI k-NN, cross-view
retrieval, and the online RoI probe for pretraining loops."""

from .knn import knn_predict
from .linear_head import top1_accuracy, train_linear_head
from .retrieval import RetrievalResult, cross_view_retrieval
from .roi_eval import RoIEvalResult, roi_linear_eval, roi_probe, split_by_image
from .roi_features import RoIFeatures, SquareBoxes, adapted_trunk, extract_roi_features, frozen_copy

__all__ = [
    "RetrievalResult",
    "RoIEvalResult",
    "RoIFeatures",
    "SquareBoxes",
    "adapted_trunk",
    "cross_view_retrieval",
    "extract_roi_features",
    "frozen_copy",
    "knn_predict",
    "roi_linear_eval",
    "roi_probe",
    "split_by_image",
    "top1_accuracy",
    "train_linear_head",
]
