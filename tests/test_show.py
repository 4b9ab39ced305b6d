"""`m2s show`: every view rendered from the tiny synthetic set, image sizes, official colours."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from m2s.labels import load_label_manifest
from m2s.show import RangeGeometry, ShowConfig, bev_pixels, class_colors, load_frames, range_pixels, render_frame
from m2s.show import colors as C
from m2s.show.canvas import MARGIN
from m2s.show.frames import sensor_geometry
from m2s.show.projection import rasterize, zbuffer

ROOT = Path(__file__).resolve().parents[1]
LABELS = load_label_manifest()
# A few official SemanticKITTI colours (semantic-kitti-api config, BGR), raw id -> BGR.
OFFICIAL_BGR = {10: (245, 150, 100), 40: (255, 0, 255), 50: (0, 200, 255), 70: (0, 175, 0), 18: (180, 30, 80)}
CAR = LABELS.train_names.index("car")


class ConstantPredictor:
    """Predicts one class everywhere: its panel and its error view are known exactly."""

    name = "const-car"
    input_kind = "single"

    def __init__(self) -> None:
        self.label_digest = LABELS.digest()

    def predict(self, points: list[np.ndarray]) -> list[np.ndarray]:
        return [np.full(p.shape[0], CAR, dtype=np.int64) for p in points]


def rgb_of_raw(raw: int) -> tuple[int, int, int]:
    b, g, r = OFFICIAL_BGR[raw]
    return (r, g, b)


def lonely(row: np.ndarray, col: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Indices of points alone in their pixel (their colour cannot be hidden by another point)."""
    flat = np.where(inside, row * 100_000 + col, -1)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    return np.flatnonzero(inside & (counts[inverse] == 1))


def pixel(image: np.ndarray, box, row: int, col: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in image[box.top + row, box.left + col])


