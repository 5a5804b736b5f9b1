"""scrl: Spatially Consistent Representation Learning (CVPR 2021) for PyTorch."""

from .box_sampler import BoxPairs, BoxPairSampler, sample_box_pairs
from .geometry import ViewGeometry
from .losses import byol_loss, scrl_loss
from .mlp_head import MLPHead
from .models import BYOL, SCRL, TwoViewModel
from .momentum import MomentumTarget
from .pooling import BoxPairPool, GlobalPool, PooledPairs
from .roi_pool import RoIPairPool, pool_boxes, roi_pair_pool
from .transforms import TwoViewTransform
from .trunk import Trunk, resnet_trunk, torchvision_trunk
from .lars import LARS, lars_param_groups
from .schedule import warmup_cosine

__all__ = [
    "BoxPairPool",
    "BoxPairs",
    "BoxPairSampler",
    "BYOL",
    "byol_loss",
    "GlobalPool",
    "LARS",
    "lars_param_groups",
    "MLPHead",
    "MomentumTarget",
    "pool_boxes",
    "PooledPairs",
    "resnet_trunk",
    "roi_pair_pool",
    "RoIPairPool",
    "sample_box_pairs",
    "SCRL",
    "scrl_loss",
    "torchvision_trunk",
    "Trunk",
    "TwoViewModel",
    "TwoViewTransform",
    "ViewGeometry",
    "warmup_cosine",
]

__version__ = "0.2.0"
