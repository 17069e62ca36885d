"""torch.hub entry points: one per pretrained tag of d3ssl_zoo.

    model = torch.hub.load('/path/to/checkout', 'd3ssl_r50c4_coco', source='local')   # d3ssl_r50c4.coco_800ep
    model = torch.hub.load('<owner>/<repo>', 'soco_r50c4_oimini', pretrained=False)    # a GitHub copy of it

Every entry point is ``<arch>_<short tag>``, takes ``pretrained=True`` by default and passes
other keyword arguments to ``d3ssl_zoo.create_model`` (``num_classes``, ``features_only``,
``pretrained_cfg_overlay=dict(file=...)``...). The models are registered by the d3ssl_zoo
package itself, never here: torch.hub imports this file outside ``sys.modules``.
"""
import d3ssl_zoo as _zoo

dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors"]


def _make_entry(tag):
    def entry(pretrained: bool = True, **kwargs):
        return _zoo.create_model(tag.name, pretrained=pretrained, **kwargs)

    numbers = "\n".join(f"        {k}: {v}" for k, v in tag.reported.items())
    entry.__name__ = entry.__qualname__ = tag.hub_entry
    entry.__doc__ = (
        f"{tag.name}: ResNet-50-C4 pre-trained on {tag.dataset} for {tag.epochs} epochs "
        f"({tag.source} of arXiv:2303.16947).\n\n"
        f"    Paper's numbers:\n{numbers}\n\n"
        f"    Weights: Hugging Face Hub '{tag.hf_hub_id}'; reproduce with {tag.recipe}.\n"
        f"    Args: pretrained (bool, default True); other kwargs go to d3ssl_zoo.create_model.\n")
    return entry


for _tag in _zoo.TAGS:
    globals()[_tag.hub_entry] = _make_entry(_tag)
del _tag
