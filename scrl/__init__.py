"""scrl: Spatially Consistent Representation Learning (CVPR 2021) for PyTorch."""

from .box_sampler import BoxPairs, BoxPairSampler, sample_box_pairs
from .geometry import ViewGeometry

__version__ = "0.1.0"
