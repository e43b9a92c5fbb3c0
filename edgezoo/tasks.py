"""The tasks edgezoo's models solve, and the normalisation their torchvision weights expect."""

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
TASKS = (CLASSIFICATION, SEGMENTATION)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""torchvision's ImageNet normalisation of 0..1 pixels (mean, std per RGB channel)."""
