"""Carry pretrained trunk weights into the model a user fine-tunes: torchvision, timm, Ultralytics YOLO, Detectron2 and more.

One module per target (``*_format.py``); every writer reads its file back into the target model
where that library is installed and compares features with the trunk (:mod:`scrl.export.verify`).

Sources accepted everywhere (``source`` below):

* the path of a training checkpoint written by ``examples/pretrain_imagenet.py`` (a dict with
  ``"model"``, the SCRL/BYOL ``state_dict`` whose online trunk keys start with ``trunk.body.``),
  or such a dict already loaded; no model is built to read it;
* an ``SCRL``/``BYOL`` module (anything with a ``backbone_state_dict()`` method), a ``Trunk``
  (anything with ``.body``) or a torchvision ``ResNet``, also wrapped in DDP or ``torch.compile``;
* a torchvision ResNet ``state_dict`` (e.g. supervised weights), or the path of one.

Detectron2 is not needed: its weight format is a pickle of numpy arrays under Detectron2's
key names, which Detectron2 loads with ``matching_heuristics`` the way it loads its own
converted torchvision models. Nor is MMDetection: its checkpoint is checked against the key
names and widths its backbones give themselves.

Files are read with :func:`scrl.runtime.load_checkpoint` (an unreadable one is a
:class:`~scrl.runtime.CheckpointError` naming it) and written atomically
(:func:`scrl.runtime.save_checkpoint`, :func:`scrl.runtime.write_atomically`).
"""

from __future__ import annotations

from .detectron2_format import detectron2_config, detectron2_key, save_detectron2, to_detectron2
from .mmdet_format import save_mmdet, to_mmdet
from .source import Source, load_source, resnet_arch, source_arch, trunk_weights
from .torchvision_format import save_timm, save_torchvision, to_timm, to_torchvision
from .transformers_format import to_transformers
from .ultralytics_format import to_ultralytics

# Source (the type of what an export reads) and detectron2_key are importable here, not public.
__all__ = [
    "detectron2_config",
    "load_source",
    "resnet_arch",
    "save_detectron2",
    "save_mmdet",
    "save_timm",
    "save_torchvision",
    "source_arch",
    "to_detectron2",
    "to_mmdet",
    "to_timm",
    "to_torchvision",
    "to_transformers",
    "to_ultralytics",
    "trunk_weights",
]
