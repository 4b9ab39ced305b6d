"""`m2s show`: PNG renders of scans, predictions, errors and fused blocks (bird's-eye and range views)."""

from m2s.show.colors import ClassColors, class_colors
from m2s.show.config import RangeGeometry, ShowConfig, ViewName
from m2s.show.frames import FrameData, ModelPrediction, load_frames
from m2s.show.projection import bev_pixels, range_pixels, rasterize
from m2s.show.render import RenderedImage, render_frame

__all__ = [
    "ClassColors",
    "FrameData",
    "ModelPrediction",
    "RangeGeometry",
    "RenderedImage",
    "ShowConfig",
    "ViewName",
    "bev_pixels",
    "class_colors",
    "load_frames",
    "range_pixels",
    "rasterize",
    "render_frame",
]
