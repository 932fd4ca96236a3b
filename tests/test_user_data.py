"""User data (docs/design.md#user-data): FolderDataset and CocoCaptions over trees generated here and over
the static fixtures in tests/fixtures; the item contract, resize + centre crop, every filter's
count, and unreadable files skipped (up front and at load time) without crashing."""
import io
import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_fast.data import CocoCaptions, DataFilters, FolderDataset
from dalle_fast.data.images import load_image

FIXTURES = Path(__file__).parent / "fixtures"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(size: tuple[int, int], color: tuple[int, ...] = RED, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def save(path: Path, image: Image.Image | bytes, captions: list[str] | None = None, **save_args) -> Path:
    """Write ``image`` (or raw bytes) to ``path`` and, if given, its caption file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        image.save(path, **save_args)
    if captions is not None:
        path.with_suffix(".txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    return path


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def noise(size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


GOOD = ["a plain red square on a table", "a red square seen from above"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder in the DALLE-pytorch layout with one case of everything; counts in EXPECTED."""
    root = tmp_path / "data"
    save(root / "plain.png", solid((20, 20)), GOOD)
    save(root / "photo.jpg", noise((30, 20)), ["a photo of a blue sky over the sea"])
    gif = [solid((12, 12), RED).convert("P"), solid((12, 12), BLUE).convert("P")]  # frames: red, blue
    save(root / "sub" / "deeper" / "anim.gif", gif[0], ["an animation of a red square"], save_all=True,
         append_images=gif[1:])
    save(root / "sub" / "gray.png", solid((16, 16), 128, "L"), ["a gray square on the wall"])
    save(root / "sub" / "alpha.png", solid((16, 16), (0, 0, 0, 0), "RGBA"), ["a transparent square in the air"])
    save(root / "sub" / "pic.webp", solid((16, 24), GREEN), ["a green square in the grass"])
    save(root / "sub" / "pic.bmp", solid((24, 16), BLUE), ["a blue square in the water"])
    save(root / "edge.png", solid((10, 20)), ["a tall image at the limit"])  # aspect exactly 2: kept
    save(root / "panorama.png", solid((50, 10)), ["a very wide panorama of hills"])  # bad_aspect
    save(root / "tall.png", solid((10, 21)), ["a tall narrow tower in a city"])  # bad_aspect
    save(root / "truncated.png", encoded(noise((16, 16)), "PNG")[:300], GOOD)  # unreadable
    save(root / "fake.png", b"this is text, not a picture\n", GOOD)  # unreadable
    save(root / "no_caption.png", solid((16, 16)))  # missing_captions
    save(root / "blank.png", solid((16, 16)), ["", "   ", ""])  # missing_captions
    save(root / "captions.png", solid((16, 16)), [
        "a fine English caption about a square",  # kept
        "", "dog",  # a blank line (ignored), then too_short
        "un chien noir sur le canapé", "ein schwarzer Hund im Garten", "一只黑色的狗在沙发上",  # non_english
        "photographed on 2019-05-03", "May 3, 2019 12:00",  # date_like
    ])
    save(root / "all_bad.png", solid((16, 16)), ["a dog", "IMG_20190503 taken 03/05/2019"])  # no_caption_left
    save(root / "broken_later.jpg", encoded(noise((32, 32)), "JPEG")[:-300], GOOD)  # header fine, body truncated
    save(root / ".hidden" / "secret.png", solid((16, 16)), GOOD)  # hidden: not found
    save(root / "._plain.png", b"AppleDouble", GOOD)  # hidden: not found
    (root / "notes.txt").write_text("captions without an image\n")
    (root / "readme.md").write_text("not an image\n")
    return root


KEPT = ["all_bad.png", "broken_later.jpg", "captions.png", "edge.png", "photo.jpg", "plain.png",
        "alpha.png", "gray.png", "pic.bmp", "pic.webp", "anim.gif"]  # walk order: sorted, files before folders
EXPECTED = dict(images_found=17, images_kept=10, missing_captions=2, unreadable=2, bad_aspect=2, no_caption_left=1,
                captions_checked=20, captions_kept=12, too_short=2, non_english=3, date_like=3, broken_at_load=0)


def by_name(ds: FolderDataset) -> dict:
    return {record.path.name: record for record in ds.records}


def color(rgb: tuple[float, float, float], size: int) -> torch.Tensor:
    """A (3, size, size) image of one color, channels in [0, 1]."""
    return torch.tensor(rgb, dtype=torch.float32)[:, None, None].expand(3, size, size)


def test_folder_counts_every_filter_exactly(tree: Path) -> None:
    ds = FolderDataset(tree, 8)
    assert ds.report.counts() == EXPECTED
    assert [r.path.name for r in ds.records] == [name for name in KEPT if name != "all_bad.png"]
    assert by_name(ds)["captions.png"].captions == ("a fine English caption about a square",)
    assert str(ds.report).startswith(f"folder {tree}: kept 10/17 images")


def test_folder_with_filters_off_keeps_every_readable_captioned_image(tree: Path) -> None:
    ds = FolderDataset(tree, 8, filters=DataFilters.off())
    assert sorted(r.path.name for r in ds.records) == sorted(KEPT + ["panorama.png", "tall.png"])
    assert ds.report.counts() == dict(EXPECTED, images_kept=13, bad_aspect=0, no_caption_left=0, captions_checked=22,
                                      captions_kept=22, too_short=0, non_english=0, date_like=0)
    assert len(by_name(ds)["captions.png"].captions) == 7


def test_items_are_square_float_images_in_unit_range_with_their_captions(tree: Path) -> None:
    ds = FolderDataset(tree, 12)
    for i, record in enumerate(ds.records):
        if record.path.name == "broken_later.jpg":
            continue
        image, caption = ds[i]
        assert image.shape == (3, 12, 12) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert caption in record.captions
    named = {r.path.name: ds[i][0] for i, r in enumerate(ds.records) if r.path.name != "broken_later.jpg"}
    assert torch.equal(named["gray.png"], color((128 / 255,) * 3, 12))  # grayscale to RGB
    assert torch.equal(named["alpha.png"], color((1, 1, 1), 12))  # transparent over white
    assert torch.equal(named["anim.gif"], color((1, 0, 0), 12))  # the first frame
    assert torch.equal(named["pic.bmp"], color((0, 0, 1), 12))
    assert torch.allclose(named["pic.webp"], color((0, 1, 0), 12), atol=0.02)  # lossy


def test_wide_and_tall_images_are_resized_on_the_shorter_side_and_centre_cropped(tmp_path: Path) -> None:
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :20], wide[:, 20:60], wide[:, 60:] = RED, GREEN, BLUE  # centre square: all green
    for name, pixels in (("wide.png", wide), ("tall.png", wide.transpose(1, 0, 2).copy())):
        path = save(tmp_path / name, Image.fromarray(pixels))
        image = load_image(path, 16)
        assert image.shape == (3, 16, 16)
        assert torch.equal(image[:, 2:-2, 2:-2], color((0, 1, 0), 12))
        assert image[1].min() > 0.9  # the bicubic filter reaches only a little across the crop edge
        # the same as resizing the shorter side to 16 and cropping the centre
        full = Image.fromarray(pixels).resize((32, 16) if name == "wide.png" else (16, 32), Image.Resampling.BICUBIC)
        box = (8, 0, 24, 16) if name == "wide.png" else (0, 8, 16, 24)
        reference = torch.from_numpy(np.array(full.crop(box))).permute(2, 0, 1).float() / 255
        assert (image - reference).abs().max() <= 2 / 255


