#!/usr/bin/env python
"""Export the pretrained trunk of a checkpoint to torchvision or Detectron2.

torchvision:  python examples/export_backbone.py --checkpoint runs/pretrain/checkpoint_last.pth \\
                  --format torchvision --out scrl_r50.pth
              then: torchvision.models.resnet50().load_state_dict(torch.load("scrl_r50.pth"), strict=False)
Detectron2:   python examples/export_backbone.py --checkpoint runs/pretrain/checkpoint_last.pth \\
                  --format detectron2 --out scrl_r50.pkl
              writes scrl_r50.pkl (MODEL.WEIGHTS) and scrl_r50.yaml (the matching config keys).

--checkpoint takes a training checkpoint (online trunk only; no model is built) or a
torchvision ResNet state dict such as backbone_torchvision.pth. See docs/transfer.md.
"""

from __future__ import annotations

import argparse
import sys

from scrl.export import load_source, resnet_arch, save_detectron2, save_torchvision, source_arch, to_timm, to_torchvision
from scrl.runtime import save_checkpoint
from scrl.trunk import TIMM_PREFIX


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint or torchvision classifier state dict")
    p.add_argument("--arch", default=None, help="trunk name of a plain state dict's model, of scrl.trunk.supported_archs() or timm:NAME (default: what the checkpoint records; else the ResNet its layout implies)")
    p.add_argument("--format", choices=["torchvision", "timm", "detectron2"], default="torchvision",
                   help="torchvision (any torchvision trunk), timm (a timm:NAME trunk), detectron2 (ResNets)")
    p.add_argument("--out", required=True, help="output file (.pth for torchvision, .pkl for detectron2)")
    p.add_argument("--unsafe-load", action="store_true", help="torch.load with weights_only=False (trusted files only)")
    args = p.parse_args(argv)
    weights_only = not args.unsafe_load
    try:
        if args.format == "torchvision":
            source = load_source(args.checkpoint, weights_only=weights_only)
            state = to_torchvision(source, arch=args.arch)
            arch = args.arch or source_arch(source) or resnet_arch(state)
            path = save_torchvision(state, args.out, arch=arch)
            print(f"wrote {path} ({arch}); load with torchvision.models.get_model({arch!r}).load_state_dict(sd, strict=False)")
            return {"weights": str(path), "arch": arch}
        if args.format == "timm":
            source = load_source(args.checkpoint, weights_only=weights_only)
            state = to_timm(source, arch=args.arch)
            save_checkpoint(state, args.out)
            name = (args.arch or source_arch(source)).removeprefix(TIMM_PREFIX)
            print(f"wrote {args.out} (timm {name}); load with timm.create_model({name!r}).load_state_dict(sd, strict=False)")
            return {"weights": str(args.out), "arch": TIMM_PREFIX + name}
        weights, config = save_detectron2(args.checkpoint, args.out, weights_only=weights_only)
        print(f"wrote {weights} (MODEL.WEIGHTS) and {config} (Detectron2 config keys to merge)")
        return {"weights": str(weights), "config": str(config)}
    except ValueError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
