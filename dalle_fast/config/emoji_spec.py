"""What the config knows of the built-in ``emoji`` data (:mod:`dalle_fast.data.emoji`): where Debian
installs its two files, the default held-out names, and the form a held-out name must have. Whether
a name exists, and whether its parts are seen in training, needs the CLDR files: the data checks
that when it loads (``held_out``). This module imports nothing.

A held-out name is a CLDR English name (``tts``) of one of two forms, each a composition whose parts
the train split shows elsewhere:

- ``"<base>: <tone> skin tone"``, one skin tone of a person or gesture: the base is seen in its
  other tones (or toneless), the tone on other bases;
- ``"<woman|man|person> <role>"``, one gender of a role: the role is seen with another gender (or
  genderless), the gender in other roles. Its skin-tone variants (``"man cook: dark skin tone"``)
  are held out with it.
"""
from __future__ import annotations

from collections.abc import Iterable

FONT_PACKAGE, CLDR_PACKAGE = "fonts-noto-color-emoji", "unicode-cldr-core"  # the Debian packages
DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"  # of fonts-noto-color-emoji
DEFAULT_CLDR = "/usr/share/unicode/cldr/common"  # of unicode-cldr-core: annotations/en.xml, annotationsDerived/en.xml

SKIN_TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
GENDERS = ("woman", "man", "person")

# The zero-shot probes (drawn once, seeded, from the names of CLDR 41 that Noto Color Emoji 2.042
# draws): 32 skin-tone variants whose base is seen in its other tones, 32 gendered roles whose
# other gender is seen.
DEFAULT_HOLDOUT: tuple[str, ...] = (
    "backhand index pointing up: medium-dark skin tone", "breast-feeding: light skin tone",
    "couple with heart: medium-light skin tone", "ear with hearing aid: medium-light skin tone",
    "ear: medium skin tone", "elf: dark skin tone", "guard: medium-dark skin tone",
    "hand with index finger and thumb crossed: medium-light skin tone", "heart hands: dark skin tone",
    "kiss: light skin tone", "merman: light skin tone", "ninja: dark skin tone", "old woman: light skin tone",
    "oncoming fist: dark skin tone", "people holding hands: medium-dark skin tone",
    "person climbing: light skin tone", "person facepalming: medium-dark skin tone",
    "person feeding baby: dark skin tone", "person gesturing NO: light skin tone",
    "person getting massage: medium-light skin tone", "person in suit levitating: medium-dark skin tone",
    "person playing water polo: dark skin tone", "person shrugging: dark skin tone",
    "person taking bath: medium-dark skin tone", "person: medium skin tone", "pinched fingers: medium skin tone",
    "prince: light skin tone", "raised back of hand: light skin tone", "rightwards hand: dark skin tone",
    "scientist: medium skin tone", "superhero: medium-light skin tone", "teacher: medium skin tone",
    "man biking", "man cartwheeling", "man cook", "man dancing", "man fairy", "man firefighter",
    "man in lotus position", "man in tuxedo", "man police officer", "man raising hand", "man rowing boat",
    "man walking", "man wearing turban", "man zombie", "woman bowing", "woman farmer", "woman genie",
    "woman golfing", "woman health worker", "woman in manual wheelchair", "woman in steamy room",
    "woman juggling", "woman lifting weights", "woman mage", "woman mountain biking", "woman playing handball",
    "woman pouting", "woman supervillain", "woman surfing", "woman swimming", "woman technologist",
    "woman vampire",
)


def holdout_parts(name: str) -> tuple[str, str, str]:
    """``(kind, whole, part)`` of a held-out name: ``("tone", base, tone)`` for ``"<base>: <tone>
    skin tone"`` (tone e.g. ``"medium skin tone"``), ``("gender", role, gender)`` for ``"<gender>
    <role>"``. ``ValueError`` for a name of neither form."""
    base, colon, tone = name.partition(": ")
    if colon:
        if base and tone.removesuffix(" skin tone") in SKIN_TONES:
            return "tone", base, tone
    else:
        gender, _, role = name.partition(" ")
        if gender in GENDERS and role:
            return "gender", role, gender
    tones = " | ".join(SKIN_TONES)
    raise ValueError(f"{name!r} is neither '<name>: <{tones}> skin tone' nor '<{'|'.join(GENDERS)}> <role>'")


def check_holdout(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple if each has a held-out form (:func:`holdout_parts`) and none repeats;
    else ``ValueError`` naming the entry."""
    names = tuple(names)
    for name in names:
        holdout_parts(name)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{repeated[0]!r} is listed more than once")
    return names
