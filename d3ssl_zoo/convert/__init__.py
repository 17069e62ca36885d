"""Checkpoints in and out (``docs/transfer.md``): foreign checkpoint files read safely, converters from SoCo / MoCo /
DenseCL / PixPro / mmdet / torchvision layouts, and the detectron2 / torchvision / mmdet export.
Detection fine-tuning is its own wing, :mod:`d3ssl_zoo.detection`."""
from .detectron2 import (
                         detectron2_config,
                         detectron2_r50c4_keys,
                         detectron2_state_dict,
                         match_detectron2_keys,
                         write_detectron2_config,
                         write_detectron2_pickle,
)
from .export import EXPORT_TARGETS, backbone_state_dict, export_backbone, export_state_dict
from .foreign import read_checkpoint
from .layouts import FORMATS, LAYOUTS, ConvertReport, convert_checkpoint, detect_layout, extract_backbone

__all__ = [
    "ConvertReport", "EXPORT_TARGETS", "FORMATS", "LAYOUTS", "backbone_state_dict", "convert_checkpoint",
    "detect_layout", "detectron2_config", "detectron2_r50c4_keys", "detectron2_state_dict", "export_backbone",
    "export_state_dict", "extract_backbone", "match_detectron2_keys", "read_checkpoint",
    "write_detectron2_config", "write_detectron2_pickle",
]
