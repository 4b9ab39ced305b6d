"""m2s: multi-to-single knowledge distillation for single-scan LiDAR semantic segmentation."""

__version__ = "0.1.0"
