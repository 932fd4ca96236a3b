"""The built-in ``emoji`` data: real, human-drawn color glyphs with captions, installable offline.

The images are the glyphs of Noto Color Emoji (Debian ``fonts-noto-color-emoji``, ``data.emoji_font``);
the captions come from the English names and keywords of Unicode CLDR (Debian ``unicode-cldr-core``:
``annotations/en.xml`` and ``annotationsDerived/en.xml`` under ``data.emoji_cldr``), e.g. the name
"crying cat" with the keywords "cat | cry | face | sad | tear". Each glyph is drawn in color by
Pillow (its libraqm layout forms the flags, skin tones and ZWJ sequences) on white, cropped to its
visible ink, centred on a white square with a :data:`MARGIN` border and resized (antialiased bicubic) to the
image size. CLDR names the font lacks (math symbols, punctuation, currency signs) are left out.

Rendering takes seconds, so the squares are cached on disk (:func:`cache_dir`), keyed by
:func:`cache_key` (the image size, the contents of the font and the CLDR files, the Pillow and
libraqm versions and this module's source): a later load maps one ``.npy`` file read-only, shared
by every process that reads it. Files are written atomically, under a lock, so concurrent first
loads (torchrun ranks) render once and never read a partial file.

Splits (:func:`emoji_splits`): ``holdout`` holds the names of ``data.emoji_holdout`` (zero-shot
probes, of the forms :mod:`dalle_fast.config.emoji_spec` lists, each checked to be a composition of
parts the train split shows) and their own skin-tone variants; of the rest a seeded random
``min(val_size, 10%)`` form ``val`` and the others ``train``. The three are disjoint and cover every
glyph.
"""
from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import random
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL
import torch
from PIL import Image, ImageChops, ImageDraw, ImageFont, features
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from ..atomic import write_atomic
from ..config import Config
from ..config.emoji_spec import CLDR_PACKAGE, DEFAULT_CLDR, DEFAULT_FONT, FONT_PACKAGE, holdout_parts
from ..errors import UsageError
from .captioned import drawn_caption, screen
from .filters import DataFilters, FilterReport
from .images import check_image_size

INSTALL = f"sudo apt-get install {FONT_PACKAGE} {CLDR_PACKAGE}"
ANNOTATION_FILES = ("annotations/en.xml", "annotationsDerived/en.xml")  # under the CLDR common folder
BITMAP_SIZE = 109  # Noto Color Emoji's one bitmap strike (136 x 128 px): the size Pillow draws it at
MARGIN = 0.06  # white border around the ink, as a fraction of the square's side
VISIBLE = 8  # a pixel is ink when a channel is more than this many levels (of 255) below white
VAL_FRACTION = 0.1  # at most this share of the glyphs not held out is val (as for user data)
CACHE_FORMAT = "dalle_fast.emoji/1"
SPLITS = ("train", "val", "holdout")

# Captions of a glyph: every template has at least 3 words whatever the name.
NAME_TEMPLATES = ("an emoji of {name}", "the {name} emoji", "a picture of {name}")
KEYWORD_TEMPLATE = "an emoji of {name}, {keywords}"
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


@dataclass(frozen=True)
class Emoji:
    """One CLDR entry: its code point ``sequence``, English ``name`` and ``keywords``."""

    sequence: str
    name: str
    keywords: tuple[str, ...]

    def phrase(self) -> str:
        """The name as a caption says it, lowercase with plain quotes: ``"<head>: <a>, <b>"`` reads
        ``"<head> with <a>, <b>"`` (``"thumbs up with medium skin tone"``, ``"man with curly hair"``),
        ``", "`` instead of ``" with "`` after a head that has one (``"couple with heart, woman, man"``),
        ``"flag of japan"``, ``"keycap 1"``."""
        name = _plain(self.name)
        head, colon, tail = name.partition(": ")
        if not colon:
            return name
        joint = {"flag": " of ", "keycap": " "}.get(head, ", " if " with " in head else " with ")
        return f"{head}{joint}{tail}"

    def captions(self) -> tuple[str, ...]:
        """The lowercase captions of the glyph: the phrase in each of :data:`NAME_TEMPLATES`, then,
        if it has keywords beyond its name, with those (:data:`KEYWORD_TEMPLATE`)."""
        phrase = self.phrase()
        head, _, tail = _plain(self.name).partition(": ")
        said = {_plain(self.name), phrase, head, *tail.split(", ")}
        keywords = [k for k in dict.fromkeys(_plain(k) for k in self.keywords) if k and k not in said]
        captions = [t.format(name=phrase) for t in NAME_TEMPLATES]
        if keywords:
            captions.append(KEYWORD_TEMPLATE.format(name=phrase, keywords=", ".join(keywords)))
        return tuple(captions)


