"""The views of one frame, each written as one PNG:

- ``bev``: bird's-eye view; ground truth, then per model its prediction and its error view;
- ``range``: the same panels as range images (spherical projection), stacked;
- ``fused`` (fused cache): the block in bird's-eye view, the scan's own rows grey and the fused
  rows coloured by source frame (offset to the target), fused rows drawn on top;
- ``crops``: one row per hard-class instance of the scan, zoomed around it: the fused rows by
  source frame (with a cache), the ground truth and every model's prediction.

Class colours are the official ones (:mod:`m2s.show.colors`). Error views: wrong points red and
drawn on top, right points light grey, points whose ground truth is "unlabeled" light blue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2s.show import colors as C
from m2s.show.canvas import MARGIN, LegendItem, Panel, PanelBox, layout, save_png, text_width
from m2s.show.colors import ClassColors, source_frame_colors
from m2s.show.config import ShowConfig, ViewName
from m2s.show.frames import FrameData
from m2s.show.projection import Raster, bev_pixels, range_pixels, zbuffer


@dataclass(frozen=True)
class RenderedImage:
    view: ViewName
    path: Path
    width: int
    height: int
    panels: tuple[PanelBox, ...]


def image_name(sequence: str, frame: int, view: str) -> str:
    return f"{sequence}_{frame:06d}_{view}.png"


# ---- point colourings ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """Colour of each point of a panel; points in `top` are drawn over all the others."""

    title: str
    rgb: np.ndarray  # uint8 (N,3)
    top: np.ndarray | None = None  # bool (N,): wrong points of an error view, fused rows of a block


class Painter:
    """One projection of N points (pixel and drawing priority of each, some outside the image),
    painted with any number of layers: the z-buffer of all points is computed once and shared by
    every layer without `top` points."""

    def __init__(self, shape: tuple[int, int], row: np.ndarray, col: np.ndarray, priority: np.ndarray,
                 inside: np.ndarray, background: np.ndarray, point_px: int = 1) -> None:  # fmt: skip
        self.shape, self.background, self.point_px = shape, background, point_px
        self.idx = np.flatnonzero(inside)
        self.row, self.col, self.priority = row[self.idx], col[self.idx], priority[self.idx]
        self._all: Raster | None = None

    def _raster(self, subset: np.ndarray | None) -> Raster:
        if subset is None:
            if self._all is None:
                self._all = zbuffer(self.shape, self.row, self.col, self.priority, point_px=self.point_px)
            return self._all
        return zbuffer(self.shape, self.row[subset], self.col[subset], self.priority[subset], point_px=self.point_px)

    def draw(self, layer: Layer) -> np.ndarray:
        rgb = layer.rgb[self.idx]
        top = None if layer.top is None else layer.top[self.idx]
        if top is None or not top.any():
            return self._raster(None).paint(rgb, self.background)
        below, above = np.flatnonzero(~top), np.flatnonzero(top)
        image = self._raster(below).paint(rgb[below], self.background)
        return self._raster(above).paint(rgb[above], onto=image)


def class_layers(frame: FrameData, colors: ClassColors) -> list[list[Layer | None]]:
    """Panel rows: [ground truth, model 1, error 1], [-, model 2, error 2], ... (or the models alone
    without labels, or the ground truth alone without models)."""
    gt = frame.gt_train
    gt_layer = Layer("ground truth", colors.of_train(gt)) if gt is not None else None
    rows: list[list[Layer | None]] = []
    for i, p in enumerate(frame.predictions):
        pred_layer = Layer(f"{p.name} ({p.input_kind} input)", colors.of_train(p.pred))
        if gt is None:
            rows.append([pred_layer])
            continue
        ignored = gt == 0
        wrong = (p.pred != gt) & ~ignored
        rgb = np.where(wrong[:, None], C.WRONG, np.where(ignored[:, None], C.IGNORED, C.CORRECT)).astype(np.uint8)
        scored = max(int((~ignored).sum()), 1)
        err = Layer(f"{p.name} errors: {int(wrong.sum())} of {scored} ({100 * wrong.sum() / scored:.1f} %)", rgb, wrong)
        rows.append([gt_layer if i == 0 else None, pred_layer, err])
    if not rows:
        if gt_layer is not None:
            rows.append([gt_layer])
        else:  # nothing to colour by class: remission in grey
            rem = np.clip(frame.points[:, 3], 0, 1)
            grey = (40 + 180 * rem).astype(np.uint8)
            rows.append([Layer("remission (no labels, no model)", np.stack([grey] * 3, axis=1))])
    return rows


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    return int(c[0]), int(c[1]), int(c[2])


def class_legend(frame: FrameData, colors: ClassColors, *, errors: bool = True) -> list[LegendItem]:
    present = [] if frame.gt_train is None else [frame.gt_train]
    present += [p.pred for p in frame.predictions]
    if not present:
        return []
    ids = np.unique(np.concatenate(present))
    items = [LegendItem(colors.names[i], _rgb(colors.train_rgb[i])) for i in ids]
    if errors and frame.predictions and frame.gt_train is not None:
        items += [LegendItem("error: wrong", tuple(C.WRONG)), LegendItem("error: right", tuple(C.CORRECT)),
                  LegendItem("error: unlabeled GT", tuple(C.IGNORED))]  # fmt: skip
    return items


def _offsets(frame: FrameData) -> np.ndarray:
    assert frame.fused_source is not None
    return frame.frame - frame.fused_source.astype(np.int64)  # 1 = previous scan, -1 = next


def source_legend(frame: FrameData) -> list[LegendItem]:
    items = [LegendItem(f"scan {frame.frame} (own rows)", tuple(C.TARGET_ROWS))]
    if frame.fused_source is None or frame.fused_source.size == 0:
        return items
    offs = np.unique(_offsets(frame))
    rgb = source_frame_colors(offs)
    return items + [
        LegendItem(f"fused from {frame.frame - o} ({-o:+d})", _rgb(c)) for o, c in zip(offs, rgb, strict=True)
    ]


# ---- views --------------------------------------------------------------------------------------
def bev_painter(xyz: np.ndarray, extent: float, res: float, point_px: int) -> Painter:
    """Bird's-eye view of the points: the highest point of each pixel on top."""
    row, col, inside = bev_pixels(xyz, extent, res)
    size = int(round(2 * extent / res))
    return Painter((size, size), row, col, np.asarray(xyz[:, 2], dtype=np.float64), inside, C.BACKGROUND, point_px)


