"""Transfer and interop (SPEC §4): checkpoint converters in and out, detectron2 export and configs,
and detection fine-tuning / evaluation without detectron2 (``d3ssl_zoo.transfer.detection``)."""
from .checkpoint import read_checkpoint
from .convert import FORMATS, LAYOUTS, ConvertReport, convert_checkpoint, detect_layout, extract_backbone
from .detectron2 import (detectron2_config, detectron2_r50c4_keys, detectron2_state_dict, match_detectron2_keys,
                         write_detectron2_config, write_detectron2_pickle)
from .export import EXPORT_TARGETS, backbone_state_dict, export_backbone, export_state_dict

__all__ = [
    "ConvertReport", "EXPORT_TARGETS", "FORMATS", "LAYOUTS", "backbone_state_dict", "convert_checkpoint",
    "detect_layout", "detectron2_config", "detectron2_r50c4_keys", "detectron2_state_dict", "export_backbone",
    "export_state_dict", "extract_backbone", "match_detectron2_keys", "read_checkpoint",
    "write_detectron2_config", "write_detectron2_pickle",
]
