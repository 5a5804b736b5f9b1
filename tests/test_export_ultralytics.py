"""Into YOLO: an exported checkpoint loads into ``ultralytics.YOLO`` with the pretrained backbone and a fresh head, and trains.

The end-to-end test runs in a fresh process with the network refused at the socket, as a
user's machine without a connection would: writing the export, loading it and one epoch of
``YOLO(path).train`` must not try to reach anything.
"""

import json
import os
import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch

if importlib.util.find_spec("ultralytics") is None:  # not imported here: its import patches PIL for the whole session
    pytest.skip("ultralytics is not installed", allow_module_level=True)

from scrl import SCRL  # noqa: E402
from scrl.export import to_ultralytics  # noqa: E402
from scrl.runtime import seeded_global_rngs  # noqa: E402
from scrl.transforms import normalize_images  # noqa: E402
from scrl.yolo_trunk import detection_model  # noqa: E402

SMALL = dict(projector_hidden=16, projection_dim=8)


def pretrained_yolo11n() -> SCRL:
    """An SCRL model whose trunk weights differ from any fresh initialisation (a stand-in for pretraining)."""
    model = SCRL("ultralytics:yolo11n.yaml", **SMALL)
    with torch.no_grad():
        for p in model.trunk.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    return model


def test_the_export_loads_into_yolo_with_every_backbone_tensor_a_fresh_head_and_the_trunks_features(tmp_path):
    from ultralytics import YOLO

    model = pretrained_yolo11n().eval()
    path = to_ultralytics(model, "yolo11n.yaml", tmp_path / "scrl_yolo11n.pt", seed=3)
    loaded = YOLO(str(path)).model
    pretrained = model.trunk.backbone_state_dict()
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pretrained.items())
    with seeded_global_rngs(3):
        fresh = detection_model("yolo11n.yaml").state_dict()
    head = [k for k in state if int(k.split(".")[1]) >= 11]
    assert head and all(torch.equal(state[k], fresh[k]) for k in head)  # untouched: the detector's own initialisation
    pixels = torch.rand(2, 3, 96, 128)
    loaded.eval()
    with torch.no_grad():  # YOLO's pixels in [0, 1]; the trunk's views normalised as in pretraining
        torch.testing.assert_close(loaded.model[:11](pixels), model.trunk(normalize_images(pixels)), rtol=1e-4, atol=1e-4)


def test_a_partial_or_foreign_backbone_is_refused_by_name(tmp_path):
    state = pretrained_yolo11n().trunk.backbone_state_dict()
    del state["model.3.conv.weight"]
    with pytest.raises(ValueError, match=r"missing 1 \(model\.3\.conv\.weight\)"):
        to_ultralytics(state, "yolo11n.yaml", tmp_path / "a.pt")
    with pytest.raises(ValueError, match="do not fit Ultralytics yolo11s.yaml"):
        to_ultralytics(pretrained_yolo11n().trunk.backbone_state_dict(), "yolo11s.yaml", tmp_path / "b.pt")
    with pytest.raises(ValueError, match="the source's trunk is 'ultralytics:yolo11n.yaml'"):
        to_ultralytics(pretrained_yolo11n(), "yolov8n.yaml", tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"must end in \.pt"):
        to_ultralytics(pretrained_yolo11n(), "yolo11n.yaml", tmp_path / "d.pth")
    assert not list(tmp_path.iterdir())  # nothing written by a refused export


NETWORK_REFUSED_RUN = textwrap.dedent('''
    import json, socket, sys
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(str(args[:1]))
        raise OSError("no network in this test")
    socket.getaddrinfo = socket.create_connection = socket.socket.connect = refuse

    from pathlib import Path
    import numpy as np
    from PIL import Image
    root = Path(sys.argv[1])
    for split in ("train", "val"):  # a YOLO folder: one box per image
        for kind in ("images", "labels"):
            (root / kind / split).mkdir(parents=True)
        for i in range(4):
            pixels = np.full((64, 64, 3), 40, np.uint8)
            pixels[16:48, 8 + 4 * i : 40 + 4 * i] = (200, 80, 30)
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text(f"0 {(24 + 4 * i) / 64} 0.5 0.5 0.5\\n")
    (root / "data.yaml").write_text(f"path: {root}\\ntrain: images/train\\nval: images/val\\nnames:\\n  0: box\\n")

    import torch
    from scrl import SCRL
    from scrl.export import to_ultralytics
    from scrl.eval.yolo_detection import offline_fonts
    model = SCRL("ultralytics:yolo11n.yaml", projector_hidden=16, projection_dim=8)
    path = to_ultralytics(model, "yolo11n.yaml", root / "scrl_yolo11n.pt")
    from ultralytics import YOLO
    with offline_fonts():
        yolo = YOLO(str(path))
        yolo.train(data=str(root / "data.yaml"), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False,
                   project=str(root / "runs"), name="finetune", amp=False, verbose=False)
    saved = torch.load(root / "runs" / "finetune" / "weights" / "last.pt", weights_only=False)
    trained = (saved.get("ema") or saved["model"]).state_dict()
    print(json.dumps({"attempts": attempts, "epoch_written": "model.0.conv.weight" in trained,
                      "backbone_moved": not torch.equal(trained["model.0.conv.weight"].float(),
                                                        model.trunk.backbone_state_dict()["model.0.conv.weight"])}))
''')


@pytest.mark.slow
def test_yolo_trains_an_epoch_from_the_export_in_a_fresh_process_without_the_network(tmp_path):
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "settings")}
    env.pop("YOLO_OFFLINE", None)  # scrl sets it itself when it imports Ultralytics
    result = subprocess.run([sys.executable, "-c", NETWORK_REFUSED_RUN, str(tmp_path / "data")], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "epoch_written": True, "backbone_moved": True}


def test_the_export_script_writes_a_yolo_checkpoint_from_a_training_checkpoint(tmp_path):
    from test_transfer_scripts import load_script

    model = pretrained_yolo11n()
    checkpoint = tmp_path / "checkpoint_last.pth"
    torch.save({"model": model.state_dict(), "run": {"identity": {"arch": "ultralytics:yolo11n.yaml"}}}, checkpoint)
    export = load_script("export_backbone")
    result = export.main(["--checkpoint", str(checkpoint), "--format", "ultralytics", "--out", str(tmp_path / "y.pt")])
    assert result == {"weights": str(tmp_path / "y.pt"), "model": "yolo11n.yaml"}  # the YAML the checkpoint records
    with pytest.raises(SystemExit, match="the source's trunk is 'ultralytics:yolo11n.yaml'"):
        export.main(["--checkpoint", str(checkpoint), "--format", "ultralytics", "--model", "yolov8n.yaml",
                     "--out", str(tmp_path / "z.pt")])