def test_small_images_are_upscaled(tmp_path: Path) -> None:
    image = load_image(save(tmp_path / "small.png", noise((4, 6))), 32)
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1


def test_exif_orientation_and_16_bit_grayscale(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, :8], pixels[:, 8:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    image = load_image(save(tmp_path / "rotated.jpg", Image.fromarray(pixels), exif=exif, quality=95), 16)
    assert image[2, :, :6].min() > 0.8 and image[0, :, 10:].min() > 0.8  # blue on the left now
    deep = Image.fromarray(np.full((8, 8), 128 * 257, np.uint16))
    assert torch.allclose(load_image(save(tmp_path / "deep.png", deep), 8), torch.full((3, 8, 8), 128 / 255))


def test_a_file_broken_after_building_is_skipped_and_counted(tmp_path: Path) -> None:
    for k, rgb in enumerate([RED, GREEN, BLUE]):
        save(tmp_path / f"{k}.png", solid((8, 8), rgb), [f"caption number {k} of three"])
    ds = FolderDataset(tmp_path, 8)
    (tmp_path / "1.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="1.png"):
        image, caption = ds[1]
    assert torch.equal(image, ds[2][0]) and caption == "caption number 2 of three"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[1][1] == "caption number 2 of three"  # known broken: skipped without a second warning
    assert ds.report.broken_at_load == 1
    (tmp_path / "2.png").unlink()
    with pytest.warns(UserWarning, match="2.png"):
        assert ds[-1][1] == "caption number 0 of three"  # wraps around
    assert ds.report.broken_at_load == 2 and "2 broken at load" in str(ds.report)
    (tmp_path / "0.png").write_bytes(encoded(noise((8, 8)), "PNG")[:60])
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="every image failed to load"):
        ds[0]


def test_a_truncated_jpeg_passes_the_header_check_and_is_skipped_at_load(tree: Path) -> None:
    ds = FolderDataset(tree, 8)
    i = [r.path.name for r in ds.records].index("broken_later.jpg")
    with pytest.warns(UserWarning, match="broken_later.jpg"):
        image, caption = ds[i]
    assert torch.equal(image, ds[i + 1][0]) and caption in ds.records[i + 1].captions
    assert ds.report.broken_at_load == 1


def test_captions_are_drawn_deterministically_per_seed_and_epoch(tmp_path: Path) -> None:
    captions = [f"caption {word} of the square" for word in ("one", "two", "three", "four")]
    for k in range(8):
        save(tmp_path / f"{k}.png", solid((8, 8)), captions)
    a, b = FolderDataset(tmp_path, 8), FolderDataset(tmp_path, 8)
    draws = [[a.caption(i) for i in range(8)]]
    assert draws[0] == [b[i][1] for i in range(8)]  # same seed and epoch: same captions
    for epoch in range(1, 8):
        a.set_epoch(epoch)
        draws.append([a[i][1] for i in range(8)])
    assert {c for draw in draws for c in draw} == set(captions)  # every caption gets drawn
    assert draws[0] != draws[1]
    assert [FolderDataset(tmp_path, 8, seed=1).caption(i) for i in range(8)] != draws[0]


def test_datasets_pickle_and_batch(tree: Path) -> None:
    ds = pickle.loads(pickle.dumps(FolderDataset(tree, 8)))  # as DataLoader workers get it under spawn
    with pytest.warns(UserWarning, match="broken_later.jpg"):  # item 0: skipped, the batch still fills
        images, captions = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 8, 8) and len(captions) == 4 and all(isinstance(c, str) for c in captions)


