"""Datasets: image folders for pretraining, synthetic scenes, and object-box datasets for evaluation."""

from .coco import CocoBoxes
from .image_folder import IMAGE_EXTENSIONS, ImageFolderDataset
from .label_problems import LabelProblem, LabelWarning
from .loader import two_view_loader
from .open_boxes import HELD_OUT_SEED, open_box_dataset
from .sampler import ResumableSampler
from .synthetic import SyntheticScenes
from .two_view import TwoViewBatch, TwoViewDataset, collate_two_views, mix_seed
from .yolo import YoloBoxes

__all__ = [
    "CocoBoxes",
    "collate_two_views",
    "HELD_OUT_SEED",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "LabelProblem",
    "LabelWarning",
    "mix_seed",
    "open_box_dataset",
    "ResumableSampler",
    "SyntheticScenes",
    "two_view_loader",
    "TwoViewBatch",
    "TwoViewDataset",
    "YoloBoxes",
]
