"""Captioned image grids: where people would rather look than read."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont


def image_grid(images: list[Image.Image], captions: list[str] | None = None, cols: int | None = None, cell: int = 128) -> Image.Image:
    """Images in rows of `cols`, each upscaled (nearest) to `cell` px with its caption below."""
    if not images:
        raise ValueError("no images for the grid")
    cols = cols or min(len(images), 8)
    rows = (len(images) + cols - 1) // cols
    font = ImageFont.load_default()
    text_h = 34 if captions else 0
    grid = Image.new("RGB", (cols * (cell + 4) + 4, rows * (cell + text_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = 4 + c * (cell + 4), 4 + r * (cell + text_h + 4)
        grid.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], width=max(8, cell // 6))[:3]
            draw.multiline_text((x, y + cell + 1), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=0)
    return grid
