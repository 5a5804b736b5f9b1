"""Evaluation of pretrained trunks on object boxes: RoI linear evaluation, RoI k-NN, cross-view
retrieval, the online RoI probe for pretraining loops, and detection fine-tuning.

Modules, one concern each: :mod:`.trunk_forward` (device, wrappers, the normalised forward pass),
:mod:`.frozen` (the frozen copy), :mod:`.bn_adaptation` (BatchNorm re-estimation),
:mod:`.roi_features` (box features), :mod:`.linear_head`, :mod:`.knn`, :mod:`.roi_eval` (the
protocol and the probe), :mod:`.retrieval`, :mod:`.measures` (all box measures of one split),
:mod:`.detection` (Faster R-CNN FPN fine-tuning and COCO box AP; pycocotools is imported only
when AP is computed) and :mod:`.yolo_detection` (Ultralytics YOLO fine-tuned and validated by
Ultralytics; ultralytics is imported only when it runs). The square-resized box images they
read are :class:`scrl.data.SquareBoxes`.
"""

from .bn_adaptation import adapted_trunk
from .detection import build_detector, coco_box_ap, detection_classifier, detection_trunk, train_detector
from .frozen import frozen_copy
from .knn import knn_predict
from .linear_head import top1_accuracy, train_linear_head
from .measures import RoIMeasures, roi_measures
from .retrieval import RetrievalResult, cross_view_retrieval
from .roi_eval import RoIEvalResult, roi_linear_eval, roi_probe, split_by_image
from .roi_features import RoIFeatures, extract_roi_features
from .trunk_forward import forward_images
from .yolo_detection import finetune_yolo, offline_fonts

__all__ = [
    "RetrievalResult",
    "RoIEvalResult",
    "RoIFeatures",
    "RoIMeasures",
    "adapted_trunk",
    "build_detector",
    "coco_box_ap",
    "cross_view_retrieval",
    "detection_classifier",
    "detection_trunk",
    "extract_roi_features",
    "finetune_yolo",
    "forward_images",
    "frozen_copy",
    "knn_predict",
    "offline_fonts",
    "roi_linear_eval",
    "roi_measures",
    "roi_probe",
    "split_by_image",
    "top1_accuracy",
    "train_detector",
    "train_linear_head",
]
