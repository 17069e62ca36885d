"""Generated multi-object scenes: data on which a few CPU-minutes of pre-training can show learning.

What they are for: the embedded demo (``python train/pretrain.py --recipe demo``) pre-trains on them
and reads O-KNN on their labelled split, and any recipe can use them through ``dataset.source``
(``scenes`` or ``scenes:key=value,...``, :meth:`SceneConfig.from_source`), so a change to the method
can be checked for learning without a download. Two variants share every layout:

* **the coloured scenes** (``scenes``, the default): every instance in its own random colours, on a
  crop of a real photo;
* **the cue-free scenes** (``scenes:instance_cues=0``, the demo's): the same random draws, so the
  same layouts and boxes, in one grey background, fill and clutter colour, where shape and pose are
  all that tells one instance from another. A short run on the coloured scenes learns each
  instance's colour and background rather than its shape (``experiments/README.md``).

Every image of the coloured scenes is a crop of a real photo (bundled with scikit-image) with 2-4
shapes pasted on it. A shape's class is its outline only (10 classes: disk, ring, square, triangle,
star, cross, crescent, arrow, L, heart): every instance gets random colours and a random fill (solid,
or a gradient between two colours at a random angle), a random size, aspect, rotation and place. Later shapes
may occlude earlier ones (each keeps at least ``MIN_VISIBLE`` of its pixels); small unlabelled
blobs and lines add clutter. Boxes are the tight boxes of each shape's visible pixels.

Three splits from disjoint random streams, one seed:

* ``pretrain``: unlabelled images (COCO json with images only) + their selective-search proposal
  file, for pre-training;
* ``train`` / ``val``: labelled (COCO json with boxes and the 10 categories), for O-KNN (bank /
  queries), the coupling rate and the positional MCS, and for a supervised ceiling.

Every split draws its backgrounds from every photo, with its own random crops: the shapes, not
the photos, are what the labelled splits test.

Built on first use into ``$D3SSL_ZOO_CACHE/scenes-v<VERSION>-<key>`` (``key`` hashes the
parameters), in a temp folder renamed into place when complete; the same parameters give the
same bytes (images are PNG, so no encoder varies between machines).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .cache import build_atomically, cache_base
from .coco_json import coco_records
from .selective_search import make_proposals

__all__ = ["SHAPES", "SceneConfig", "SceneDataset", "get_scene_dataset"]

SCENES_VERSION = 4
SHAPES = ("disk", "ring", "square", "triangle", "star", "cross", "crescent", "arrow", "L", "heart")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "brick", "grass", "gravel", "camera", "coins", "clock", "colorwheel")
MIN_VISIBLE = 0.7  # an occluded shape keeps at least this share of its pixels


@dataclass(frozen=True)
class SceneConfig:
    """The parameters of a generated scene set; :meth:`key` names its cache folder."""

    num_pretrain: int = 3000  # unlabelled pre-training images
    num_train: int = 1000  # labelled images of the O-KNN bank / supervised ceiling
    num_val: int = 300  # labelled held-out images (O-KNN queries, CR, MCS)
    image_size: int = 160  # square images
    object_size: tuple[int, int] = (48, 88)  # side of a shape's square canvas, px
    objects_per_image: tuple[int, int] = (2, 4)
    clutter: tuple[int, int] = (1, 4)  # unlabelled blobs and lines per image
    max_rotation: int = 30  # degrees either way
    background_contrast: int = 25  # percent: the photo is blended toward its mean colour (100 = as is)
    seed: int = 0
    # 1: the coloured scenes, every instance in its own colours on its own photo crop. 0: the cue-free scenes,
    # the same layouts (same seed, same shapes, sizes, poses, places, occlusion) drawn in one grey background,
    # one fill and one clutter colour, so that shape and pose are all that tells one instance from another.
    instance_cues: int = 1

    @classmethod
    def from_source(cls, source: str) -> "SceneConfig":
        """``'scenes'`` -> the default set; ``'scenes:num_pretrain=64,image_size=96'`` -> those fields changed.

        Tuple fields take ``lo-hi`` (``object_size=24-40``). The form used by ``dataset.source``.
        """
        name, _, spec = str(source).partition(":")
        if name != "scenes":
            raise ValueError(f"not a scene-set source: {source!r} (expected 'scenes' or 'scenes:key=value,...')")
        known = {f: type(v) for f, v in asdict(cls()).items()}
        values = {}
        for item in filter(None, spec.split(",")):
            key, eq, value = item.partition("=")
            if not eq or key not in known:
                raise ValueError(f"bad scene-set option {item!r} in {source!r}; options are key=value with key "
                                 f"one of {sorted(known)}")
            try:
                values[key] = tuple(int(v) for v in value.split("-")) if known[key] is tuple else int(value)
            except ValueError:
                raise ValueError(f"bad value in scene-set option {item!r}: expected an integer"
                                 f"{' range lo-hi' if known[key] is tuple else ''}") from None
        return cls(**values)

    def identity(self) -> dict:
        """The fields that name the set: fields added after v4 only where they differ from their default,
        so the sets built before they existed keep their cache folder and their ``complete.json``."""
        d = json.loads(json.dumps(asdict(self)))
        return {k: v for k, v in d.items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]


_LATER_FIELDS = {"instance_cues": 1}  # field -> default
# The cue-free scenes' appearance (instance_cues=0): RGB
FLAT_BACKGROUND, FLAT_FILL, FLAT_CLUTTER = (110.0, 110.0, 110.0), (215.0, 215.0, 215.0), (35.0, 35.0, 35.0)


@dataclass(frozen=True)
class SceneDataset:
    root: Path
    config: SceneConfig
    images_dir: Path  # pre-training images
    pretrain_ann: Path
    proposals: Path
    train_ann: Path
    val_ann: Path
    train_images: Path
    val_images: Path


def _polygon(name: str) -> list[np.ndarray]:
    """Outline(s) of a shape in [-1, 1]^2 (a list: the ring and the crescent are two)."""
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if name == "disk":
        return [circle]
    if name == "ring":
        return [circle, 0.55 * circle]
    if name == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85]
    if name == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return [np.stack([np.cos(a), np.sin(a) + 0.25], 1)]
    if name == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if name == "cross":
        w = 0.33
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w],
                          [-1, -w], [-w, -w]], float)]
    if name == "crescent":
        return [circle, 0.85 * circle + np.array([0.45, -0.1])]
    if name == "arrow":
        return [np.array([[-1, -0.3], [0.15, -0.3], [0.15, -0.8], [1, 0], [0.15, 0.8], [0.15, 0.3], [-1, 0.3]],
                         float)]
    if name == "L":
        return [np.array([[-0.8, -1], [-0.2, -1], [-0.2, 0.4], [0.8, 0.4], [0.8, 1], [-0.8, 1]], float)]
    if name == "heart":
        s = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        x = 16 * np.sin(s) ** 3
        y = -(13 * np.cos(s) - 5 * np.cos(2 * s) - 2 * np.cos(3 * s) - np.cos(4 * s))
        return [np.stack([x / 17, (y + 2.5) / 15], 1)]
    raise ValueError(f"unknown shape {name!r}; known shapes: {SHAPES}")


def shape_mask(name: str, size: int, rng: np.random.Generator, max_rotation: float = 180.0) -> np.ndarray:
    """Float alpha ``(size, size)`` in [0, 1] of one instance: random rotation (+-``max_rotation``
    degrees) and aspect (0.8-1.25)."""
    angle = math.radians(rng.uniform(-max_rotation, max_rotation))
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    polys = [(p * np.array([aspect ** 0.5, aspect ** -0.5])) @ rot.T for p in _polygon(name)]
    extent = max(np.abs(p).max() for p in polys)
    scale = (size / 2 - 1) / extent
    mask = np.zeros((size, size), np.uint8)
    sub = 16  # cv2's fixed-point shift: 4 bits
    for n, p in enumerate(polys):
        pts = np.round((p * scale + size / 2) * sub).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255 if n == 0 else 0, lineType=cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


def _texture(size: int, rng: np.random.Generator, cues: bool = True) -> np.ndarray:
    """A random fill ``(size, size, 3)`` float: a solid colour or a linear gradient between two.

    (Two-tone stripes were tried in v1: their inner edges hid the outline, and a label-trained
    ResNet-18 stayed near chance on O-KNN within the ladder's budget.)
    """
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    solid = rng.random() < 0.5
    a = 0.0 if solid else rng.uniform(0, 2 * math.pi)  # drawn whatever ``cues`` says: same layouts either way
    if not cues:
        return np.broadcast_to(np.float32(FLAT_FILL), (size, size, 3)).astype(np.float32)
    if solid:
        return np.broadcast_to(c1, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * math.cos(a) + yy * math.sin(a)
    w = ((u - u.min()) / max(float(np.ptp(u)), 1e-6))[..., None]
    return (c1 * (1 - w) + c2 * w).astype(np.float32)


def _background(photos: list[np.ndarray], size: int, rng: np.random.Generator, contrast: float = 1.0,
                cues: bool = True) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    bg = cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    bg = bg.mean(axis=(0, 1)) + contrast * (bg - bg.mean(axis=(0, 1)))
    flip = rng.random() < 0.5
    if not cues:
        return np.full((size, size, 3), FLAT_BACKGROUND, np.float32)
    return bg[:, ::-1].copy() if flip else bg


def _clutter(img: np.ndarray, n: int, rng: np.random.Generator, cues: bool = True) -> None:
    size = img.shape[0]
    for _ in range(n):
        drawn = tuple(float(c) for c in rng.uniform(0, 255, 3))  # drawn either way: same layouts
        colour = drawn if cues else FLAT_CLUTTER
        if rng.random() < 0.5:
            p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
            cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2), colour, int(rng.integers(1, 3)),
                     cv2.LINE_AA)
        else:
            c = tuple(int(v) for v in rng.integers(0, size, 2))
            axes = tuple(int(v) for v in rng.integers(2, 8, 2))
            cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)


def render_scene(photos: list[np.ndarray], cfg: SceneConfig, rng: np.random.Generator):
    """One image -> ``(uint8 (S, S, 3), boxes (n, 4) xyxy float, labels (n,) in 0..9)``.

    Boxes are the tight boxes of each shape's visible pixels (alpha >= 0.5 and not covered by a
    later shape); a placement that would leave an earlier shape below ``MIN_VISIBLE`` is redrawn.
    """
    size = cfg.image_size
    cues = bool(cfg.instance_cues)
    img = _background(photos, size, rng, cfg.background_contrast / 100, cues)
    num_clutter = int(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1))
    _clutter(img, num_clutter - num_clutter // 2, rng, cues)  # under the shapes
    n = int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))
    owner = np.full((size, size), -1, np.int32)  # which shape is visible at each pixel
    areas, labels = [], []
    for _ in range(n):
        label = int(rng.integers(len(SHAPES)))
        for _ in range(20):
            s = int(rng.integers(cfg.object_size[0], cfg.object_size[1] + 1))
            x, y = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
            alpha = shape_mask(SHAPES[label], s, rng, cfg.max_rotation)
            solid = alpha >= 0.5
            new_owner = owner.copy()
            new_owner[y:y + s, x:x + s][solid] = len(areas)
            if all((new_owner == k).sum() >= MIN_VISIBLE * areas[k] for k in range(len(areas))):
                break
        else:
            continue
        tex = _texture(s, rng, cues)
        region = img[y:y + s, x:x + s]
        img[y:y + s, x:x + s] = region * (1 - alpha[..., None]) + tex * alpha[..., None]
        owner = new_owner
        areas.append(int(solid.sum()))
        labels.append(label)
    _clutter(img, num_clutter // 2, rng, cues)  # over them: small, so boxes and classes stay true
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    boxes = []
    for k in range(len(labels)):
        ys, xs = np.nonzero(owner == k)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return out, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def default_cache_dir(cfg: SceneConfig) -> Path:
    return cache_base() / f"scenes-v{SCENES_VERSION}-{cfg.key()}"


def _layout(root: Path, cfg: SceneConfig) -> SceneDataset:
    return SceneDataset(root=root, config=cfg, images_dir=root / "pretrain", pretrain_ann=root / "pretrain.json",
                        proposals=root / "proposals.safetensors", train_ann=root / "train.json",
                        val_ann=root / "val.json", train_images=root / "train", val_images=root / "val")


def _photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle: (left, right, disparity)
        a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
        h, w = a.shape[:2]
        s = 320 / max(h, w)
        out.append(cv2.resize(a, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else a)
    return out


def _write_split(root: Path, split: str, count: int, photos, cfg: SceneConfig, labelled: bool) -> Path:
    folder = root / split
    folder.mkdir(parents=True)
    rng = np.random.default_rng([cfg.seed, ("pretrain", "train", "val").index(split)])
    images, anns = [], []
    for i in range(1, count + 1):
        img, boxes, labels = render_scene(photos, cfg, rng)
        file_name = f"{split}_{i:05d}.png"
        Image.fromarray(img).save(folder / file_name, compress_level=1)
        images.append({"id": i, "file_name": file_name, "width": cfg.image_size, "height": cfg.image_size})
        if labelled:
            for b, c in zip(boxes.tolist(), labels.tolist()):
                w, h = b[2] - b[0], b[3] - b[1]
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": [b[0], b[1], w, h],
                             "area": w * h, "iscrowd": 0})
    cats = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPES)]
    ann = {"info": {"description": f"d3ssl_zoo generated scenes ({split})", "version": SCENES_VERSION,
                    "config": asdict(cfg)},
           "images": images, "annotations": anns, "categories": cats if labelled else []}
    path = root / f"{split}.json"
    path.write_text(json.dumps(ann))
    return path


def _build(root: Path, cfg: SceneConfig, workers: int, progress: bool) -> None:
    photos = _photos()
    _write_split(root, "train", cfg.num_train, photos, cfg, labelled=True)
    _write_split(root, "val", cfg.num_val, photos, cfg, labelled=True)
    ds = _layout(root, cfg)
    _write_split(root, "pretrain", cfg.num_pretrain, photos, cfg, labelled=False)
    # small images: selective search at native size (the tool's default resizes to 500 px)
    make_proposals(coco_records(ds.pretrain_ann, ds.images_dir), ds.proposals, mode="fast", resize_long=None,
                   workers=workers, progress=progress)
    (root / "complete.json").write_text(json.dumps({"version": SCENES_VERSION, "config": asdict(cfg)}))


def get_scene_dataset(cfg: SceneConfig | None = None, cache_dir: str | os.PathLike | None = None, *,
                      workers: int | None = None, progress: bool = True) -> SceneDataset:
    """The generated scene set of ``cfg`` (default :class:`SceneConfig`: the coloured scenes), built on first use.

    Idempotent and atomic: built in a temp folder, renamed into place when complete; later calls
    return at once. ``workers`` for selective search default to the CPU count.
    """
    cfg = cfg or SceneConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(cfg)
    marker = root / "complete.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        saved_cfg = saved.get("config")
        if saved.get("version") == SCENES_VERSION and isinstance(saved_cfg, dict) and \
                SceneConfig(**{**asdict(SceneConfig()), **saved_cfg}).identity() == cfg.identity():
            return _layout(root, cfg)
    if root.exists() and any(root.iterdir()):
        raise RuntimeError(f"{root} exists but holds no complete scene dataset of version {SCENES_VERSION} "
                           f"for this config; delete it or choose another cache_dir")
    build_atomically(root, lambda t: _build(t, cfg, workers or os.cpu_count() or 1, progress))
    return _layout(root, cfg)
