"""d3ssl_zoo: dense self-supervised ResNet-C4 backbones (D3SSL, SoCo and ablations).

Importing the package registers its models in timm. timm has no plugin entry point, so
``import d3ssl_zoo`` must come before ``timm.create_model('d3ssl_r50c4')``.
"""
from .boxes import boxes_to_rois, region_align, region_align_pooled, validate_boxes
from .factory import create_model, get_pretrained_cfg, list_models, list_pretrained, load_backbone
from .hub import PretrainedWeightsError, push_to_hub, save_pretrained
from .models import D3SSLResNet
from .tags import TAGS

__version__ = "0.1.0"

__all__ = [
    "D3SSLResNet", "PretrainedWeightsError", "TAGS", "boxes_to_rois", "create_model", "get_pretrained_cfg",
    "list_models", "list_pretrained", "load_backbone", "push_to_hub", "region_align", "region_align_pooled",
    "save_pretrained", "validate_boxes",
]
