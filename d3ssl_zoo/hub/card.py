"""The model card of a saved checkpoint: metadata through huggingface_hub's ``ModelCardData``, the
body (usage, provenance, the paper's numbers, this checkpoint's numbers, citation) as Markdown."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from huggingface_hub import ModelCard, ModelCardData

from ..tags import LICENSE, PAPER_ARXIV, PAPER_TITLE, get_tag

__all__ = ["model_card"]


def model_card(name: str, cfg: Mapping[str, Any], card_extra: Optional[Mapping[str, Any]]) -> str:
    tag = get_tag(name)
    extra = dict(card_extra or {})
    data = ModelCardData(library_name="timm", license=cfg.get("license", LICENSE),
                         tags=["image-feature-extraction", "timm", "self-supervised", "d3ssl_zoo"])
    lines = [
        f"# {name}", "",
        f"A ResNet-C4 backbone from *{PAPER_TITLE}* ({PAPER_ARXIV}), in the timm/torchvision ResNet "
        f"layout (headless: `num_classes=0`).", "",
        "## Usage", "", "```python",
        "import timm, d3ssl_zoo  # importing d3ssl_zoo registers the architecture in timm",
        "model = timm.create_model('hf-hub:<this repo>', pretrained=True)",
        "emb = model.forward_regions(images, boxes)  # RoIAlign on C4 -> res5 -> pool",
        "```", "",
    ]
    if tag is not None:
        lines += ["## Provenance", "",
                  f"* Pre-training data: {tag.dataset}, {tag.epochs} epochs",
                  f"* Paper source: {tag.source}",
                  f"* Recipe: `{tag.recipe}`"]
        if tag.remark:
            lines.append(f"* Note: {tag.remark}")
        lines += ["", "## Numbers reported in the paper", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in tag.reported.items()]
        lines.append("")
    if extra:
        lines += ["## This checkpoint", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in extra.items()]
        lines.append("")
    lines += ["## Citation", "", "```bibtex",
              "@article{qiu2023d3ssl,",
              f"  title={{{PAPER_TITLE}}},",
              "  author={Qiu, Congpei and Zhang, Tong and Ke, Wei and Salzmann, Mathieu and S{\\\"u}sstrunk, Sabine},",
              "  journal={arXiv preprint arXiv:2303.16947},", "  year={2023}", "}", "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


