"""Composing panels into one PNG: a numpy canvas (so every point's pixel is known exactly) with
titles and a legend drawn over it by Pillow (matplotlib's image dependency) in matplotlib's own
DejaVu Sans font: no figure, no pyplot state, no display, a few milliseconds per image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from m2s.io_utils import atomic_path

MARGIN = 8
TITLE_PX = 20
LEGEND_ROW_PX = 18
LEGEND_ITEM_PX = 130
SWATCH_PX = 12
FONT_PX = 12
TEXT_RGB = (0, 0, 0)
PNG_COMPRESS_LEVEL = 2  # mostly flat images: fast, and within a few % of the smallest file


@dataclass(frozen=True)
class Panel:
    title: str
    image: np.ndarray  # uint8 (H, W, 3)


@dataclass(frozen=True)
class PanelBox:
    """Where a panel's image lies in the PNG: pixel (row, col) of the panel is (top + row, left + col)."""

    title: str
    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class LegendItem:
    label: str
    rgb: tuple[int, int, int]


def layout(
    grid: Sequence[Sequence[Panel | None]], legend: list[LegendItem], *, min_width: int = 0
) -> tuple[np.ndarray, list[PanelBox], list[tuple[int, int, str]]]:
    """Place the panels row by row (each grid row as tall as its tallest panel, columns as wide as
    their widest panel) above a legend; returns the canvas, the panel boxes and the texts to draw
    as (row, col, text), text tops at `row`."""
    n_cols = max(len(r) for r in grid)
    col_w = [
        max((panel.image.shape[1] for r in grid if c < len(r) and (panel := r[c]) is not None), default=0)
        for c in range(n_cols)
    ]
    row_h = [max((p.image.shape[0] for p in r if p is not None), default=0) for r in grid]
    width = max(MARGIN + sum(w + MARGIN for w in col_w), min_width)
    per_row = max(1, (width - MARGIN) // LEGEND_ITEM_PX)
    legend_rows = -(-len(legend) // per_row) if legend else 0
    height = (
        MARGIN + sum(TITLE_PX + h + MARGIN for h in row_h) + legend_rows * LEGEND_ROW_PX + (MARGIN if legend else 0)
    )
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    boxes: list[PanelBox] = []
    texts: list[tuple[int, int, str]] = []
    top = MARGIN
    for r, h in zip(grid, row_h, strict=True):
        left = MARGIN
        for c, w in enumerate(col_w):
            p = r[c] if c < len(r) else None
            if p is not None:
                ph, pw = p.image.shape[:2]
                canvas[top + TITLE_PX : top + TITLE_PX + ph, left : left + pw] = p.image
                boxes.append(PanelBox(p.title, top + TITLE_PX, left, ph, pw))
                texts.append((top + 3, left, p.title))
            left += w + MARGIN
        top += TITLE_PX + h + MARGIN
    for i, item in enumerate(legend):
        row, col = top + (i // per_row) * LEGEND_ROW_PX, MARGIN + (i % per_row) * LEGEND_ITEM_PX
        canvas[row + 2 : row + 2 + SWATCH_PX, col : col + SWATCH_PX] = item.rgb
        canvas[row + 2 : row + 2 + SWATCH_PX, col : col + SWATCH_PX][[0, -1], :] = 60  # a thin frame: white and
        canvas[row + 2 : row + 2 + SWATCH_PX, col : col + SWATCH_PX][:, [0, -1]] = 60  # black swatches stay visible
        texts.append((row + 1, col + SWATCH_PX + 4, item.label))
    return canvas, boxes, texts


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """matplotlib's bundled DejaVu Sans (always installed with it); Pillow's own font otherwise."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), FONT_PX)
    except OSError:
        return ImageFont.load_default()


def text_width(text: str) -> int:
    """Width in pixels of `text` as :func:`draw_texts` draws it."""
    return int(np.ceil(_font().getlength(text)))


def draw_texts(canvas: np.ndarray, texts: list[tuple[int, int, str]]) -> np.ndarray:
    """A copy of the canvas with the texts drawn over it (tops at `row`, left ends at `col`); the
    panels' pixels are never resampled, so every point's pixel stays where the layout put it."""
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = _font()
    for row, col, text in texts:
        draw.text((col, row), text, fill=TEXT_RGB, font=font)
    return np.asarray(image)


def save_png(path: Path, canvas: np.ndarray, texts: list[tuple[int, int, str]]) -> None:
    """Write the canvas with its texts as an RGB PNG, atomically."""
    image = draw_texts(canvas, texts)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