def _plain(text: str) -> str:
    return " ".join(text.translate(_QUOTES).lower().split())


def missing_files_error(what: str, path: str | os.PathLike, field: str) -> UsageError:
    """The error of a missing font or CLDR file: names both Debian packages, the install command and
    the config field (``data.emoji_font`` / ``data.emoji_cldr``) that points elsewhere."""
    return UsageError(f"--data emoji: {what} not found at {path}; the emoji data needs the Debian packages "
                      f"{FONT_PACKAGE} and {CLDR_PACKAGE} ({INSTALL}), or set {field} in the run's config.json "
                      "to where your copy is")


def annotation_paths(cldr: str | os.PathLike) -> list[Path]:
    """The two English annotation files under the CLDR ``common`` folder ``cldr``; ``UsageError``
    (:func:`missing_files_error`) when one is missing."""
    paths = [Path(cldr) / name for name in ANNOTATION_FILES]
    for path in paths:
        if not path.is_file():
            raise missing_files_error(f"the CLDR annotations file {path.relative_to(cldr)}", path, "data.emoji_cldr")
    return paths


def read_cldr(cldr: str | os.PathLike = DEFAULT_CLDR) -> list[Emoji]:
    """The entries of CLDR's English annotations under ``cldr`` (its ``common`` folder), in file
    order, ``annotations/en.xml``'s first; an entry needs a name (``type="tts"``)."""
    names: dict[str, str] = {}
    keywords: dict[str, tuple[str, ...]] = {}
    for path in annotation_paths(cldr):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise UsageError(f"--data emoji: {path} (data.emoji_cldr) is not CLDR XML: {e}") from None
        for node in root.iter("annotation"):
            sequence, text = node.get("cp"), (node.text or "").strip()
            if not sequence or not text:
                continue
            if node.get("type") == "tts":
                names.setdefault(sequence, text)
            else:
                keywords.setdefault(sequence, tuple(k.strip() for k in text.split("|") if k.strip()))
    return [Emoji(sequence, name, keywords.get(sequence, ())) for sequence, name in names.items()]


def open_font(path: str | os.PathLike = DEFAULT_FONT) -> ImageFont.FreeTypeFont:
    """The emoji font at its bitmap size, laid out by libraqm; ``UsageError`` when the file is missing
    or unreadable, or when Pillow has no libraqm (without it no sequence forms one glyph)."""
    if not Path(path).is_file():
        raise missing_files_error("the Noto Color Emoji font", path, "data.emoji_font")
    if not features.check("raqm"):
        raise UsageError("--data emoji: this Pillow has no libraqm (PIL.features.check('raqm') is False), which "
                         "lays out flags, skin tones and ZWJ sequences as one glyph; install it (Debian: "
                         "sudo apt-get install libraqm0)")
    try:
        return ImageFont.truetype(str(path), BITMAP_SIZE, layout_engine=ImageFont.Layout.RAQM)
    except OSError as e:
        raise UsageError(f"--data emoji: data.emoji_font {path} is no font Pillow can open at {BITMAP_SIZE} px "
                         f"({e}); it should be {FONT_PACKAGE}'s NotoColorEmoji.ttf") from None


