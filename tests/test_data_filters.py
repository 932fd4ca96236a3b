"""The paper's caption and image filters as pure functions: the English guess, the date-like
guess, their order and switches, and the report's summary line."""
import pytest

from dalle_fast.data import DataFilters, FilterReport, ShapesDataset
from dalle_fast.data.dates import is_date_like
from dalle_fast.data.english import looks_english

ENGLISH = [
    "a small red circle in the top left",
    "A man riding a wave on top of a surfboard.",
    "red sports car",
    "Two dogs playing in the snow",
    "a view of Los Angeles at night",
    "a man drinking coffee at a café",
    "a sign that says 東京 on a wall",
    "The 1990s were great",
]
FOREIGN = [
    "un chat noir dort sur le canapé",  # French
    "ein Hund spielt im Garten",  # German
    "Ein Mädchen läuft über die Straße",  # German, diacritics
    "un perro corre en la playa",  # Spanish
    "un gatto nero sul divano",  # Italian
    "um cachorro na praia",  # Portuguese
    "een hond in het park",  # Dutch
    "一只猫坐在沙发上",  # Chinese
    "猫がソファの上で寝ている",  # Japanese
    "кошка сидит на диване",  # Russian
    "12 34 56",  # no letters at all
]
DATES = [
    "photographed on May 3, 2019",
    "May 3, 2019 12:00",
    "IMG_20190503 taken 03/05/2019",
    "2019-05-03 12:00:00 UTC",
    "2019-05-03T12:00 photo",
    "03/05/2019 12:00 pm",
    "Taken on Sunday, 3rd of May 2019",
    "PXL_20210101_101010123.jpg copy final",
    "DSC_0042 20190503_123456",
    "Sept. 2019 photo",
]
NOT_DATES = [
    "summer vacation 2019",
    "a birthday party on 3 May 2019",
    "a cat may sit on the mat",
    "the clock shows 12:00 above the station door",
    "a red circle",
]


@pytest.mark.parametrize("caption", ENGLISH)
def test_english_captions_look_english(caption: str) -> None:
    assert looks_english(caption)


@pytest.mark.parametrize("caption", FOREIGN)
def test_foreign_captions_do_not_look_english(caption: str) -> None:
    assert not looks_english(caption)


@pytest.mark.parametrize("caption", DATES)
def test_date_captions_are_date_like(caption: str) -> None:
    assert is_date_like(caption)


@pytest.mark.parametrize("caption", NOT_DATES + ENGLISH)
def test_other_captions_are_not_date_like(caption: str) -> None:
    assert not is_date_like(caption)


def test_shapes_captions_pass_every_filter() -> None:
    ds = ShapesDataset("train", 4, size=300)
    assert all(DataFilters().caption_rejection(ds[i][1]) is None for i in range(len(ds)))


@pytest.mark.parametrize(("caption", "reason"), [
    ("a dog", "too_short"),
    ("dog", "too_short"),
    ("un chien noir", "non_english"),
    ("一只黑色的狗", "non_english"),  # no spaces: one "word", but counted as non-English
    ("May 2019", "date_like"),
    ("photographed on 2019-05-03", "date_like"),
    ("a black dog on a sofa", None),
])
def test_caption_rejection_names_the_first_filter(caption: str, reason: str | None) -> None:
    assert DataFilters().caption_rejection(caption) == reason


def test_each_caption_filter_switches_off() -> None:
    assert DataFilters(too_short=False).caption_rejection("a dog") is None
    assert DataFilters(min_words=2).caption_rejection("a dog") is None
    assert DataFilters(non_english=False).caption_rejection("un chien noir sur le canapé") is None
    assert DataFilters(date_like=False).caption_rejection("photographed on 2019-05-03") is None
    off = DataFilters.off()
    assert all(off.caption_rejection(c) is None for c in ["x", "2019", "一只狗"] + DATES + FOREIGN)


@pytest.mark.parametrize(("size", "kept"), [
    ((20, 10), True), ((10, 20), True), ((16, 16), True), ((21, 10), False), ((10, 21), False), ((1, 100), False),
])
def test_aspect_filter_keeps_ratios_from_half_to_two(size: tuple[int, int], kept: bool) -> None:
    assert DataFilters().keeps_aspect(*size) is kept
    assert DataFilters(bad_aspect=False).keeps_aspect(*size)
    assert DataFilters(max_aspect=100).keeps_aspect(*size)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"min_words": 0}, "min_words"), ({"min_words": 2.5}, "min_words"), ({"min_words": True}, "min_words"),
    ({"max_aspect": 0.5}, "max_aspect"), ({"max_aspect": float("inf")}, "max_aspect"),
    ({"max_aspect": "2"}, "max_aspect"), ({"too_short": "yes"}, "too_short"), ({"non_english": 1}, "non_english"),
])
def test_bad_filter_settings_name_the_field(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"DataFilters.{name}"):
        DataFilters(**kwargs)


def test_report_summary_is_one_line_with_every_count() -> None:
    report = FilterReport("folder pets", DataFilters(non_english=False), images_found=9, images_kept=5,
                          missing_captions=1, unreadable=2, bad_aspect=1, captions_checked=12,
                          captions_kept=8, too_short=3, date_like=1, broken_at_load=4)
    line = str(report)
    assert "\n" not in line
    assert line.startswith("folder pets: kept 5/9 images")
    for text in ("1 missing_captions", "2 unreadable", "1 bad_aspect", "0 no_caption_left", "8/12 captions",
                 "3 too_short", "1 date_like", "0 non_english (off)", "4 broken at load"):
        assert text in line
    assert report.counts() == {
        "images_found": 9, "images_kept": 5, "missing_captions": 1, "unreadable": 2, "bad_aspect": 1,
        "no_caption_left": 0, "captions_checked": 12, "captions_kept": 8, "date_like": 1, "non_english": 0,
        "too_short": 3, "broken_at_load": 4,
    }
