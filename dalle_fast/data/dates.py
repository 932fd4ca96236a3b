"""Captions that are mostly a date: the paper drops captions that "consist primarily of
boilerplate phrases such as 'photographed on <date>'".

A caption is date-like when it holds at least one date or time stamp and, once the stamps and
boilerplate words ("photographed", "taken", "on", "img", ...) are removed, fewer than
``MIN_CONTENT_WORDS`` words are left. Stamps recognised (case-insensitive):

- numeric dates: ``2019-05-03``, ``2019/5/3``, ``03/05/2019``, ``3.5.19``, ``2019-05-03T12:00``
- times: ``12:00``, ``12:00:59``, ``9:30 pm``
- dates with a month name: ``May 3, 2019``, ``3rd of May 2019``, ``Sept. 2019``, ``May 3``
- weekdays: ``Monday`` ... ``Sunday``
- years 1800-2099 (``1999``, ``1990s``) and compact stamps: ``20190503``, ``20190503_123456``
- camera file names: ``IMG_20190503``, ``DSC_0042``, ``PXL_20210101_101010123.jpg``

So "photographed on May 3, 2019" and "IMG_20190503 taken 03/05/2019" are date-like, while
"summer vacation 2019" and "a birthday party on 3 May 2019" are not.
"""
from __future__ import annotations

import re

MIN_CONTENT_WORDS = 2

_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]|20)\d{2}"
_TIME = r"\d{1,2}:\d{2}(?::\d{2})?(?:\s*[ap]\.?m\.?)?"
_STAMPS = [
    rf"\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}(?:[t\s]+{_TIME})?",  # 2019-05-03, 2019-05-03T12:00
    r"\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}",  # 03/05/2019, 3.5.19
    _TIME,  # 12:00, 9:30 pm
    rf"{_MONTH}\s+{_DAY}(?:,?\s+{_YEAR})?",  # May 3, 2019; May 3
    rf"{_DAY}\s+(?:of\s+)?{_MONTH}(?:,?\s+{_YEAR})?",  # 3rd of May 2019
    rf"{_MONTH},?\s+{_YEAR}",  # Sept. 2019
    r"(?:mon|tues|wednes|thurs|fri|satur|sun)day",
    r"(?:img|dsc[nf]?|pxl|vid|mvimg|pano|screenshot)[_-]?\d[\d_-]*(?:\.[a-z]{3,4})?",  # camera files
    r"\d{8}(?:[_t-]?\d{4,9})?",  # 20190503, 20190503_123456
    rf"{_YEAR}s?",  # 2019, 1990s
]
_STAMP = re.compile(r"(?<!\w)(?:" + "|".join(_STAMPS) + r")(?!\w)", re.IGNORECASE)

BOILERPLATE = frozenset("""
a an the on at in of from by during around photo photos photograph photographed photography picture
pictures pic pics image images img shot taken captured uploaded posted created modified edited
date dated time day copy final jpg jpeg png
""".split())

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits


def is_date_like(text: str) -> bool:
    """True if ``text`` holds a date or time stamp and little else (see the module docstring)."""
    rest, stamps = _STAMP.subn(" ", text)
    if not stamps:
        return False
    content = [w for w in _WORD.findall(rest.lower()) if w not in BOILERPLATE]
    return len(content) < MIN_CONTENT_WORDS
