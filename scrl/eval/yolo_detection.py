"""Detection transfer with the user's own detector: Ultralytics YOLO fine-tuned and validated by Ultralytics itself.

Ultralytics (AGPL-3.0, ``pip install "scrl[ultralytics]"``) is imported only when these are called.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..runtime.random_streams import seeded_global_rngs
from ..yolo_trunk import import_ultralytics

__all__ = ["finetune_yolo", "offline_fonts"]


@contextlib.contextmanager
def offline_fonts() -> Iterator[Path]:
    """Within the block, Ultralytics' font check finds a font on this machine instead of downloading Arial.

    ``YOLO.train`` checks for ``Arial.ttf`` in Ultralytics' settings folder when it reads a
    dataset, plots or not, and downloads it when missing: the one request a fine-tuning run makes
    on its own. In the block a font Ultralytics has already stored is used as before; otherwise
    matplotlib's DejaVu Sans (installed with Ultralytics) stands in. Nothing is written.

    Yields:
        The path of the stand-in font.
    """
    import matplotlib
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.plotting as plotting
    from ultralytics.utils import USER_CONFIG_DIR

    stand_in = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    original = data_utils.check_font

    def check_font(font: str = "Arial.ttf") -> Path:
        stored = USER_CONFIG_DIR / Path(font).name
        return stored if stored.exists() else stand_in

    data_utils.check_font = plotting.check_font = check_font
    try:
        yield stand_in
    finally:
        data_utils.check_font = plotting.check_font = original


def finetune_yolo(
    weights: str | os.PathLike,
    class_names: Sequence[str],
    train_images: Sequence[str | os.PathLike],
    val_images: Sequence[str | os.PathLike],
    *,
    epochs: int,
    image_size: int,
    batch_size: int,
    output_dir: str | os.PathLike,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int = 0,
    name: str = "finetune",
    verbose: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune YOLO with Ultralytics' own trainer, then its box AP on held-out images by Ultralytics' validator.

    The images keep their YOLO labels where Ultralytics looks for them (the path with its last
    ``/images/`` replaced by ``/labels/`` and a ``.txt`` suffix; no file: no objects). Both lists
    are linked into ``output_dir/name/data`` beside the dataset YAML Ultralytics reads, so that
    the label caches it writes next to the labels stay there too. No weights are chosen on the
    held-out images: training does not validate between epochs (``val=False``), and the last
    epoch's weights are the ones measured. Ultralytics' other settings stay its defaults (mosaic,
    optimiser ``auto``, warm-up), except AMP, off: its check downloads a model. Nothing is
    downloaded (:func:`~scrl.yolo_trunk.import_ultralytics`, :func:`offline_fonts`), and the
    torch settings Ultralytics changes for the process (CPU threads, deterministic algorithms,
    cuDNN) and the global random streams are as before afterwards.

    Args:
        weights: the ``.pt`` that :func:`scrl.export.to_ultralytics` writes, or a model YAML
            (``"yolo11n.yaml"``) for a randomly initialised detector.
        class_names: the names by class id of the labels.
        train_images: the training images, >= 1.
        val_images: the held-out images, >= 1.
        epochs: training epochs, >= 1.
        image_size: Ultralytics' ``imgsz`` (long side, rounded up to the stride 32), >= 32.
        batch_size: training and validation batch, >= 1.
        output_dir: the folder of ``name``: the linked data, the training run (``train/``, its
            weights in ``train/weights``) and the validation (``val/``).
        seed: Ultralytics' seed (``deterministic=True``), >= 0.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        workers: data-loading processes, >= 0.
        name: the folder in ``output_dir`` that holds all of it; a rerun replaces it.
        verbose: show Ultralytics' own log lines and progress bars (its warnings always show).
        log: receives one line before training and one with the result.

    Returns:
        ``{"box_ap", "box_ap50", "box_ap75"}`` in percent (COCO's AP@[.5:.95], AP@.5, AP@.75, as
        :func:`~scrl.eval.coco_box_ap`), ``"train_seconds"``, ``"val_seconds"``, and ``"weights"``:
        the path of the last weights.

    Raises:
        ValueError: a bad argument, an image that does not exist, or ultralytics not installed.

    Example:
        >>> to_ultralytics("runs/yolo/checkpoint_last.pth", "yolo11n.yaml", "scrl_yolo11n.pt")  # doctest: +SKIP
        >>> finetune_yolo("scrl_yolo11n.pt", names, train, held_out, epochs=30, image_size=640,  # doctest: +SKIP
        ...               batch_size=16, output_dir="runs/yolo_finetune")["box_ap"]
    """
    for label, value, low in (("epochs", epochs, 1), ("image_size", image_size, 32), ("batch_size", batch_size, 1),
                              ("seed", seed, 0), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if not class_names:
        raise ValueError("class_names names no class")
    if name in ("", ".", "..") or Path(name).name != name:
        raise ValueError(f"name must be the name of a folder in output_dir, got {name!r}")
    if not str(weights).endswith((".pt", ".yaml", ".yml")):
        raise ValueError(f"weights must be a .pt checkpoint (scrl.export.to_ultralytics) or a model YAML, got {weights!r}")
    sides = {"train": [Path(p) for p in train_images], "val": [Path(p) for p in val_images]}
    for side, images in sides.items():
        if not images:
            raise ValueError(f"{side}_images is empty")
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise ValueError(f"{side}_images: {len(missing)} do not exist ({', '.join(missing[:3])})")
    import_ultralytics()
    from ultralytics import YOLO

    root = Path(output_dir) / name
    shutil.rmtree(root, ignore_errors=True)  # Ultralytics would add to an earlier run's results.csv
    data = _dataset_yaml(root / "data", class_names, sides)
    common = dict(data=str(data), imgsz=image_size, batch=batch_size, device=device, workers=workers, plots=False,
                  project=str(root), exist_ok=True, verbose=False)
    log(f"YOLO fine-tuning from {weights}: {len(sides['train'])} images, {epochs} epochs at {image_size} px, "
        f"batch {batch_size}; validation on {len(sides['val'])} held-out images")
    with offline_fonts(), _torch_settings_kept(), seeded_global_rngs(seed, device), _ultralytics_log(verbose):
        start = time.perf_counter()
        model = YOLO(str(weights))
        model.train(epochs=epochs, seed=seed, deterministic=True, val=False, amp=False, name="train", **common)
        trained = time.perf_counter()
        last = Path(model.trainer.last)
        metrics = YOLO(str(last)).val(split="val", name="val", **common)
        done = time.perf_counter()
    result = {"box_ap": 100 * float(metrics.box.map), "box_ap50": 100 * float(metrics.box.map50),
              "box_ap75": 100 * float(metrics.box.map75), "train_seconds": trained - start, "val_seconds": done - trained,
              "weights": str(last)}
    log(f"YOLO box AP {result['box_ap']:.2f}, AP50 {result['box_ap50']:.2f} on {len(sides['val'])} held-out images "
        f"({result['train_seconds']:.0f} s training)")
    return result


def _dataset_yaml(folder: Path, class_names: Sequence[str], sides: dict[str, list[Path]]) -> Path:
    """An Ultralytics dataset YAML in ``folder`` whose sides list links to the images, each beside a link to its label."""
    import yaml
    from ultralytics.data.utils import img2label_paths

    for side, images in sides.items():
        (folder / side / "images").mkdir(parents=True)
        (folder / side / "labels").mkdir()
        links = []
        for i, image in enumerate(images):
            link = folder / side / "images" / f"{i:06d}_{image.name}"  # the index keeps equal names of sub-folders apart
            link.symlink_to(image.resolve())
            label = Path(img2label_paths([image])[0])
            if label.is_file():
                Path(img2label_paths([link])[0]).symlink_to(label.resolve())
            links.append(str(link))
        (folder / f"{side}.txt").write_text("\n".join(links) + "\n", encoding="utf-8")
    path = folder / "data.yaml"
    spec = {"path": str(folder.resolve()), "train": "train.txt", "val": "val.txt", "names": dict(enumerate(class_names))}
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def _torch_settings_kept() -> Iterator[None]:
    """Give back the process-wide torch settings Ultralytics' trainer changes: later work runs as it would have."""
    threads = torch.get_num_threads()  # Ultralytics trains a CPU on min(8, cores - 1) threads
    algorithms = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


@contextlib.contextmanager
def _ultralytics_log(verbose: bool) -> Iterator[None]:
    """Ultralytics' log lines as ``verbose`` says; its handler writes to the stdout of import time, past any redirection."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    if not verbose:
        LOGGER.setLevel(logging.WARNING)  # its progress bars follow the logger's level
    try:
        yield
    finally:
        LOGGER.setLevel(level)