def coco_file(path: Path, images: list, annotations: list) -> Path:
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}), encoding="utf-8")
    return path


def test_coco_captions_counts_every_filter_exactly(tmp_path: Path) -> None:
    images_dir = tmp_path / "train2017"
    save(images_dir / "a.jpg", noise((32, 24)))
    save(images_dir / "b.png", solid((16, 16), 90, "L"))
    save(images_dir / "wide.png", solid((60, 20)))
    save(images_dir / "fake.jpg", b"no jpeg here")
    save(images_dir / "nocap.png", solid((16, 16)))
    images = [{"id": "a", "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png", "license": 3},
              {"id": 3, "file_name": "wide.png"}, {"id": 4, "file_name": "fake.jpg"},
              {"id": 5, "file_name": "missing.jpg"}, {"id": 6, "file_name": "nocap.png"}]
    annotations = [
        {"image_id": "a", "caption": "A man riding a wave on top of a surfboard.\n"},
        {"image_id": "a", "caption": "  A  surfer  rides   a big wave. "},
        {"image_id": 2, "caption": "gray box"},  # too_short
        {"image_id": 2, "caption": "一个灰色的盒子在桌子上"},  # non_english
        {"image_id": 2, "caption": "Photographed on May 3, 2019"},  # date_like
        {"image_id": 3, "caption": "A long wide banner over the street."},  # bad_aspect image
        {"image_id": 4, "caption": "A broken file that claims to be a jpeg."},  # unreadable
        {"image_id": 5, "caption": "A file that was never downloaded."},  # unreadable (missing)
        {"image_id": 99, "caption": "An annotation of an unlisted image."},  # ignored
    ]
    ds = CocoCaptions(coco_file(tmp_path / "captions.json", images, annotations), images_dir, 16)
    assert ds.report.counts() == dict(images_found=6, images_kept=1, missing_captions=1, unreadable=2, bad_aspect=1,
                                      no_caption_left=1, captions_checked=5, captions_kept=2, too_short=1,
                                      non_english=1, date_like=1, broken_at_load=0)
    assert ds.records[0].captions == ("A man riding a wave on top of a surfboard.", "A surfer rides a big wave.")
    assert ds.records[0].size == (32, 24)
    image, caption = ds[0]
    assert image.shape == (3, 16, 16) and caption in ds.records[0].captions
    assert str(ds.report).startswith(f"coco {tmp_path / 'captions.json'}: kept 1/6 images")
    off = CocoCaptions(tmp_path / "captions.json", images_dir, 16, filters=DataFilters.off())
    assert [r.path.name for r in off.records] == ["a.jpg", "b.png", "wide.png"]


