"""Multi-to-single distillation: voxel correspondence, loss terms and their configuration."""
