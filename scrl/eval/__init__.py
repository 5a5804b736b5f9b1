"""Evaluation of pretrained trunks on object boxes: RoI linear evaluation, RoI k-NN, cross-view
retrieval, and the online RoI probe for pretraining loops.

Modules, one concern each: :mod:`.trunk_forward` (device, wrappers, the normalised forward pass),
:mod:`.frozen` (the frozen copy), :mod:`.bn_adaptation` (BatchNorm re-estimation),
:mod:`.roi_features` (box features), :mod:`.linear_head`, :mod:`.knn`, :mod:`.roi_eval` (the
protocol and the probe) and :mod:`.retrieval`. The square-resized box images they read are
:class:`scrl.data.SquareBoxes`.
"""

from .bn_adaptation import adapted_trunk
from .frozen import frozen_copy
from .knn import knn_predict
from .linear_head import top1_accuracy, train_linear_head
from .retrieval import RetrievalResult, cross_view_retrieval
from .roi_eval import RoIEvalResult, roi_linear_eval, roi_probe, split_by_image
from .roi_features import RoIFeatures, extract_roi_features
from .trunk_forward import forward_images, module_device, unwrap_module

__all__ = [
    "RetrievalResult",
    "RoIEvalResult",
    "RoIFeatures",
    "adapted_trunk",
    "cross_view_retrieval",
    "extract_roi_features",
    "forward_images",
    "frozen_copy",
    "knn_predict",
    "module_device",
    "roi_linear_eval",
    "roi_probe",
    "split_by_image",
    "top1_accuracy",
    "train_linear_head",
    "unwrap_module",
]
