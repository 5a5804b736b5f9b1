"""Datasets: image files read as RGB, image folders for pretraining, synthetic scenes, and object-box datasets for evaluation
(with their square-resized form and the resize/mirror of an image together with its boxes)."""

from .box_checks import BoxDataError, UnreadableImageWarning, require_boxes_in
from .box_warp import hflip_with_boxes, resize_with_boxes
from .coco import CocoBoxes
from .data_error import DataError
from .encoded_image import EncodedImage, read_encoded
from .image_folder import ImageFolderDataset
from .label_problems import LabelProblem, LabelWarning
from .loader import two_view_loader
from .open_boxes import HELD_OUT_SEED, open_box_dataset
from .rgb import to_rgb
from .sampler import ResumableSampler
from .square_boxes import SquareBoxes, collate_square_boxes, square_box_loader
from .synthetic import SyntheticScenes
from .two_view import (
    EncodedTwoViewBatch,
    EncodedTwoViewItem,
    TwoViewBatch,
    TwoViewDataset,
    TwoViewItem,
    collate_two_views,
)
from .yolo import YoloBoxes, read_class_names

__all__ = [
    "BoxDataError",
    "CocoBoxes",
    "collate_square_boxes",
    "collate_two_views",
    "DataError",
    "EncodedImage",
    "EncodedTwoViewBatch",
    "EncodedTwoViewItem",
    "HELD_OUT_SEED",
    "hflip_with_boxes",
    "ImageFolderDataset",
    "LabelProblem",
    "LabelWarning",
    "open_box_dataset",
    "read_class_names",
    "read_encoded",
    "require_boxes_in",
    "resize_with_boxes",
    "ResumableSampler",
    "square_box_loader",
    "SquareBoxes",
    "SyntheticScenes",
    "two_view_loader",
    "to_rgb",
    "TwoViewBatch",
    "TwoViewDataset",
    "TwoViewItem",
    "UnreadableImageWarning",
    "YoloBoxes",
]
