"""Detection fine-tuning without detectron2 (paper §5 "Setting"): the R50-C4 Faster / Mask R-CNN
on torchvision parts, VOC / COCO readers, the VOC and COCO evaluators, and the Accelerate loop."""
from .data import VOC_CLASSES, DetectionDataset, collate_detection, read_coco, read_voc, read_voc_splits
from .evaluate import coco_results, evaluate_coco, evaluate_voc, voc_ap, voc_precision_recall
from .model import C4DetectorConfig, build_c4_detector
from .recipe import DetRecipe, describe_det_recipe, load_det_recipe, lr_factor

__all__ = [
    "C4DetectorConfig", "DetRecipe", "DetectionDataset", "VOC_CLASSES", "build_c4_detector", "coco_results",
    "collate_detection", "describe_det_recipe", "evaluate_coco", "evaluate_voc",
    "load_det_recipe", "lr_factor", "read_coco", "read_voc", "read_voc_splits", "voc_ap", "voc_precision_recall",
]
