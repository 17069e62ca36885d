"""Configuration of the pre-training data pipeline (views, proposals, region augmentations).

Every field names its source: ``paper`` (D3SSL, Sec. 4 / 4.1), ``SoCo`` (official SoCo settings,
used where the paper is silent) or ``ours`` (a default of this package; each reading is argued in
docs/design.md). Recipes (YAML) set these fields; code reads only this object.

The region augmentation set is five switches so that every row of Tab. 5 and Tab. 6 is one
config: Tab. 5 row 1 = all off; row 2 = ``soco_cutout``; row 3 = ``box_jitter`` + ``prc``;
row 4 = ``prc``; row 5 = ``prc`` + ``rbj``; row 6 = ``prc`` + ``rbj`` + ``prm`` (the default).
Tab. 6: ``views='soco'`` with ``soco_cutout`` (SoCo) or with ``prc``/``rbj``/``prm`` (SoCo+Aug).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["PretrainDataConfig", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's

VIEW_SETS = ("d3ssl", "soco")
PRC_RULES = ("area", "side")  # = region_aug.PRC_RULES


@dataclass
class PretrainDataConfig:
    # --- views (Sec. 4 "Views construction") ---
    views: str = "d3ssl"  # paper: 'd3ssl' = x1 whole 224, x2 RRC 224, x2-s 112; 'soco' = SoCo's two views (SoCo)
    image_size: int = 224  # paper: side of x1, x2 (and x3)
    small_size: int = 112  # paper: side of x2-s
    crop_scale: tuple[float, float] = (0.4, 1.0)  # paper: RRC scale of x2 (SoCo recipes set (0.6, 1.0))
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # ours: torchvision's RRC aspect range
    flip_p: float = 0.5  # SoCo: independent horizontal flip per view
    # --- colour augmentation per view (SoCo; not in the paper) ---
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # SoCo: brightness/contrast/saturation/hue
    color_jitter_p: float = 0.8  # SoCo
    grayscale_p: float = 0.2  # SoCo
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # SoCo: Gaussian blur sigma range
    blur_p: tuple[float, float] = (1.0, 0.1)  # SoCo: blur probability of view 1 and view 2
    solarize_p: tuple[float, float] = (0.0, 0.2)  # SoCo: solarize probability of view 1 and view 2
    mean: tuple[float, float, float] = IMAGENET_MEAN  # SoCo: ImageNet normalisation
    std: tuple[float, float, float] = IMAGENET_STD  # SoCo
    # --- proposals (selective search, SoCo filters) ---
    num_proposals: int = 4  # SoCo: K proposals per image per step
    min_crop_overlap: float = 0.0  # SoCo: a proposal qualifies for x2 if it overlaps the crop at all (> 0: this share)
    crop_attempts: int = 5  # SoCo: RRC draws of x2 while fewer than K proposals qualify
    whole_box_view1: bool = True  # SoCo: view 1 uses the whole proposal, only view 2's box is clipped to the crop
    # SoCo's C4 data path as its code runs it (views='soco' only; docs/design.md "The SoCo baseline")
    soco_crop_retry: str = "halving"  # SoCo: x2 re-drawn while < max(K//2, 1) qualify, halved per draw; 'k': < K
    soco_pairing: str = "id"  # SoCo: each view pads its own repeats, pairs matched by proposal id; 'position'
    soco_cutout_clip: str = "image"  # SoCo's cutout (SoCo, Tab. 5 row 2): square clipped to the view; 'box': to the box
    # --- region augmentation set (Sec. 4.1; Tab. 5 / Tab. 6 switches) ---
    prc: bool = True  # paper: proposal-based random cutout
    prm: bool = True  # paper: proposal-based random mask
    rbj: bool = True  # paper: restricted box jitter
    soco_cutout: bool = False  # SoCo: random square cutout (ablation baseline, Tab. 5 row 2)
    box_jitter: bool = False  # SoCo: unrestricted box jitter (ablation baseline, Tab. 5 row 3)
    depositioning: bool = True  # paper: build x3 of Eq. 8 for L_dp (Sec. 4.2)
    dp_proposals: int = 0  # ours: how many of the K proposals enter x3 and L_dp; 0 = all K (literal reading);
    # the recipes set n by the rule of docs/design.md ("which proposals enter x3 and L_dp")
    # --- augmentation parameters ---
    prc_side: tuple[float, float] = (0.2, 0.5)  # paper: the cutout size range s (what s is: prc_rule)
    # prc_rule 'area': s is the share of each proposal's area cut, one s per view, an over-cut proposal restored;
    # 'side': the earlier reading (s the side ratio of the cutout, one s per proposal, prc_max_cover)
    prc_rule: str = "area"  # authors' RCC (ztt1024/denseSSL loader.py; docs/design.md "PRC size")
    prc_max_cover: float = 0.5  # ours, prc_rule 'side' only: a cutout may cover a smaller proposal by at most this
    prm_area: tuple[float, float] = (0.2, 0.6)  # paper: PRM rectangle scale range
    prm_aspect: tuple[float, float] = (3 / 4, 4 / 3)  # paper: PRM rectangle aspect range
    jitter_ratio: float = 0.1  # SoCo: box jitter scale/shift ratio r (RBJ and box_jitter)
    jitter_p: float = 0.5  # SoCo: box jitter probability
    cutout_area: tuple[float, float] = (0.1, 0.3)  # SoCo: random cutout area fraction of the box
    cutout_p: float = 0.5  # SoCo: random cutout probability
    # --- input checks ---
    min_image_side: int = 32  # ours: smaller images are skipped and reported
    # ours: COCO images folder when it is not next to the annotation file; a path, so a resumed run may move it
    # (the data are recognised by content, see docs/training.md)
    images_dir: str | None = field(default=None, metadata={"changes_result": False})
    extra: dict[str, Any] = field(default_factory=dict)  # ours: free-form notes carried by recipes

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):  # YAML gives lists; the config holds tuples
                setattr(self, f.name, tuple(v))
        if self.views not in VIEW_SETS:
            raise ValueError(f"PretrainDataConfig.views must be one of {VIEW_SETS}, got {self.views!r}")
        if self.prc_rule not in PRC_RULES:
            raise ValueError(f"PretrainDataConfig.prc_rule must be one of {PRC_RULES}, got {self.prc_rule!r}")
        if self.crop_attempts < 1 or self.dp_proposals < 0 or not 0 <= self.min_crop_overlap <= 1:
            raise ValueError(f"PretrainDataConfig: need crop_attempts >= 1, dp_proposals >= 0 and "
                             f"0 <= min_crop_overlap <= 1; got {self.crop_attempts}, {self.dp_proposals}, "
                             f"{self.min_crop_overlap}")
        for key, allowed in (("soco_crop_retry", ("halving", "k")), ("soco_pairing", ("id", "position")),
                             ("soco_cutout_clip", ("image", "box"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"PretrainDataConfig.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.num_proposals < 1:
            raise ValueError(f"PretrainDataConfig.num_proposals must be >= 1, got {self.num_proposals}")
        if self.prc and self.soco_cutout:
            raise ValueError("PretrainDataConfig: prc and soco_cutout are alternatives (Tab. 5); enable one")
        if self.views == "soco" and self.depositioning:
            raise ValueError("PretrainDataConfig: views='soco' has no x3; set depositioning: false for SoCo recipes")
        if self.rbj and self.box_jitter:
            raise ValueError("PretrainDataConfig: rbj and box_jitter are alternatives (Tab. 5); enable one")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"PretrainDataConfig.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.image_size < 32 or self.small_size < 16:
            raise ValueError("PretrainDataConfig: image_size must be >= 32 and small_size >= 16")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PretrainDataConfig":
        """Build from a recipe mapping; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PretrainDataConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