@pytest.fixture(scope="module")
def rendered(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("show")
    cfg = ShowConfig(views=("bev", "range", "fused", "crops"), extent_m=20.0, resolution_m=0.25,
                     range=sensor_geometry(tiny_data.root, None), range_row_px=2)  # fmt: skip
    frame = next(load_frames(LABELS, "08", [4], data=tiny_data.root, cache=tiny_data.val_cache, predictors=[ConstantPredictor()]))
    images = {r.view: r for r in render_frame(frame, cfg, class_colors(LABELS), out)}
    return frame, cfg, images


def test_colours_are_the_official_ones() -> None:
    official = yaml.safe_load((ROOT / "data_manifests" / "semantic-kitti.yaml").read_text())["color_map"]
    colors = class_colors(LABELS)
    for raw, bgr in OFFICIAL_BGR.items():
        assert tuple(official[raw]) == bgr
        train = int(LABELS.to_train(np.array([raw], dtype=np.uint32))[0])
        assert tuple(int(v) for v in colors.train_rgb[train]) == rgb_of_raw(raw)


def test_every_view_is_written_with_its_size(rendered) -> None:
    frame, cfg, images = rendered
    assert set(images) == {"bev", "range", "fused", "crops"}
    for r in images.values():
        assert r.path.name == f"08_000004_{r.view}.png"
        assert Image.open(r.path).size == (r.width, r.height)
    side = cfg.bev_size
    assert side == 160
    bev = images["bev"]
    assert [b.title.split(" ")[0] for b in bev.panels] == ["ground", "const-car", "const-car"]  # GT | prediction | errors
    assert all((b.height, b.width) == (side, side) for b in bev.panels)
    assert bev.width == MARGIN + 3 * (side + MARGIN)
    rng = images["range"]
    g = cfg.range
    assert (g.height, g.width) == (16, 256)  # the synthetic sensor, from the dataset's manifest
    assert len(rng.panels) == 3 and all((b.height, b.width) == (2 * g.height, g.width) for b in rng.panels)
    assert [(b.height, b.width) for b in images["fused"].panels] == [(side, side)]
    crops = images["crops"]
    assert len(crops.panels) % 3 == 0 and len(crops.panels) >= 3  # per instance: fused rows, GT, prediction
    assert all((b.height, b.width) == (cfg.crop_px, cfg.crop_px) for b in crops.panels)


def test_bev_points_have_their_official_colours_and_errors_are_marked(rendered) -> None:
    frame, cfg, images = rendered
    image = np.asarray(Image.open(images["bev"].path).convert("RGB"))
    gt_box, pred_box, err_box = images["bev"].panels
    row, col, inside = bev_pixels(frame.points[:, :3], cfg.extent_m, cfg.resolution_m)
    alone = lonely(row, col, inside)
    raws = LABELS.learning_map_inv
    checked = 0
    for raw in OFFICIAL_BGR:
        train = int(LABELS.to_train(np.array([raw], dtype=np.uint32))[0])
        for i in alone[frame.gt_train[alone] == train][:3]:
            assert raws[train] == raw or train == 0
            assert pixel(image, gt_box, row[i], col[i]) == rgb_of_raw(raws[train])
            checked += 1
    assert checked >= 6
    for i in alone[:20]:
        assert pixel(image, pred_box, row[i], col[i]) == rgb_of_raw(10)  # car everywhere
        gt = frame.gt_train[i]
        want = C.CORRECT if gt == CAR else C.IGNORED if gt == 0 else C.WRONG
        assert pixel(image, err_box, row[i], col[i]) == tuple(int(v) for v in want)
    assert pixel(image, gt_box, 0, 0) == tuple(int(v) for v in C.BACKGROUND) or inside[(row == 0) & (col == 0)].any()


def test_range_view_colours(rendered) -> None:
    frame, cfg, images = rendered
    image = np.asarray(Image.open(images["range"].path).convert("RGB"))
    gt_box = images["range"].panels[0]
    row, col, inside, _ = range_pixels(frame.points[:, :3], cfg.range)
    alone = lonely(row, col, inside)
    assert alone.size > 50
    k = cfg.range_row_px
    colors = class_colors(LABELS)
    for i in alone[:: max(1, alone.size // 25)]:
        want = tuple(int(v) for v in colors.train_rgb[frame.gt_train[i]])
        for r in range(k):  # each beam is k pixel rows
            assert pixel(image, gt_box, k * row[i] + r, col[i]) == want
    empty = np.ones((cfg.range.height, cfg.range.width), dtype=bool)
    empty[row[inside], col[inside]] = False
    r0, c0 = np.argwhere(empty)[0]
    assert pixel(image, gt_box, k * r0, c0) == tuple(int(v) for v in C.EMPTY_RANGE)


def test_fused_view_greys_the_target_and_colours_fused_rows_by_source(rendered) -> None:
    frame, cfg, images = rendered
    assert frame.fused_points is not None and frame.fused_points.shape[0] > 0
    image = np.asarray(Image.open(images["fused"].path).convert("RGB"))
    (box,) = images["fused"].panels
    xyz = np.concatenate([frame.points[:, :3], frame.fused_points[:, :3]])
    row, col, inside = bev_pixels(xyz, cfg.extent_m, cfg.resolution_m)
    n = frame.points.shape[0]
    alone = lonely(row, col, inside)
    own, fused = alone[alone < n], alone[alone >= n]
    assert own.size > 20 and fused.size > 5
    for i in own[:20]:
        assert pixel(image, box, row[i], col[i]) == tuple(int(v) for v in C.TARGET_ROWS)
    offsets = frame.frame - frame.fused_source.astype(np.int64)
    palette = C.source_frame_colors(offsets)
    for i in fused[:20]:
        got = pixel(image, box, row[i], col[i])
        assert got == tuple(int(v) for v in palette[i - n]) and got != tuple(int(v) for v in C.TARGET_ROWS)
    assert len({tuple(c) for c in C.source_frame_colors(np.array([1, -1, 2, -2, 3]))}) == 5


def test_rasterize_keeps_the_highest_point_and_draws_squares() -> None:
    bg = np.array([255, 255, 255], dtype=np.uint8)
    rgb = np.array([[1, 0, 0], [2, 0, 0], [3, 0, 0]], dtype=np.uint8)
    img = rasterize((4, 4), np.array([1, 1, 2]), np.array([1, 1, 2]), rgb, np.array([0.0, 5.0, 1.0]), bg)
    assert img[1, 1, 0] == 2 and img[2, 2, 0] == 3 and img[0, 0, 0] == 255
    big = rasterize((4, 4), np.array([1, 1, 2]), np.array([1, 1, 2]), rgb, np.array([0.0, 5.0, 9.0]), bg, point_px=2)
    assert big[1, 1, 0] == 2 and big[1, 2, 0] == 2 and big[2, 2, 0] == 3 and big[3, 3, 0] == 3  # own pixel beats spill
    assert big[2, 1, 0] == 2 and big[0, 0, 0] == 255


@pytest.mark.parametrize("point_px", [1, 2, 3])
def test_zbuffer_matches_a_plain_reference(point_px: int) -> None:
    rng = np.random.default_rng(point_px)
    h, w, n = 7, 9, 300
    row, col = rng.integers(-2, h + 1, n), rng.integers(-2, w + 1, n)
    prio = rng.integers(0, 6, n).astype(float)  # many ties: the later point wins
    got = zbuffer((h, w), row, col, prio, point_px=point_px)
    image = dict(zip(got.pixel.tolist(), got.point.tolist()))
    assert len(image) == got.pixel.size
    own: dict[int, int] = {}
    for i in range(n):  # reference: own pixels by (priority, index); spill only where no own point
        if 0 <= row[i] < h and 0 <= col[i] < w:
            px = int(row[i] * w + col[i])
            if px not in own or (prio[i], i) >= (prio[own[px]], own[px]):
                own[px] = i
    want = dict(own)
    spill: dict[int, int] = {}
    for i in set(own.values()):
        for dr in range(point_px):
            for dc in range(point_px):
                r, c = row[i] + dr, col[i] + dc
                if (dr or dc) and r < h and c < w and int(r * w + c) not in own:
                    px = int(r * w + c)
                    if px not in spill or prio[i] > prio[spill[px]]:
                        spill[px] = i
    for px, i in spill.items():
        assert px in image and prio[image[px]] == prio[i]  # equal-priority spill ties: any of them
        want[px] = image[px]
    assert image == want


def _fake_inference() -> types.ModuleType:
    mod = types.ModuleType("m2s.inference")

    class Loaded:
        input_kind = "fused"

    def load_model_artifact(path, backend="auto", device="cpu", checkpoint="best"):  # type: ignore[no-untyped-def]
        return Loaded()

    class Predictor(ConstantPredictor):
        def __init__(self, loaded: Loaded) -> None:
            super().__init__()
            self.loaded = loaded

    mod.load_model_artifact = load_model_artifact  # type: ignore[attr-defined]
    mod.Predictor = Predictor  # type: ignore[attr-defined]
    return mod


def test_cli_renders_frames_and_reports_sizes(tiny_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "m2s.inference", _fake_inference())
    out = tmp_path / "img"
    res = CliRunner().invoke(app, ["show", "--sequence", "8", "--frames", "2,5", "--cache", str(tiny_data.val_cache),
                                   "--model", str(tmp_path / "m"), "--crops", "--extent", "15", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    for f in (2, 5):
        assert {f"08_{f:06d}_{v}.png" for v in ("bev", "range", "fused")} <= set(names)
    assert "08_000002_bev.png (" in res.output and "ms" in res.output
    assert Image.open(out / "08_000002_bev.png").size[0] == MARGIN + 3 * (240 + MARGIN)  # GT | fused-input model | errors
    # usage errors: one line each
    res = CliRunner().invoke(app, ["show", "--sequence", "08", "--frames", "x", "--cache", str(tiny_data.val_cache), "--out", str(out)])
    assert res.exit_code != 0 and "--frames" in res.output
    res = CliRunner().invoke(app, ["show", "--sequence", "08", "--frames", "1", "--out", str(out)])
    assert res.exit_code != 0 and "--data" in res.output
    res = CliRunner().invoke(app, ["show", "--sequence", "08", "--frames", "99", "--data", str(tiny_data.root), "--out", str(out)])
    assert res.exit_code != 0 and "99" in res.output


def test_range_geometry_validation() -> None:
    with pytest.raises(ValueError):
        RangeGeometry(fov_up_deg=-30, fov_down_deg=3)
