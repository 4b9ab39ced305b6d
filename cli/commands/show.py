"""`m2s show`: PNG renders of frames — ground truth, predictions, errors, fused blocks."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cli.choices import CheckpointChoice
from cli.common import handle_errors, out
from m2s.errors import ConfigError

VIEWS = ("bev", "range", "fused", "crops")


def _parse_frames(text: str) -> list[int]:
    frames: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                frames.extend(range(a, b + 1))
            else:
                frames.append(int(part))
        except ValueError:
            raise typer.BadParameter(
                f"--frames: {part!r} is not a frame number or range (e.g. 10,20 or 10-12)"
            ) from None
    if not frames or min(frames) < 0:
        raise typer.BadParameter("--frames needs frame numbers >= 0, e.g. 10,20")
    return list(dict.fromkeys(frames))


def _parse_views(text: str, crops: bool) -> tuple[str, ...]:
    views = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise typer.BadParameter(f"--views: unknown view(s) {bad}; choose from {', '.join(VIEWS)}")
    if crops and "crops" not in views:
        views.append("crops")
    return tuple(dict.fromkeys(views))


def _parse_shape(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"--range-shape {text!r}: expected BEAMSxCOLUMNS, e.g. 64x2048") from None
    return h, w


def _parse_fov(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        up, down = (float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--fov {text!r}: expected UP,DOWN in degrees, e.g. 3,-25") from None
    return up, down


@handle_errors
def show(
    sequence: str = typer.Option(..., "--sequence", help="Sequence id, e.g. 08."),
    frames: str = typer.Option(..., "--frames", help="Frames to render, e.g. '10,20' or '10-12'."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the PNGs (SS_FFFFFF_VIEW.png)."),
    data: Path | None = typer.Option(None, "--data", help="SemanticKITTI-layout root (raw scans and labels)."),
    cache: Path | None = typer.Option(None, "--cache", help="Fused cache: the fused view, and the scans themselves."),
    models: list[Path] = typer.Option([], "--model", help="Model artifact(s) whose predictions to show (repeatable)."),
    views: str = typer.Option("bev,range,fused", "--views", help="Comma list of bev, range, fused, crops."),
    crops: bool = typer.Option(
        False, "--crops", help="Also a crop around each hard-class instance (the `crops` view)."
    ),
    extent: float = typer.Option(50.0, "--extent", min=1.0, help="Bird's-eye view: half-width of the square, metres."),
    resolution: float = typer.Option(0.125, "--resolution", min=0.01, help="Bird's-eye view: metres per pixel."),
    point_px: int = typer.Option(1, "--point-px", min=1, max=5, help="Bird's-eye view: pixels per point side."),
    range_shape: str | None = typer.Option(
        None, "--range-shape", help="Range image BEAMSxCOLUMNS (default: the dataset's sensor, else 64x2048)."
    ),
    fov: str | None = typer.Option(
        None, "--fov", help="Range image vertical field of view UP,DOWN degrees (default: the sensor's, else 3,-25)."
    ),
    max_crops: int = typer.Option(
        8, "--max-crops", min=1, help="At most this many instances per frame (largest first)."
    ),
    backend: str = typer.Option("auto", "--backend", help="auto|torch|minkowski|spconv"),
    device: str = typer.Option("cpu", "--device", help="cpu|cuda"),
    checkpoint: CheckpointChoice = typer.Option(
        CheckpointChoice.best, "--checkpoint", help="Which checkpoint of each model artifact to load."
    ),
    labels_path: Path | None = typer.Option(
        None, "--labels", help="Label manifest YAML (default: the shipped SemanticKITTI one)."
    ),
) -> None:
    """Render frames as PNGs: bird's-eye and range views in the official SemanticKITTI colours,
    ground truth beside each model's prediction and its errors, fused blocks by source frame."""
    if data is None and cache is None:
        raise typer.BadParameter("give --data ROOT and/or --cache FUSED_CACHE")
    frame_list = _parse_frames(frames)
    view_list = _parse_views(views, crops)
    shape, fov_pair = _parse_shape(range_shape), _parse_fov(fov)
    if cache is None and view_list == ("fused",):
        raise typer.BadParameter("the fused view needs --cache FUSED_CACHE")

    from m2s.labels import load_label_manifest
    from m2s.show import RangeGeometry, ShowConfig, class_colors, load_frames, render_frame
    from m2s.show.frames import sensor_geometry

    labels = load_label_manifest(labels_path)
    geometry = sensor_geometry(data, cache) or RangeGeometry()
    updates: dict[str, object] = {}
    if shape is not None:
        updates |= {"height": shape[0], "width": shape[1]}
    if fov_pair is not None:
        updates |= {"fov_up_deg": fov_pair[0], "fov_down_deg": fov_pair[1]}
    try:
        geometry = RangeGeometry.model_validate(geometry.model_dump() | updates)
        cfg = ShowConfig(views=view_list, extent_m=extent, resolution_m=resolution, point_px=point_px,
                         range=geometry, max_crops=max_crops)  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"invalid rendering options: {exc}") from None
    predictors = []
    if models:
        from m2s.inference import Predictor, load_model_artifact

        predictors = [
            Predictor(load_model_artifact(m, backend=backend, device=device, checkpoint=checkpoint.value))
            for m in models
        ]
    colors = class_colors(labels)
    for frame in load_frames(labels, sequence, frame_list, data=data, cache=cache, predictors=predictors):
        t0 = time.perf_counter()
        written = render_frame(frame, cfg, colors, out_dir)
        ms = 1000 * (time.perf_counter() - t0)
        names = ", ".join(f"{w.path.name} ({w.width}×{w.height})" for w in written)
        out.print(f"sequence {frame.sequence} frame {frame.frame}: {names}  [dim]{ms:.0f} ms[/]")
