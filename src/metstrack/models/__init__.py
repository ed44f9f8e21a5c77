"""Networks: Segmentation-Through-Time, its ablation, MONAI baselines, registry, checkpoints."""