def _title(frame: FrameData, what: str) -> str:
    return f"sequence {frame.sequence} frame {frame.frame} — {what}"


def render_bev(frame: FrameData, cfg: ShowConfig, colors: ClassColors) -> tuple[np.ndarray, list[PanelBox], list]:
    painter = bev_painter(frame.points[:, :3], cfg.extent_m, cfg.resolution_m, cfg.point_px)
    grid = [
        [None if layer is None else Panel(layer.title, painter.draw(layer)) for layer in r]
        for r in class_layers(frame, colors)
    ]
    return _with_header(
        grid,
        class_legend(frame, colors),
        _title(frame, f"bird's-eye view, ±{cfg.extent_m:g} m, {cfg.resolution_m:g} m/px"),
    )


def render_range(frame: FrameData, cfg: ShowConfig, colors: ClassColors) -> tuple[np.ndarray, list[PanelBox], list]:
    g = cfg.range
    row, col, inside, depth = range_pixels(frame.points[:, :3], g)
    painter = Painter((g.height, g.width), row, col, -depth, inside, C.EMPTY_RANGE)  # the nearest point wins
    k = cfg.range_row_px
    layers = [layer for r in class_layers(frame, colors) for layer in r if layer is not None]
    grid: list[list[Panel | None]] = [
        [Panel(layer.title, np.repeat(painter.draw(layer), k, axis=0))] for layer in layers
    ]
    what = f"range image {g.height}×{g.width}, {g.fov_up_deg:+g}° to {g.fov_down_deg:+g}°"
    return _with_header(grid, class_legend(frame, colors), _title(frame, what))


def fused_layer(frame: FrameData) -> tuple[np.ndarray, Layer]:
    """All rows of the block (own rows first) with own rows grey and fused rows, on top, by source frame."""
    assert frame.fused_points is not None
    xyz = np.concatenate([frame.points[:, :3], frame.fused_points[:, :3]])
    n, f = frame.points.shape[0], frame.fused_points.shape[0]
    rgb = np.concatenate([np.broadcast_to(C.TARGET_ROWS, (n, 3)), source_frame_colors(_offsets(frame))]).astype(
        np.uint8
    )
    top = np.concatenate([np.zeros(n, dtype=bool), np.ones(f, dtype=bool)])
    return xyz, Layer(f"{n} own rows (grey) + {f} fused rows", rgb, top)


def render_fused(frame: FrameData, cfg: ShowConfig, colors: ClassColors) -> tuple[np.ndarray, list[PanelBox], list]:
    xyz, layer = fused_layer(frame)
    grid: list[list[Panel | None]] = [
        [Panel(layer.title, bev_painter(xyz, cfg.extent_m, cfg.resolution_m, cfg.point_px).draw(layer))]
    ]
    return _with_header(grid, source_legend(frame), _title(frame, "fused block, bird's-eye view"))


def hard_instances(frame: FrameData, min_points: int) -> list[int]:
    """Instance ids of the scan's hard-class points with at least `min_points` own points, largest first."""
    if frame.instance is None or frame.hard is None:
        return []
    ids, counts = np.unique(frame.instance[frame.hard & (frame.instance > 0)], return_counts=True)
    keep = counts >= min_points
    order = np.argsort(-counts[keep], kind="stable")
    return [int(i) for i in ids[keep][order]]