def glyph_square(font: ImageFont.FreeTypeFont, sequence: str, single_width: float) -> Image.Image | None:
    """``sequence`` drawn in color on white, cropped to its visible ink (pixels more than
    :data:`VISIBLE` levels from white: white ink, such as the snow of some glyphs, does not count)
    and centred on a white RGB square with a :data:`MARGIN` border; None when the font has no
    single glyph for it (no ink: the font lacks it; or laid out wider than 1.5 ``single_width``:
    several glyphs)."""
    if not 0 < font.getlength(sequence) <= 1.5 * single_width:
        return None
    left, top, right, bottom = font.getbbox(sequence)
    size = (math.ceil(right - left) + 2, math.ceil(bottom - top) + 2)
    drawn = Image.new("RGBA", size, (255, 255, 255, 0))
    ImageDraw.Draw(drawn).text((1 - left, 1 - top), sequence, font=font, embedded_color=True)
    on_white = Image.alpha_composite(Image.new("RGBA", size, (255, 255, 255, 255)), drawn).convert("RGB")
    box = ImageChops.invert(on_white).point(lambda v: 255 if v > VISIBLE else 0).getbbox()
    if box is None:
        return None
    ink = on_white.crop(box)
    side = math.ceil(max(ink.size) / (1 - 2 * MARGIN))
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(ink, ((side - ink.width) // 2, (side - ink.height) // 2))
    return square


def render_all(entries: Sequence[Emoji], image_size: int,
               font_path: str | os.PathLike = DEFAULT_FONT) -> tuple[list[Emoji], np.ndarray]:
    """The entries the font draws as one glyph, and their squares resized to ``image_size``
    (antialiased bicubic): uint8 (N, image_size, image_size, 3)."""
    image_size = check_image_size(image_size)
    font = open_font(font_path)
    single = font.getlength("\N{GRINNING FACE}")
    kept, images = [], []
    for emoji in tqdm(entries, desc=f"rendering emoji at {image_size} px", unit="glyph", leave=False):
        square = glyph_square(font, emoji.sequence, single)
        if square is not None:
            kept.append(emoji)
            images.append(np.asarray(square.resize((image_size, image_size), Image.Resampling.BICUBIC)))
    if not kept:
        raise UsageError(f"--data emoji: the font {font_path} (data.emoji_font) draws none of the CLDR emoji; it "
                         f"should be {FONT_PACKAGE}'s NotoColorEmoji.ttf")
    return kept, np.stack(images)


def cache_dir() -> Path:
    """Where rendered glyphs are cached: ``$DALLE_FAST_CACHE/emoji``, else
    ``$XDG_CACHE_HOME/dalle_fast/emoji``, else ``~/.cache/dalle_fast/emoji``."""
    root = os.environ.get("DALLE_FAST_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dalle_fast"
    return Path(root) / "emoji"


def cache_key(image_size: int, font: str | os.PathLike = DEFAULT_FONT, cldr: str | os.PathLike = DEFAULT_CLDR) -> str:
    """What the rendered glyphs depend on, hashed (hex): the cache format, ``image_size``, the
    contents of the font and of the CLDR annotation files, the Pillow and libraqm versions and the
    source of this module."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, image_size, PIL.__version__, features.version("raqm")]).encode())
    for path in (Path(font), *annotation_paths(cldr), Path(__file__)):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


class EmojiGlyphs:
    """Every CLDR entry the font draws, with its glyph: ``emojis[i]`` and ``images[i]``, a uint8
    array (image_size, image_size, 3) on white; ``names_read``: how many CLDR names there were.
    Built by :meth:`load`. Loaded from the cache, ``images`` is a read-only memory map of its file,
    and pickling (to spawned data loader workers) sends the path, not the pixels."""

    def __init__(self, emojis: Sequence[Emoji], images: np.ndarray, names_read: int,
                 path: Path | None = None) -> None:
        if images.ndim != 4 or images.shape[0] != len(emojis) or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images: expected uint8 ({len(emojis)}, S, S, 3), got {images.dtype} {images.shape}")
        self.emojis, self.images, self.names_read, self.path = tuple(emojis), images, names_read, path
        self.index = {e.name: i for i, e in enumerate(self.emojis)}

    def __len__(self) -> int:
        return len(self.emojis)

    @property
    def image_size(self) -> int:
        return self.images.shape[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["images"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.images is None:
            self.images = np.load(self.path, mmap_mode="r")

    @classmethod
    def load(cls, image_size: int, font: str | os.PathLike = DEFAULT_FONT, cldr: str | os.PathLike = DEFAULT_CLDR,
             cache: str | os.PathLike | None = None) -> EmojiGlyphs:
        """The glyphs at ``image_size`` from the ``font`` file and the CLDR ``common`` folder ``cldr``:
        read from the cache folder (``cache``, default :func:`cache_dir`) when these files rendered
        them before, else rendered and stored there. A cache folder that cannot be written is warned
        about and the glyphs are rendered every time. Missing files raise ``UsageError``
        (:func:`missing_files_error`)."""
        image_size = check_image_size(image_size)
        entries = read_cldr(cldr)
        open_font(font)  # a missing font or libraqm: say so before anything else
        folder = Path(cache) if cache is not None else cache_dir()
        stem = folder / f"glyphs-{image_size}px-{cache_key(image_size, font, cldr)}"
        index, pixels = stem.with_suffix(".json"), stem.with_suffix(".npy")
        glyphs = cls._read(index, pixels, entries, image_size)
        if glyphs is not None:
            return glyphs
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = _FileLock(stem.with_suffix(".lock"))
        except OSError as e:
            warnings.warn(f"emoji cache {folder} is not writable ({e}); rendering without it", stacklevel=2)
            return cls(*render_all(entries, image_size, font), len(entries))
        with lock:
            glyphs = cls._read(index, pixels, entries, image_size)  # another process rendered them meanwhile
            if glyphs is not None:
                return glyphs
            emojis, images = render_all(entries, image_size, font)
            record = {"format": CACHE_FORMAT, "names_read": len(entries), "sequences": [e.sequence for e in emojis]}
            try:
                write_atomic(pixels, lambda tmp: _save_array(tmp, images))
                write_atomic(index, lambda tmp: Path(tmp).write_text(json.dumps(record)))  # last: the pair is whole
            except OSError as e:
                warnings.warn(f"emoji cache {folder}: cannot write {pixels.name} ({e}); not cached", stacklevel=2)
                return cls(emojis, images, len(entries))
        return cls(emojis, np.load(pixels, mmap_mode="r"), len(entries), pixels)

    @classmethod
    def _read(cls, index: Path, pixels: Path, entries: Sequence[Emoji], image_size: int) -> EmojiGlyphs | None:
        """The cached glyphs, or None when the pair of files is missing or does not match."""
        try:
            record = json.loads(index.read_text())
            images = np.load(pixels, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        by_sequence = {e.sequence: e for e in entries}
        sequences = record.get("sequences")
        if record.get("format") != CACHE_FORMAT or not isinstance(sequences, list) \
                or images.shape != (len(sequences), image_size, image_size, 3) or images.dtype != np.uint8 \
                or not all(s in by_sequence for s in sequences):
            return None
        return cls([by_sequence[s] for s in sequences], images, int(record.get("names_read", len(entries))), pixels)


def _save_array(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a name without it
        np.save(f, array, allow_pickle=False)


class _FileLock:
    """An exclusive advisory lock on the file ``path`` (created), taken now and released when the
    ``with`` block ends; none where ``fcntl`` is missing (concurrent first loads then render twice,
    still writing atomically). ``OSError`` when the file cannot be created."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a")  # noqa: SIM115 - held until __exit__
        try:
            import fcntl
        except ImportError:
            self.fcntl = None
        else:
            self.fcntl = fcntl
            fcntl.flock(self.file, fcntl.LOCK_EX)

    def __enter__(self) -> _FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fcntl is not None:
            self.fcntl.flock(self.file, self.fcntl.LOCK_UN)
        self.file.close()


def _stem(name: str) -> str:
    """The name without its ``": ..."`` variant (``"man cook: dark skin tone"`` -> ``"man cook"``)."""
    return name.partition(": ")[0]


def held_out(names: Sequence[str], holdout: Sequence[str]) -> list[int]:
    """The indices of ``names`` (the glyphs') kept out of training for ``holdout``: each held-out
    name and its variants (``"<name>: ..."``, e.g. the skin tones of ``"man cook"``). ``UsageError``
    naming ``data.emoji_holdout`` for a name the glyphs lack or of no held-out form."""
    known = set(names)
    unknown = [name for name in holdout if name not in known]
    if unknown:
        raise UsageError(f"data.emoji_holdout: {len(unknown)} names are no emoji of the installed CLDR and font, "
                         f"e.g. {unknown[:3]}; use CLDR's English names (annotations/en.xml type=\"tts\")")
    for name in holdout:
        try:
            holdout_parts(name)
        except ValueError as e:
            raise UsageError(f"data.emoji_holdout: {e}") from None
    held = set(holdout)
    return [i for i, name in enumerate(names) if name in held or (": " in name and _stem(name) in held)]


def unseen_parts(name: str, seen: Sequence[str]) -> list[str]:
    """The parts of the held-out ``name`` that no name of ``seen`` (the train split's) shows. For
    ``"<base>: <tone> skin tone"``: the base (toneless or in another tone) and the tone (on another
    base); for ``"<gender> <role>"``: the role (genderless or of another gender, in any tone) and
    the gender (in another role)."""
    kind, whole, part = holdout_parts(name)
    stems = {_stem(n) for n in seen}
    if kind == "tone":
        parts = {whole: whole in stems, part: any(n.endswith(": " + part) and _stem(n) != whole for n in seen)}
    else:
        roles = {whole, *(f"{g} {whole}" for g in ("woman", "man", "person") if g != part)}
        parts = {whole: bool(roles & stems), part: any(s.startswith(part + " ") and s != name for s in stems)}
    return [p for p, shown in parts.items() if not shown]


def split_indices(names: Sequence[str], holdout: Sequence[str], val_size: int, seed: int) -> dict[str, list[int]]:
    """The glyph indices of each of :data:`SPLITS` (sorted, disjoint, covering ``names``): ``holdout``
    (:func:`held_out`), ``val`` (a random ``max(1, min(val_size, 10%))`` of the rest, drawn by a
    generator seeded with ``seed``) and ``train``. ``UsageError`` naming ``data.emoji_holdout``
    when a held-out name has a part the train split does not show (:func:`unseen_parts`)."""
    held = held_out(names, holdout)
    rest = sorted(set(range(len(names))) - set(held))
    if len(rest) < 2:
        raise UsageError(f"data.emoji_holdout: holds out {len(held)} of the {len(names)} glyphs, leaving fewer "
                         "than 2 to train and validate on")
    val_count = max(1, min(operator.index(val_size), int(len(rest) * VAL_FRACTION)))
    shuffled = list(rest)
    random.Random(f"dalle_fast.emoji/{seed}").shuffle(shuffled)
    splits = {"train": sorted(shuffled[val_count:]), "val": sorted(shuffled[:val_count]), "holdout": held}
    train_names = [names[i] for i in splits["train"]]
    for name in holdout:
        missing = unseen_parts(name, train_names)
        if missing:
            raise UsageError(f"data.emoji_holdout: {name!r} is no composition of parts seen in training: no train "
                             f"glyph shows {' or '.join(repr(p) for p in missing)}")
    return splits


class EmojiDataset(Dataset):
    """``ds[i] -> (image, caption)`` over every glyph of ``glyphs``: image a float32 tensor (3,
    image_size, image_size) in [0, 1], a glyph on white; caption one of its :meth:`Emoji.captions`
    that the paper's ``filters`` keep, drawn by a stable hash of (seed, epoch, name)
    (:func:`~.captioned.drawn_caption`; :meth:`set_epoch`). Captions are filtered and counted as
    user data's are (``self.report``); a glyph left without one is dropped."""

    def __init__(self, glyphs: EmojiGlyphs, filters: DataFilters | None = None, seed: int = 0) -> None:
        self.glyphs, self.seed, self.epoch = glyphs, operator.index(seed), 0
        self.report = FilterReport(source=f"emoji ({len(glyphs)} glyphs of {glyphs.names_read} CLDR names)",
                                   filters=filters or DataFilters())
        size = (glyphs.image_size, glyphs.image_size)
        self.members: list[int] = []
        self.kept_captions: list[tuple[str, ...]] = []
        for i, emoji in enumerate(glyphs.emojis):
            screened = screen(self.report, emoji.captions(), lambda: size)
            if screened is not None:
                self.members.append(i)
                self.kept_captions.append(screened[1])

    def __len__(self) -> int:
        return len(self.members)

    def set_epoch(self, epoch: int) -> None:
        """Draw captions for ``epoch`` (the images do not change)."""
        self.epoch = operator.index(epoch)

    def emoji(self, i: int) -> Emoji:
        """The CLDR entry of item ``i``."""
        return self.glyphs.emojis[self.members[i]]

    def captions(self, i: int) -> tuple[str, ...]:
        """Every kept caption of item ``i``."""
        return self.kept_captions[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for the {len(self)} emoji glyphs")
        i %= len(self)
        pixels = torch.from_numpy(np.array(self.glyphs.images[self.members[i]]))  # a copy: the map is read-only
        caption = drawn_caption(self.kept_captions[i], self.seed, self.epoch, self.emoji(i).name)
        return pixels.permute(2, 0, 1).float().div_(255), caption


class EmojiSplits(NamedTuple):
    """The emoji data of a config: ``dataset`` (every glyph) and its :data:`SPLITS` as ``Subset``s."""

    dataset: EmojiDataset
    train: Subset
    val: Subset
    holdout: Subset


def emoji_splits(config: Config, cache: str | os.PathLike | None = None) -> EmojiSplits:
    """The emoji data as ``config`` sets it up: glyphs at ``config.image_size`` from
    ``data.emoji_font`` and ``data.emoji_cldr`` (cached in ``cache``, default :func:`cache_dir`),
    split by ``data.emoji_holdout``, ``data.val_size`` and ``train.seed`` (:func:`split_indices`)."""
    if config.data.dataset != "emoji":
        raise ValueError(f"config.data.dataset is {config.data.dataset!r}, not 'emoji'")
    glyphs = EmojiGlyphs.load(config.image_size, config.data.emoji_font, config.data.emoji_cldr, cache)
    dataset = EmojiDataset(glyphs, seed=config.train.seed)
    names = [dataset.emoji(i).name for i in range(len(dataset))]
    splits = split_indices(names, config.data.emoji_holdout, config.data.val_size, config.train.seed)
    return EmojiSplits(dataset, *(Subset(dataset, splits[s]) for s in SPLITS))