def test_static_folder_fixture() -> None:
    ds = FolderDataset(FIXTURES / "folder", 8)
    assert ds.report.counts() == dict(images_found=6, images_kept=3, missing_captions=1, unreadable=1, bad_aspect=1,
                                      no_caption_left=0, captions_checked=7, captions_kept=4, too_short=1,
                                      non_english=1, date_like=1, broken_at_load=0)
    assert [r.path.name for r in ds.records] == ["cat.png", "dog.png", "bird.png"]
    assert all(ds[i][0].shape == (3, 8, 8) for i in range(len(ds)))


def test_static_coco_fixture() -> None:
    ds = CocoCaptions(FIXTURES / "coco" / "captions.json", FIXTURES / "coco" / "images", 8)
    assert ds.report.counts() == dict(images_found=4, images_kept=2, missing_captions=1, unreadable=1, bad_aspect=0,
                                      no_caption_left=0, captions_checked=4, captions_kept=2, too_short=1,
                                      non_english=1, date_like=0, broken_at_load=0)
    assert [r.captions for r in ds.records] == [("An orange box on a white background.",),
                                                ("A gray box in the middle of the picture.",)]


@pytest.mark.parametrize("image_size", [0, -8, 8.0, "8", True, None])
def test_bad_image_size_is_named(tree: Path, image_size: object) -> None:
    with pytest.raises(ValueError, match="image_size"):
        FolderDataset(tree, image_size)
    with pytest.raises(ValueError, match="image_size"):
        CocoCaptions(FIXTURES / "coco" / "captions.json", FIXTURES / "coco" / "images", image_size)


def test_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root"):
        FolderDataset(tmp_path / "nope", 8)
    with pytest.raises(NotADirectoryError, match="root"):
        FolderDataset(FIXTURES / "coco" / "captions.json", 8)
    with pytest.raises(FileNotFoundError, match="captions_json"):
        CocoCaptions(tmp_path / "nope.json", FIXTURES / "coco" / "images", 8)
    with pytest.raises(FileNotFoundError, match="images_dir"):
        CocoCaptions(FIXTURES / "coco" / "captions.json", tmp_path / "nope", 8)
    with pytest.raises(ValueError, match="filters"):
        FolderDataset(FIXTURES / "folder", 8, filters={"too_short": False})


@pytest.mark.parametrize(("content", "named"), [
    ("{not json", "not valid JSON"),
    ('{"images": []}', "'annotations'"),
    ('[1, 2]', "'images'"),
    ('{"images": [{"id": 1}], "annotations": []}', r"images\[0\].*'file_name'"),
    ('{"images": [], "annotations": [{"image_id": 1, "caption": 5}]}', r"annotations\[0\].*'caption'"),
])
def test_malformed_coco_files_are_named(tmp_path: Path, content: str, named: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"captions_json {tmp_path / 'bad.json'}: ") + f".*{named}"):
        CocoCaptions(tmp_path / "bad.json", tmp_path, 8)


def test_no_usable_images_is_an_error_with_the_report(tmp_path: Path) -> None:
    save(tmp_path / "a.png", solid((8, 8)), ["dog"])
    save(tmp_path / "b.png", b"not a png")
    with pytest.raises(ValueError, match=r"no usable images: folder .*: kept 0/2 images.*1 too_short"):
        FolderDataset(tmp_path, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="kept 0/0 images"):
        FolderDataset(tmp_path / "empty", 8)
