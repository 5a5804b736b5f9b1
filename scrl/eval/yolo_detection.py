"""Detection transfer with the user's own detector: Ultralytics YOLO fine-tuned and validated by Ultralytics itself.

Ultralytics (AGPL-3.0, ``pip install "scrl[ultralytics]"``) is imported only when these are called.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

__all__ = ["offline_fonts"]


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
