#!/usr/bin/env python
"""Export the pretrained trunk of a checkpoint into the model you fine-tune; each export verifies itself.

torchvision:   --format torchvision --out scrl_r50.pth      (--safetensors: scrl_r50.safetensors)
               torchvision.models.resnet50().load_state_dict(torch.load("scrl_r50.pth"), strict=False)
timm:          --format timm --out scrl_convnext_nano.pth   (a timm:NAME trunk)
Ultralytics:   --format ultralytics --model yolo11n.yaml --out scrl_yolo11n.pt
               ultralytics.YOLO("scrl_yolo11n.pt").train(data="my_data.yaml")
Transformers:  --format transformers --out scrl_r50_hf/     (a directory: config.json + model.safetensors)
               transformers.ResNetBackbone.from_pretrained("scrl_r50_hf")
MMDetection:   --format mmdet --out scrl_r50_mmdet.pth      (and scrl_r50_mmdet.py, the backbone's config)
Detectron2:    --format detectron2 --out scrl_r50.pkl       (and scrl_r50.yaml, the matching config keys)

Every command starts: python examples/export_backbone.py --checkpoint runs/pretrain/checkpoint_last.pth.
--checkpoint takes a training checkpoint (online trunk only; no model is built) or a run's
backbone file. After writing, the file is loaded into the target model (where its library is
installed) and its features compared with the trunk's; a partial load is an error naming the
keys. See docs/transfer.md, "Into your detector".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scrl.export import (
    load_source, resnet_arch, save_detectron2, save_mmdet, save_timm, save_torchvision, source_arch, to_torchvision,
    to_transformers, to_ultralytics,
)
from scrl.trunk import TIMM_PREFIX

FORMATS = ("torchvision", "timm", "ultralytics", "transformers", "mmdet", "detectron2")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint, or a run's backbone file")
    p.add_argument("--arch", default=None, help="trunk name of a plain state dict's model, of scrl.trunk.supported_archs() or timm:NAME (default: what the checkpoint records; else the ResNet its layout implies)")
    p.add_argument("--format", choices=FORMATS, default="torchvision",
                   help="torchvision (any torchvision trunk), timm (a timm:NAME trunk), ultralytics (an ultralytics:NAME.yaml "
                        "trunk), transformers (ResNets, ConvNeXts), mmdet (ResNets, ResNeXts, RegNetX, ConvNeXts), detectron2 (ResNets)")
    p.add_argument("--model", default=None, help="--format ultralytics: the detector's model YAML (default: the trunk's, e.g. yolo11n.yaml)")
    p.add_argument("--out", required=True, help="output file (.pth; .pt for ultralytics, .pkl for detectron2) or directory (transformers)")
    p.add_argument("--safetensors", action="store_true", help="--format torchvision or timm: write a .safetensors file")
    p.add_argument("--unsafe-load", action="store_true", help="torch.load with weights_only=False (trusted files only)")
    args = p.parse_args(argv)
    if args.safetensors and args.format not in ("torchvision", "timm"):
        p.error(f"--safetensors is for --format torchvision or timm, not {args.format}")
    out = Path(args.out).with_suffix(".safetensors") if args.safetensors else Path(args.out)
    try:
        source = load_source(args.checkpoint, weights_only=not args.unsafe_load)
        recorded = args.arch or source_arch(source)
        if args.format == "torchvision":
            arch = recorded or resnet_arch(to_torchvision(source))
            path = save_torchvision(source, out, arch=arch)
            print(f"wrote {path} ({arch}); load with torchvision.models.get_model({arch!r}).load_state_dict(sd, strict=False)")
            return {"weights": str(path), "arch": arch}
        if args.format == "timm":
            path = save_timm(source, out, arch=args.arch)
            name = recorded.removeprefix(TIMM_PREFIX)
            print(f"wrote {path} (timm {name}); load with timm.create_model({name!r}).load_state_dict(sd, strict=False)")
            return {"weights": str(path), "arch": TIMM_PREFIX + name}
        if args.format == "ultralytics":
            model = args.model or (recorded or "").removeprefix("ultralytics:")
            if not model:
                p.error("--format ultralytics needs --model NAME.yaml for a source that records no trunk")
            path = to_ultralytics(source, model, out)
            print(f"wrote {path} ({model}, fresh head); fine-tune with ultralytics.YOLO({str(path)!r}).train(data=...)")
            return {"weights": str(path), "model": model}
        if args.format == "transformers":
            path = to_transformers(source, out, arch=args.arch)
            print(f"wrote {path}; load with transformers.AutoBackbone.from_pretrained({str(path)!r})")
            return {"weights": str(path)}
        if args.format == "mmdet":
            weights, config = save_mmdet(source, out, arch=args.arch)
            print(f"wrote {weights} and {config} (the backbone config, init_cfg pointing at the weights)")
            return {"weights": str(weights), "config": str(config)}
        weights, config = save_detectron2(source, out)
        print(f"wrote {weights} (MODEL.WEIGHTS) and {config} (Detectron2 config keys to merge)")
        return {"weights": str(weights), "config": str(config)}
    except ValueError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
