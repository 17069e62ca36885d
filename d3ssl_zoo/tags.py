"""Every checkpoint the paper reports, as data (Tab. 1, 3-7; ``docs/models.md``).

Adding a checkpoint means adding one ``Tag`` entry. timm's pretrained cfgs are generated from
this table (see ``models/d3ssl_resnet.py``); the fields timm's ``PretrainedCfg`` does not know
(paper numbers, recipe, sha256) live only here, so ``hf-hub:`` configs stay loadable by timm.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Dict, List, Optional

__all__ = [
    "HUB_ORG", "PAPER_ARXIV", "PAPER_TITLE", "LICENSE", "Tag", "TAGS", "hub_org", "get_tag",
    "tag_for_hub_id", "recipe_path", "recipes_dir", "recipe_file",
]

#: Hugging Face organisation the weights are published under; override with ``D3SSL_ZOO_HUB_ORG``
#: (read when a cfg is built, i.e. at ``import d3ssl_zoo``).
HUB_ORG = "d3ssl-zoo"
PAPER_ARXIV = "arXiv:2303.16947"
PAPER_TITLE = "De-coupling and De-positioning Dense Self-supervised Learning"
LICENSE = "apache-2.0"


def hub_org() -> str:
    return os.environ.get("D3SSL_ZOO_HUB_ORG", HUB_ORG)


@dataclass(frozen=True, kw_only=True)
class Tag:
    """One pretrained checkpoint of the paper (keyword fields, like timm's pretrained cfg entries)."""

    model: str                      # architecture (registered model name)
    tag: str                        # timm pretrained tag
    dataset: str                    # pre-training data
    epochs: int
    source: str                     # where the paper reports it
    reported: Dict[str, object]     # the paper's numbers, verbatim
    hub_entry: str                  # hubconf.py entry point
    remark: str = ""
    sha256: str = ""                # of model.safetensors; empty until published

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def recipe(self) -> str:
        return recipe_path(self.name)

    @property
    def recipe_file(self) -> Path:
        return recipe_file(self.name)

    @property
    def hf_hub_id(self) -> str:
        return f"{hub_org()}/{self.name}"

    @property
    def published(self) -> bool:
        return bool(self.sha256)

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d.update(name=self.name, recipe=self.recipe, recipe_file=str(self.recipe_file), hf_hub_id=self.hf_hub_id,
                 published=self.published, license=LICENSE, paper_ids=PAPER_ARXIV)
        return d


def recipe_path(name: str) -> str:
    """The recipe of ``name`` as docs, errors and model cards name it (inside the package)."""
    return f"d3ssl_zoo/recipes/{name}.yaml"


def recipes_dir() -> Path:
    """The recipes shipped as package data: a real folder in every install pip makes (site-packages
    or, editable, the source tree)."""
    return Path(str(files("d3ssl_zoo") / "recipes"))


def recipe_file(name: str) -> Path:
    """The installed recipe file of ``name``: a zoo tag, ``demo``, ``det_voc`` or ``det_coco``.
    A name ending in ``.yaml``/``.yml`` is a path of the user's and returned as is."""
    if name.endswith((".yaml", ".yml")):
        return Path(name)
    root = recipes_dir()
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name!r} in {root}; known recipes: {', '.join(known)} "
                                f"(or give the path of a .yaml file)")
    return path


def _det(voc, coco=None, seg=None) -> Dict[str, object]:
    out: Dict[str, object] = {"voc07+12_ap_ap50_ap75": list(voc)}
    if coco is not None:
        out["coco_det_ap_ap50_ap75"] = list(coco)
    if seg is not None:
        out["coco_seg_ap_ap50_ap75"] = list(seg)
    return out


_STAGE = "layer4 (assumed)"  # the paper does not say at which stage Tab. 6/7's CR and MCS are read