def _near(x: np.ndarray, y: np.ndarray, centre: np.ndarray, half: float) -> np.ndarray:
    """Rows inside the crop square (a little slack for the point squares); `x`, `y` contiguous."""
    h = half * 1.02
    return np.flatnonzero((np.abs(x - centre[0]) <= h) & (np.abs(y - centre[1]) <= h))


def _subset(layer: Layer, rows: np.ndarray) -> Layer:
    return Layer(layer.title, layer.rgb[rows], None if layer.top is None else layer.top[rows])


def render_crops(
    frame: FrameData, cfg: ShowConfig, colors: ClassColors
) -> tuple[np.ndarray, list[PanelBox], list] | None:
    instances = hard_instances(frame, cfg.crop_min_points)[: cfg.max_crops]
    if not instances:
        return None
    assert frame.instance is not None and frame.gt_train is not None and frame.hard is not None
    own_xyz = frame.points[:, :3]
    layers = [Layer("ground truth", colors.of_train(frame.gt_train))]
    layers += [Layer(p.name, colors.of_train(p.pred)) for p in frame.predictions]
    fused = fused_layer(frame) if frame.fused_points is not None else None
    own_x, own_y = np.ascontiguousarray(own_xyz[:, 0]), np.ascontiguousarray(own_xyz[:, 1])
    if fused is not None:
        fused_x, fused_y = np.ascontiguousarray(fused[0][:, 0]), np.ascontiguousarray(fused[0][:, 1])
    grid: list[list[Panel | None]] = []
    for inst in instances:
        mine = (frame.instance == inst) & frame.hard
        pts = own_xyz[mine]
        n_fused = 0
        if fused is not None and frame.fused_instance is not None and frame.fused_points is not None:
            fmask = frame.fused_instance == inst
            n_fused = int(fmask.sum())
            pts = np.concatenate([pts, frame.fused_points[fmask, :3]])
        centre = np.concatenate([own_xyz[mine, :2].mean(axis=0), [0.0]])
        half = max(2.0, float(np.abs(pts[:, :2] - centre[:2]).max()) + cfg.crop_margin_m)
        res = 2 * half / cfg.crop_px
        cls = colors.names[int(np.bincount(frame.gt_train[mine]).argmax())]
        head = f"{cls} #{inst}: {int(mine.sum())}" + (f" + {n_fused} fused" if fused is not None else " pts")
        row: list[Panel | None] = []
        if fused is not None:
            fx, fl = fused
            near = _near(fused_x, fused_y, centre, half)
            row.append(Panel(head, bev_painter(fx[near] - centre, half, res, 2).draw(_subset(fl, near))))
        near = _near(own_x, own_y, centre, half)
        painter = bev_painter(own_xyz[near] - centre, half, res, 2)  # shared by the ground truth and every model
        for j, layer in enumerate(layers):
            title = layer.title if (j or fused is not None) else f"{head} — {layer.title}"
            row.append(Panel(title, painter.draw(_subset(layer, near))))
        grid.append(row)
    legend = class_legend(frame, colors, errors=False)
    if fused is not None:
        legend += source_legend(frame)
    return _with_header(grid, legend, _title(frame, f"hard-class instances ({len(instances)}), bird's-eye crops"))


def _with_header(
    grid: Sequence[Sequence[Panel | None]], legend: list[LegendItem], header: str
) -> tuple[np.ndarray, list[PanelBox], list]:
    # The header is one line of text above the panels: the canvas is at least as wide as it.
    min_width = 2 * MARGIN + text_width(header)
    canvas, boxes, texts = layout([[Panel(header, np.zeros((0, 1, 3), np.uint8))], *grid], legend, min_width=min_width)
    return canvas, boxes[1:], texts


RENDERERS = {"bev": render_bev, "range": render_range, "fused": render_fused, "crops": render_crops}


def render_frame(frame: FrameData, cfg: ShowConfig, colors: ClassColors, out_dir: str | Path) -> list[RenderedImage]:
    """Write one PNG per requested view that applies to this frame (``fused`` needs fused rows,
    ``crops`` ground truth with hard-class instances); returns what was written."""
    out = Path(out_dir)
    written = []
    for view in cfg.views:
        if view == "fused" and frame.fused_points is None:
            continue
        result = RENDERERS[view](frame, cfg, colors)
        if result is None:
            continue
        canvas, boxes, texts = result
        path = out / image_name(frame.sequence, frame.frame, view)
        save_png(path, canvas, texts)
        written.append(RenderedImage(view, path, canvas.shape[1], canvas.shape[0], tuple(boxes)))
    return written
