"""CUB-200-2011 with the Reed et al. captions (tests/fixtures/cub, written by its make_cub.py):
the layouts found, every filter's count, the official train/test split, the run data detection,
and bad trees. The COCO fixture goes through the same filters (counts pinned here too, since
evaluation reads both test sets)."""
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from dalle_fast.config import preset
from dalle_fast.data import CocoCaptions, CubCaptions, DataFilters
from dalle_fast.data.cub import find_cub, split_images
from dalle_fast.data.splits import load_data

FIXTURES = Path(__file__).parent / "fixtures"
CUB = FIXTURES / "cub"
ALBATROSS = "001.Black_footed_Albatross/Black_Footed_Albatross_000"


def counts(report) -> dict[str, int]:
    return {k: v for k, v in report.counts().items() if v}


def test_cub_fixture_filters_and_items() -> None:
    ds = CubCaptions(CUB, 16)
    assert counts(ds.report) == {"images_found": 6, "images_kept": 2, "missing_captions": 1, "unreadable": 1,
                                 "bad_aspect": 1, "no_caption_left": 1, "captions_checked": 7, "captions_kept": 3,
                                 "date_like": 1, "non_english": 1, "too_short": 2}
    assert [str(r.path.relative_to(CUB / "CUB_200_2011" / "images")) for r in ds.records] == [
        f"{ALBATROSS}1_796111.jpg", f"{ALBATROSS}2_55.jpg"]
    assert ds.captions(1) == ("a large brown bird with long narrow wings",
                              "this bird is brown with white around its bill")
    image, text = ds[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert text == "this bird has a dark brown body and a long hooked bill"


def test_cub_filters_off_keep_every_caption() -> None:
    ds = CubCaptions(CUB, 16, DataFilters.off())
    assert counts(ds.report) == {"images_found": 6, "images_kept": 4, "missing_captions": 1, "unreadable": 1,
                                 "captions_checked": 8, "captions_kept": 8}


@pytest.mark.parametrize("split, kept, names", [
    ("train", {"images_found": 3, "images_kept": 1, "unreadable": 1, "bad_aspect": 1, "captions_checked": 3,
               "captions_kept": 1, "non_english": 1, "too_short": 1}, [f"{ALBATROSS}1_796111.jpg"]),
    ("test", {"images_found": 3, "images_kept": 1, "missing_captions": 1, "no_caption_left": 1,
              "captions_checked": 4, "captions_kept": 2, "date_like": 1, "too_short": 1}, [f"{ALBATROSS}2_55.jpg"]),
])
def test_cub_official_split(split: str, kept: dict, names: list[str]) -> None:
    ds = CubCaptions(CUB, 16, split=split)
    assert counts(ds.report) == kept
    assert [str(r.path.relative_to(CUB / "CUB_200_2011" / "images")) for r in ds.records] == names
    assert ds.report.source.endswith(f"({split})")


def test_cub_layouts(tmp_path: Path) -> None:
    assert find_cub(CUB) == (CUB / "CUB_200_2011", CUB / "text_c10")
    assert find_cub(CUB / "CUB_200_2011") == (CUB / "CUB_200_2011", CUB / "text_c10")  # text_c10 beside it
    inside = tmp_path / "CUB_200_2011"
    shutil.copytree(CUB / "CUB_200_2011", inside)
    shutil.copytree(CUB / "text_c10", inside / "text_c10")
    assert find_cub(inside) == (inside, inside / "text_c10")
    assert len(CubCaptions(inside, 8)) == 2
    assert find_cub(FIXTURES / "folder") is None
    assert find_cub(tmp_path / "nowhere") is None


def test_cub_bad_trees(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root: .* is not a CUB tree"):
        CubCaptions(FIXTURES / "folder", 16)
    with pytest.raises(ValueError, match="split: must be one of"):
        CubCaptions(CUB, 16, split="val")
    tree = tmp_path / "cub"
    shutil.copytree(CUB, tree)
    (tree / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(ValueError, match="split: 'test' needs .*train_test_split.txt"):
        CubCaptions(tree, 16, split="test")
    (tree / "CUB_200_2011" / "train_test_split.txt").write_text("1 1\n2 0 extra\n")
    with pytest.raises(ValueError, match=r"train_test_split.txt:2: expected two fields"):
        split_images(find_cub(tree), "test")
    (tree / "CUB_200_2011" / "train_test_split.txt").write_text("1 1\n")
    with pytest.raises(ValueError, match="has no entry for image id 2"):
        split_images(find_cub(tree), "test")
    shutil.rmtree(tree / "text_c10")
    with pytest.raises(FileNotFoundError, match="not a CUB tree"):
        CubCaptions(tree, 16)


def test_run_data_detects_cub_and_coco() -> None:
    config = preset("tiny")
    cub = load_data(dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=str(CUB))))
    assert isinstance(cub.train.dataset, CubCaptions) and cub.report.images_kept == 2
    assert len(cub.train) + len(cub.val) == 2


def test_coco_fixture_counts() -> None:
    ds = CocoCaptions(FIXTURES / "coco" / "captions.json", FIXTURES / "coco" / "images", 16)
    assert counts(ds.report) == {"images_found": 4, "images_kept": 2, "missing_captions": 1, "unreadable": 1,
                                 "captions_checked": 4, "captions_kept": 2, "non_english": 1, "too_short": 1}
