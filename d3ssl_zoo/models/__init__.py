"""The zoo's architectures; importing this registers them in timm."""
from .d3ssl_resnet import D3SSLResNet, d3ssl_r18c4, d3ssl_r50c4, soco_r50c4

__all__ = ["D3SSLResNet", "d3ssl_r18c4", "d3ssl_r50c4", "soco_r50c4"]
