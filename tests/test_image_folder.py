import io
import os

import pytest
import torch
from PIL import Image

from scrl import ViewGeometry
from scrl.data import DataError, ImageFolderDataset, ResumableSampler, TwoViewDataset, two_view_loader


def _write_image(path, colour, fmt=None, size=(24, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def _truncated_jpeg(path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    with open(path, "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])


def _plain_views(image):
    """A deterministic stand-in for a two-view transform: the image itself as uint8, twice."""
    view = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3).permute(2, 0, 1)
    geom = ViewGeometry.full(image.width, image.height)
    return view, view.clone(), geom, geom


def test_finds_images_at_any_depth_and_in_any_case(tmp_path):
    _write_image(str(tmp_path / "b" / "x.JPG"), "red", "JPEG")
    _write_image(str(tmp_path / "a" / "deep" / "y.png"), "green")
    _write_image(str(tmp_path / "z.WebP"), "blue", "WEBP")
    _write_image(str(tmp_path / "c.Bmp"), "white", "BMP")
    _write_image(str(tmp_path / "d.jpeg"), "black", "JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path)
    names = [os.path.relpath(p, tmp_path) for p in ds.samples]
    assert names == [os.path.join("a", "deep", "y.png"), os.path.join("b", "x.JPG"), "c.Bmp", "d.jpeg", "z.WebP"]
    image = ds[3]
    assert image.mode == "RGB" and image.size == (24, 16) and image.getpixel((3, 3)) == (0, 0, 0)


def test_grayscale_and_rgba_files_load_as_rgb(tmp_path):
    Image.new("L", (8, 8), 100).save(tmp_path / "g.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "t.png")
    ds = ImageFolderDataset(tmp_path, transform=lambda im: im.getpixel((0, 0)))
    assert ds[0] == (100, 100, 100) and ds[1] == (10, 20, 30)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=str(tmp_path).replace("\\", "\\\\") + ".*no images"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing")


def test_corrupt_files_are_replaced_and_reported_with_their_reason(tmp_path, capsys):
    _write_image(str(tmp_path / "0.png"), (0, 0, 0))
    _truncated_jpeg(str(tmp_path / "1_truncated.jpg"))
    (tmp_path / "2_text.jpg").write_text("this is not a JPEG")
    _write_image(str(tmp_path / "3.png"), (3, 3, 3))
    ds = ImageFolderDataset(tmp_path)
    truncated, text = ds.samples[1], ds.samples[2]

    image, skipped = ds.load(1)
    # Deterministic substitute: the next readable file in path order.
    assert image.getpixel((0, 0)) == (3, 3, 3) and list(skipped) == [truncated, text]
    assert skipped == ds.skipped
    assert "truncated" in skipped[truncated].lower() or "OSError" in skipped[truncated]
    # The dataset reports through load() only: the training run prints each file once, not each worker.
    assert capsys.readouterr().err == ""
    # Known-bad files are reported again (per item) but not decoded again.
    assert ds.load(2)[1] == {text: ds.skipped[text]} and ds.load(0)[1] == {}


def test_skipped_paths_reach_the_main_process_through_workers(tmp_path):
    for i in range(6):
        _write_image(str(tmp_path / f"{i}.png"), (i, i, i))
    _truncated_jpeg(str(tmp_path / "2b.jpg"))
    (tmp_path / "4b.jpg").write_text("text")
    ds = TwoViewDataset(ImageFolderDataset(tmp_path), _plain_views, seed=0)
    sampler = ResumableSampler(ds, num_replicas=1, rank=0, shuffle=False)
    loader = two_view_loader(ds, sampler, batch_size=2, workers=2)
    skipped = set()
    for batch in loader:
        assert batch.view1.dtype == torch.uint8 and batch.view1.shape == (2, 3, 16, 24)
        skipped.update(batch.skipped)
    assert skipped == {str(tmp_path / "2b.jpg"), str(tmp_path / "4b.jpg")}


def test_everything_unreadable_raises(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_text("text")
    with pytest.raises(DataError, match="3 unreadable images in a row"):
        ImageFolderDataset(tmp_path).load(0)


def test_the_limit_on_unreadable_files_in_a_row_is_settable(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_text("text")
    _write_image(str(tmp_path / "4.png"), (4, 4, 4))
    assert len(ImageFolderDataset(tmp_path).load(0)[1]) == 4  # the default, 64, replaces all four
    assert len(ImageFolderDataset(tmp_path, max_consecutive_unreadable=5).load(0)[1]) == 4
    with pytest.raises(DataError, match=r"^4 unreadable images in a row .*max_consecutive_unreadable=4"):
        ImageFolderDataset(tmp_path, max_consecutive_unreadable=4).load(0)
    with pytest.raises(ValueError, match="max_consecutive_unreadable must be an integer >= 1"):
        ImageFolderDataset(tmp_path, max_consecutive_unreadable=0)


def test_symbolic_links_are_followed_without_loops_or_doubles(tmp_path):
    (tmp_path / "a").mkdir()
    _write_image(str(tmp_path / "a" / "one.png"), (1, 1, 1))
    (tmp_path / "a" / "loop").symlink_to(tmp_path)  # a loop back to the root
    (tmp_path / "b").symlink_to(tmp_path / "a")  # the same folder under a second name
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "alias.png").symlink_to(tmp_path / "a" / "one.png")  # the same file again
    (tmp_path / "d").mkdir()
    _write_image(str(tmp_path / "d" / "two.png"), (2, 2, 2))
    (tmp_path / "e").symlink_to(tmp_path / "d" / "two.png")
    ds = ImageFolderDataset(tmp_path)
    assert ds.samples == [str(tmp_path / "a" / "one.png"), str(tmp_path / "d" / "two.png")]


def test_open_rgb_names_the_path_and_converts_16_bit(tmp_path):
    from PIL import Image

    from scrl.data.image_file import open_rgb

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(OSError, match="broken.png"):
        open_rgb(broken)
    deep = tmp_path / "deep.png"
    Image.new("I;16", (5, 4), 40000).save(deep)
    image = open_rgb(deep)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((0, 0)) == (40000 >> 8,) * 3


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise DataError("3 unreadable images in a row from 'x.jpg' on (max_consecutive_unreadable=3): the folder looks broken")


def test_a_data_error_raised_in_a_worker_reads_as_the_worker_raised_it():
    with pytest.raises(DataError) as caught:
        next(iter(torch.utils.data.DataLoader(_Broken(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # what the DataLoader makes of it
    assert str(DataError.from_worker(caught.value)) == (
        "3 unreadable images in a row from 'x.jpg' on (max_consecutive_unreadable=3): the folder looks broken")
