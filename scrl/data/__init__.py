"""Datasets: image folders for pretraining, synthetic scenes, and object-box datasets for evaluation."""
from .coco import CocoBoxes
from .image_folder import IMAGE_EXTENSIONS, ImageFolderDataset
from .loader import two_view_loader
from .sampler import ResumableSampler
from .synthetic import SyntheticScenes
from .two_view import TwoViewBatch, TwoViewDataset, collate_two_views, mix_seed
from .label_problems import LabelProblem, LabelWarning
from .open_boxes import HELD_OUT_SEED, open_box_dataset
from .yolo import YoloBoxes
