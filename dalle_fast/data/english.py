"""A small, dependency-free guess whether a caption is English (the paper used cld3; this is a
self-written stand-in good enough to drop obviously foreign captions from web-scraped data).

Two tests, in order:

1. Script: at least ``MIN_ASCII_SHARE`` of the letters must be ASCII letters. This rejects
   captions in other scripts (Chinese, Japanese, Cyrillic, Arabic, Greek, ...) and Latin text
   heavy in diacritics, while keeping English with the odd "café" or a short foreign name.
2. Function words: the caption's words are looked up in a list of common English words and in a
   list of common French, German, Spanish, Italian, Portuguese and Dutch function words (minus
   any that are also English, such as "a" or "in"). The caption is English unless the foreign
   hits outnumber the English ones. A caption with neither ("red sports car") is English.

Known misses: a caption made only of a foreign place name ("downtown Los Angeles") is rejected,
and foreign text without function words ("chat noir") is kept.
"""
from __future__ import annotations

import re

MIN_ASCII_SHARE = 0.75

ENGLISH_WORDS = frozenset("""
a about above across after against along among an and another any are around as at away back be
been before behind being below beneath beside besides between beyond both but by can close could
did do does down during each either every few for from front has have having he her here him his
how i if in inside into is it its itself just large last left like little many me more most much
my near nearby neither next no nor not of off on one onto or other our out outside over own right
same several she should side small so some something such than that the their them then there
these they this those through to together too top toward towards two under underneath up upon us
very was we were what when where which while who whose why will with within without would you
your
""".split())

FOREIGN_WORDS = frozenset("""
le la les un une des du au aux et est sont dans sur avec pour par ce cette ces qui que il elle
ils elles ne pas der die das ein eine einen einem einer und ist sind mit auf im dem den zu von
für nicht sich vor unter neben bei zwei el los las una y en con del por para es sobre al muy
il lo gli di della delle nella nel sul sulla per che uno o os um uma com na em do da das dos
ao pelo pela de het een van op met zijn voor bij naast
""".split()) - ENGLISH_WORDS

_WORD = re.compile(r"[^\W\d_]+")  # runs of letters


def looks_english(text: str) -> bool:
    """True if ``text`` passes the script test and English function words are not outnumbered
    by foreign ones (see the module docstring). Text without letters is not English."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    ascii_letters = sum(c.isascii() for c in letters)
    if ascii_letters < MIN_ASCII_SHARE * len(letters):
        return False
    words = _WORD.findall(text.lower())
    english = sum(w in ENGLISH_WORDS for w in words)
    foreign = sum(w in FOREIGN_WORDS for w in words)
    return foreign <= english