TAGS: List[Tag] = [
    # The first tag of an architecture is its default (timm convention).
    Tag(
        model="d3ssl_r50c4",
        tag="coco_800ep",
        dataset="COCO train2017",
        epochs=800,
        source="Tab. 1",
        reported=_det((57.8, 82.5, 64.4), (40.3, 60.1, 44.0), (35.1, 56.9, 37.6)),
        hub_entry="d3ssl_r50c4_coco",
    ),
    Tag(
        model="d3ssl_r50c4",
        tag="oimini_800ep",
        dataset="OpenImage-MINI",
        epochs=800,
        source="Tab. 3, Tab. 4",
        reported={**_det((57.9, 82.8, 64.5), (40.1, 59.9, 43.4), (34.8, 56.5, 36.8)),
                  "oknn_top1_top5": [73.1, 90.1], "disturbed_oknn_top1_top5": [55.8, 73.4]},
        hub_entry="d3ssl_r50c4_oimini",
    ),
    Tag(
        model="d3ssl_r50c4",
        tag="coco_200ep",
        dataset="COCO train2017",
        epochs=200,
        source="Tab. 7 (w/ L_dp)",
        reported={"voc07+12_ap": 57.0, "coupling_rate": 1.17, "mcs": 0.82, "cr_mcs_stage": _STAGE},
        hub_entry="d3ssl_r50c4_coco_200ep",
    ),
    Tag(
        model="d3ssl_r50c4",
        tag="coco_200ep_dconly",
        dataset="COCO train2017",
        epochs=200,
        source="Tab. 7 (w/o L_dp) = Tab. 5 PRC+RBJ+PRM",
        reported={"voc07+12_ap": 55.5, "coupling_rate": 1.33, "mcs": 0.68, "cr_mcs_stage": _STAGE},
        hub_entry="d3ssl_r50c4_coco_200ep_dconly",
        remark="Tab. 5's last row and Tab. 7's w/o L_dp row are taken to be one model (same setting, both 55.5 AP).",
    ),
    Tag(
        model="d3ssl_r50c4",
        tag="coco_200ep_dconly_noaug",
        dataset="COCO train2017",
        epochs=200,
        source="Tab. 5 row 1",
        reported={"voc07+12_ap": 54.5},
        hub_entry="d3ssl_r50c4_coco_200ep_dconly_noaug",
    ),
    Tag(
        model="d3ssl_r50c4",
        tag="coco_200ep_dconly_cutout",
        dataset="COCO train2017",
        epochs=200,
        source="Tab. 5 row 2 (SoCo random cutout)",
        reported={"voc07+12_ap": 54.6},
        hub_entry="d3ssl_r50c4_coco_200ep_dconly_cutout",
    ),
    Tag(
        model="d3ssl_r50c4",
        tag="coco_200ep_dconly_jitter_prc",
        dataset="COCO train2017",
        epochs=200,
        source="Tab. 5 row 3 (box jitter + PRC)",
        reported={"voc07+12_ap": 54.9},
        hub_entry="d3ssl_r50c4_coco_200ep_dconly_jitter_prc",
    ),
    Tag(
        model="d3ssl_r50c4",
        tag="coco_200ep_dconly_prc",
        dataset="COCO train2017",
        epochs=200,
        source="Tab. 5 row 4",
        reported={"voc07+12_ap": 54.9},
        hub_entry="d3ssl_r50c4_coco_200ep_dconly_prc",
    ),
    Tag(
        model="d3ssl_r50c4",
        tag="coco_200ep_dconly_prc_rbj",
        dataset="COCO train2017",
        epochs=200,
        source="Tab. 5 row 5",
        reported={"voc07+12_ap": 55.2},
        hub_entry="d3ssl_r50c4_coco_200ep_dconly_prc_rbj",
    ),
    Tag(
        model="soco_r50c4",
        tag="coco_800ep",
        dataset="COCO train2017",
        epochs=800,
        source="Tab. 1",
        reported=_det((56.8, 81.7, 63.5), (39.6, 59.5, 43.2), (34.4, 56.3, 37.1)),
        hub_entry="soco_r50c4_coco",
    ),
    Tag(
        model="soco_r50c4",
        tag="oimini_800ep",
        dataset="OpenImage-MINI",
        epochs=800,
        source="Tab. 3, Tab. 4",
        reported={**_det((56.9, 81.9, 63.5), (38.4, 57.8, 41.5), (33.4, 54.6, 35.4)),
                  "oknn_top1_top5": [70.2, 88.3], "disturbed_oknn_top1_top5": [47.0, 66.1]},
        hub_entry="soco_r50c4_oimini",
    ),
    Tag(
        model="soco_r50c4",
        tag="oimini_200ep",
        dataset="OpenImage-MINI",
        epochs=200,
        source="Tab. 6",
        reported={**_det((55.3, 80.4, 61.6)), "coupling_rate": 1.31, "cr_mcs_stage": _STAGE},
        hub_entry="soco_r50c4_oimini_200ep",
    ),
    Tag(
        model="soco_r50c4",
        tag="oimini_200ep_d3aug",
        dataset="OpenImage-MINI",
        epochs=200,
        source="Tab. 6 (SoCo + D3SSL augmentations)",
        reported={**_det((55.8, 81.2, 62.1)), "coupling_rate": 1.20, "cr_mcs_stage": _STAGE},
        hub_entry="soco_r50c4_oimini_200ep_d3aug",
    ),
]

_BY_NAME: Dict[str, Tag] = {t.name: t for t in TAGS}


def get_tag(name: str) -> Optional[Tag]:
    """The table entry of ``model.tag`` (``None`` when the name has no entry)."""
    return _BY_NAME.get(name)


def tag_for_hub_id(hf_hub_id: str) -> Optional[Tag]:
    repo = hf_hub_id.split("@", 1)[0]
    return next((t for t in TAGS if t.hf_hub_id == repo), None)
