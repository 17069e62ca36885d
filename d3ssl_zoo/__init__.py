"""d3ssl_zoo: dense self-supervised ResNet-C4 backbones (D3SSL, SoCo and ablations).

Importing the package registers its models in timm (timm has no plugin entry point, so
``import d3ssl_zoo`` must come before ``timm.create_model('d3ssl_r50c4')``).
"""
__version__ = "0.1.0"
