"""Draw the four DALL-E attention masks as small PNG pictures for docs/design.md.

    python docs/make_mask_pictures.py

writes ``docs/masks/{full,row,column,conv}.png``. Each picture is ``dalle_mask(kind, ...).dense()``
at a readable size (4 text tokens, a 4x4 image-token grid, a 3x3 conv neighbourhood): one square
per (query, key) pair, query i down the rows and key j along the columns, dark where query i may
attend key j. A red line separates the text positions from the image positions; thin grey lines
mark every image row of W keys.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

import dalle_kernels as dk

KINDS = ("full", "row", "column", "conv")
TEXT_LEN, IMAGE_SIZE, CONV_KERNEL = 4, 4, 3
OUT_DIR = Path(__file__).resolve().parent / "masks"

CELL = 20  # px per (query, key) cell
FONT_SIZE = 12
LEFT, TOP, RIGHT, BOTTOM = 44, 62, 16, 48  # margins around the grid: labels, title, legend
ALLOWED, MASKED = (33, 84, 160), (232, 234, 238)
BACKGROUND, INK, CELL_LINE = (255, 255, 255), (20, 20, 20), (255, 255, 255)
ROW_LINE, BOUNDARY = (150, 150, 150), (210, 40, 40)  # image-row separators; the text | image boundary


def position_label(index: int) -> str:
    """Axis label of sequence position ``index``: ``t0``.. for text, then ``0``.. for image tokens (raster order)."""
    return f"t{index}" if index < TEXT_LEN else str(index - TEXT_LEN)


def draw_mask(kind: str) -> Image.Image:
    """The picture of mask ``kind`` at the sizes of this module (see the module docstring)."""
    mask = dk.dalle_mask(kind, text_len=TEXT_LEN, image_size=IMAGE_SIZE, conv_kernel=CONV_KERNEL)
    dense: torch.Tensor = mask.dense()
    seq = mask.seq_len
    side = seq * CELL
    image = Image.new("RGB", (LEFT + side + RIGHT, TOP + side + BOTTOM), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=FONT_SIZE)

    for i in range(seq):
        for j in range(seq):
            x, y = LEFT + j * CELL, TOP + i * CELL
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=ALLOWED if dense[i, j] else MASKED,
                           outline=CELL_LINE)
    for k in range(TEXT_LEN + IMAGE_SIZE, seq, IMAGE_SIZE):  # one image row of W positions ends here
        offset = k * CELL
        draw.line((LEFT + offset, TOP, LEFT + offset, TOP + side), fill=ROW_LINE, width=1)
        draw.line((LEFT, TOP + offset, LEFT + side, TOP + offset), fill=ROW_LINE, width=1)
    boundary = TEXT_LEN * CELL
    draw.line((LEFT + boundary, TOP, LEFT + boundary, TOP + side), fill=BOUNDARY, width=2)
    draw.line((LEFT, TOP + boundary, LEFT + side, TOP + boundary), fill=BOUNDARY, width=2)

    for k in range(seq):
        label = position_label(k)
        centre = k * CELL + CELL // 2
        draw.text((LEFT - 4, TOP + centre), label, fill=INK, font=font, anchor="rm")
        draw.text((LEFT + centre, TOP - 4), label, fill=INK, font=font, anchor="ms")

    extra = f", conv_kernel={CONV_KERNEL}" if kind == "conv" else ""
    title = f'dalle_mask("{kind}", text_len={TEXT_LEN}, image_size={IMAGE_SIZE}{extra})'
    draw.text((LEFT, 8), title, fill=INK, font=font)
    axes = f"rows: query i, columns: key j (text t0-t{TEXT_LEN - 1}, then image tokens 0-{IMAGE_SIZE**2 - 1})"
    draw.text((LEFT, 26), axes, fill=INK, font=font)

    legend_y = TOP + side + 14
    for x, color, text in ((LEFT, ALLOWED, "may attend"), (LEFT + 130, MASKED, "masked")):
        draw.rectangle((x, legend_y, x + CELL - 1, legend_y + CELL - 1), fill=color, outline=ROW_LINE)
        draw.text((x + CELL + 6, legend_y + CELL // 2), text, fill=INK, font=font, anchor="lm")
    draw.line((LEFT + 240, legend_y + CELL // 2, LEFT + 262, legend_y + CELL // 2), fill=BOUNDARY, width=2)
    draw.text((LEFT + 268, legend_y + CELL // 2), "text | image", fill=INK, font=font, anchor="lm")
    return image


def main() -> None:
    """Write one PNG per mask kind into ``docs/masks/``."""
    OUT_DIR.mkdir(exist_ok=True)
    for kind in KINDS:
        path = OUT_DIR / f"{kind}.png"
        draw_mask(kind).save(path, optimize=True)
        print(path)


if __name__ == "__main__":
    main()
