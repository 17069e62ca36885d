"""Views of Sec. 4 ("Views construction") and SoCo's two views, with their boxes.

D3SSL: x1 = whole image resized to 224; x2 = RandomResizedCrop [0.4, 1] to 224; x2-s = x2
resized to 112. Each view gets an independent horizontal flip and SoCo's colour augmentation
(view 1 settings on x1, view 2 settings on x2; x2-s is x2 downsampled, so it shares x2's).
K proposals are chosen among those overlapping the x2 crop (the crop is re-drawn while too
few overlap); view 2's boxes are clipped to the crop, view 1 keeps the whole proposal (SoCo),
or, with ``whole_box_view1: false``, the clipped one, so each box covers the same region in
every view. All work is on uint8 ``(H, W, 3)`` RGB arrays with
OpenCV, cheap enough for data workers; normalisation happens on the device
(:func:`d3ssl_zoo.data.prepare_batch`).
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from .composite import depositioning_masks
from .config import PretrainDataConfig
from .region_aug import box_jitter, prc, prm, rbj, soco_cutout

__all__ = ["crop_reduction", "reduce_crop", "plan_crop", "random_resized_crop_params", "select_proposals",
           "qualifying_proposals", "draw_crop", "resize_view", "boxes_to_view", "chw_batch", "color_augment",
           "gaussian_ksize", "gaussian_blur", "solarize", "fill_colour", "region_augment", "jitter_boxes",
           "d3ssl_views", "soco_views", "make_views", "crop_retry_needs", "soco_proposal_ids",
           "soco_correspondence"]


DECODE_REDUCTIONS = (8, 4, 2)  # the scales a JPEG decoder gives for free (DCT scaling)


def crop_reduction(width: int, height: int, crop, cfg: PretrainDataConfig) -> int:
    """How much smaller (1, 2, 4 or 8) an image of ``width x height`` may be decoded for one sample whose
    x2 ``crop`` ``(x0, y0, w, h)`` (stored pixels) is drawn.

    The largest factor at which x1 (the whole image) and this crop keep each side >= ``cfg.image_size``:
    every view is still made by shrinking. Views are resized anyway, so a reduced decode changes only
    the resampling filter (libjpeg's DCT scaling, then the same area resize), never what a view shows,
    and no view is enlarged from a reduced image. On COCO's 640 px images at the 224 px views of the
    R50 recipes it is 2 for the crops of >= 448 px a side and 1 for the others; views of 64-112 px, or
    1024 px and larger images, get up to 8.
    """
    need = min(width, height, crop[2], crop[3])
    return next((f for f in DECODE_REDUCTIONS if need >= f * cfg.image_size), 1)


def reduce_crop(crop, reduce: int, height: int, width: int):
    """A crop ``(x0, y0, w, h)`` in stored pixels -> the same crop in an image decoded at ``1 / reduce``
    (``height x width``): rounded outward to whole decoded pixels, so it still holds every stored pixel
    of the crop (and every proposal that overlapped it still does)."""
    x0, y0, w, h = crop
    a, b = x0 // reduce, y0 // reduce
    c, d = min(-(-(x0 + w) // reduce), width), min(-(-(y0 + h) // reduce), height)
    return a, b, c - a, d - b


def random_resized_crop_params(height: int, width: int, scale, ratio, rng: np.random.Generator):
    """torchvision's RandomResizedCrop sampling: ``(x0, y0, w, h)`` in pixels (10 tries, then centre crop)."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _clip_to_crop(p: np.ndarray, crop) -> np.ndarray:
    x0, y0, w, h = crop
    return np.stack([np.maximum(p[:, 0], x0), np.maximum(p[:, 1], y0),
                     np.minimum(p[:, 2], x0 + w), np.minimum(p[:, 3], y0 + h)], axis=1)


def select_proposals(proposals: np.ndarray, crop, k: int, min_overlap: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """K proposals that overlap the crop, as ``(whole, clipped)`` boxes ``(K, 4)`` float32 in original pixels.

    A proposal qualifies if it overlaps the crop at all and (``min_overlap > 0``) by at least
    that share of its area; ``clipped`` is it clipped to the crop. Fewer than K: the chosen ones
    are repeated at random (SoCo pads the same way); none: the whole crop box, for both.
    """
    p = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    clipped = _clip_to_crop(p, crop)
    return _select(p, clipped, qualifying_proposals(p, clipped, min_overlap), crop, k, rng)


def _select(p, clipped, ok, crop, k: int, rng: np.random.Generator):
    if ok.size == 0:
        x0, y0, w, h = crop
        box = np.tile(np.array([[x0, y0, x0 + w, y0 + h]], dtype=np.float32), (k, 1))
        return box, box.copy()
    if ok.size >= k:
        idx = rng.choice(ok, size=k, replace=False)
    else:
        idx = np.concatenate([rng.permutation(ok), rng.choice(ok, size=k - ok.size, replace=True)])
    return p[idx], clipped[idx]


def qualifying_proposals(proposals: np.ndarray, clipped: np.ndarray, min_overlap: float) -> np.ndarray:
    """Indices of the proposals whose part inside the crop (``clipped``) is non-empty and at least
    ``min_overlap`` of their area."""
    inter = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0)
    area = (proposals[:, 2] - proposals[:, 0]) * (proposals[:, 3] - proposals[:, 1])
    return np.flatnonzero((inter > 0) & (inter >= min_overlap * area))


def crop_retry_needs(cfg: PretrainDataConfig) -> list[int]:
    """How many proposals must qualify at each of the ``cfg.crop_attempts`` draws of the x2 crop.

    K at every draw, except for ``views='soco'`` with ``soco_crop_retry='halving'``: SoCo's C4
    dataset (``ImageFolderImageAsymBboxCutout`` in ``contrast/data/dataset.py``, hologerry/SoCo) starts
    at ``max(padding_k // 2, 1)`` and halves after each failed draw, down to 1: ``[2, 1, 1, 1, 1]``
    for K = 4 and SoCo's ``max_tries`` 5 (``contrast/option.py``; the C4 scripts keep the default).
    """
    k = cfg.num_proposals
    if cfg.views != "soco" or cfg.soco_crop_retry != "halving":
        return [k] * cfg.crop_attempts
    needs = [max(k // 2, 1)]
    while len(needs) < cfg.crop_attempts:
        needs.append(max(needs[-1] // 2, 1))
    return needs


def _draw_crop(p: np.ndarray, height: int, width: int, cfg: PretrainDataConfig, rng: np.random.Generator):
    """:func:`draw_crop` on float32 ``(N, 4)`` proposals; also returns the last draw's clipped proposals and
    qualifying indices, which :func:`select_proposals` would compute again."""
    for need in crop_retry_needs(cfg):
        crop = random_resized_crop_params(height, width, cfg.crop_scale, cfg.crop_ratio, rng)
        clipped = _clip_to_crop(p, crop)
        ok = qualifying_proposals(p, clipped, cfg.min_crop_overlap)
        if ok.size >= need:
            break
    return crop, clipped, ok


def draw_crop(proposals: np.ndarray, height: int, width: int, cfg: PretrainDataConfig, rng: np.random.Generator):
    """The x2 crop ``(x0, y0, w, h)``: RandomResizedCrop, re-drawn up to ``cfg.crop_attempts`` times
    in all while fewer proposals qualify than :func:`crop_retry_needs` asks (K, or SoCo's halving
    rule for its views); the last draw is kept."""
    return _draw_crop(np.asarray(proposals, dtype=np.float32).reshape(-1, 4), height, width, cfg, rng)[0]


def resize_view(image: np.ndarray, crop, size: int, flip: bool) -> np.ndarray:
    """Crop ``(x0, y0, w, h)`` of ``image`` resized to ``size x size``: an area (box) filter where it shrinks.

    Shrinking is done in two steps: bilinear to an integer multiple of ``size`` per shrinking axis
    (``max(2, side // size)``: a scale in (0.5, 1], or an enlargement), then OpenCV's area filter by
    those integers, its fast path. 2-4x faster than ``cv2.resize(..., INTER_AREA)`` at a
    non-integer scale (~1.5 ms for a 640x480 image to 224 px on one core) and within 0.4 grey
    levels of it on average (a few at edges; tests/test_data_views.py). Enlarging: bilinear.
    """
    x0, y0, w, h = crop
    patch = image[y0:y0 + h, x0:x0 + w]
    kx = max(2, w // size) if w > size else 1
    ky = max(2, h // size) if h > size else 1
    if kx == ky == 1:
        out = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    else:
        mid = cv2.resize(patch, (kx * size, ky * size), interpolation=cv2.INTER_LINEAR)
        out = cv2.resize(mid, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.flip(out, 1) if flip else out  # the same pixels as out[:, ::-1], several times faster


def boxes_to_view(boxes: np.ndarray, crop, size: int, flip: bool) -> np.ndarray:
    """Map original-pixel xyxy boxes into a ``size x size`` view of ``crop``, flipped if asked."""
    x0, y0, w, h = crop
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - np.array([x0, y0, x0, y0], np.float32)
    b *= np.array([size / w, size / h, size / w, size / h], dtype=np.float32)
    b = b.clip(0, size)
    if flip:
        b = np.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], axis=1)
    return b.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _hue_lut(shift: int) -> np.ndarray:
    """The hue channel's map ``h -> (h + shift) mod 180`` (OpenCV's 8-bit hue is 0..179)."""
    return ((np.arange(256) + shift) % 180).astype(np.uint8)


def _adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """Hue shift by ``factor`` of a turn, in OpenCV's 8-bit HSV (hue rounded to 2 degrees): the H plane
    goes through a table (split / LUT / merge: 4x faster than int16 arithmetic on the strided channel),
    same pixels."""
    h, s, v = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    return cv2.cvtColor(cv2.merge((cv2.LUT(h, _hue_lut(int(round(factor * 180)))), s, v)), cv2.COLOR_HSV2RGB)


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _gray_mean(img: np.ndarray) -> float:
    """Mean of the grayscale image: exact integer sum / count, the same double as ``numpy.mean``."""
    g = _gray(img)
    return cv2.sumElems(g)[0] / g.size


def gaussian_ksize(sigma: float) -> int:
    """Kernel side OpenCV's ``GaussianBlur(img, (0, 0), sigma)`` picks for uint8 images: ``round(6 sigma + 1) | 1``."""
    return int(round(sigma * 6 + 1)) | 1


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a uint8 image with the kernel ``GaussianBlur(img, (0, 0), sigma)`` uses (same size,
    same float weights, same reflect-101 border), as a separable float filter: about 2x faster on one
    thread than GaussianBlur's fixed-point path for uint8. Within 1 grey level of the exact float
    convolution; GaussianBlur, whose weights are rounded to fixed point, is within 2 of it, so the two
    differ by at most 2 (on ~2-4% of the pixels of a blurred view; tests/test_data_views.py)."""
    k = cv2.getGaussianKernel(gaussian_ksize(sigma), sigma)
    return cv2.sepFilter2D(img, -1, k, k)


def solarize(img: np.ndarray) -> np.ndarray:
    """Solarize at 128: ``255 - x`` where ``x >= 128``. Equal to ``min(x, 255 - x)`` on uint8 (two SIMD
    passes instead of a compare, subtract and select)."""
    return cv2.min(img, cv2.bitwise_not(img))


def color_augment(img: np.ndarray, rng: np.random.Generator, cfg: PretrainDataConfig, view: int) -> np.ndarray:
    """SoCo's colour augmentation for view 1 (``view=0``) or view 2 (``view=1``).

    As in SoCo's ``contrast/data/transform.py`` (BYOL's asymmetric pair): colour jitter
    (brightness, contrast, saturation, hue in random order) with p=0.8, grayscale p=0.2, Gaussian
    blur sigma U(0.1, 2) (p=1.0 view 1, 0.1 view 2), solarize (p=0 / 0.2).
    Draws are made in a fixed order whatever fires, so a sample is a function of its seed only.
    All on uint8 with OpenCV (no float copy of the image): brightness and contrast saturate and
    round as ``convertScaleAbs``, saturation as ``addWeighted``, hue in 8-bit HSV; the blur is
    :func:`gaussian_blur` (within 1 grey level of the exact Gaussian, 2 of ``cv2.GaussianBlur``).
    """
    bj, cj, sj, hj = cfg.color_jitter
    do_jitter = rng.random() < cfg.color_jitter_p
    order = rng.permutation(4)
    factors = (rng.uniform(max(0.0, 1 - bj), 1 + bj), rng.uniform(max(0.0, 1 - cj), 1 + cj),
               rng.uniform(max(0.0, 1 - sj), 1 + sj), rng.uniform(-hj, hj))
    do_gray = rng.random() < cfg.grayscale_p
    do_blur = rng.random() < cfg.blur_p[view]
    sigma = rng.uniform(*cfg.blur_sigma)
    do_solarize = rng.random() < cfg.solarize_p[view]
    out = img
    if do_jitter:
        for op in order:
            f = factors[op]
            if op == 0:
                out = cv2.convertScaleAbs(out, alpha=f, beta=0)
            elif op == 1:
                out = cv2.convertScaleAbs(out, alpha=f, beta=(1 - f) * _gray_mean(out))
            elif op == 2:
                g = cv2.cvtColor(_gray(out), cv2.COLOR_GRAY2RGB)
                out = cv2.addWeighted(out, f, g, 1 - f, 0)
            elif f != 0:
                out = _adjust_hue(out, f)
    if do_gray:
        out = cv2.cvtColor(_gray(out), cv2.COLOR_GRAY2RGB)
    if do_blur:
        out = gaussian_blur(out, sigma)
    if do_solarize:
        out = solarize(out)
    return out


def chw_batch(images) -> np.ndarray:
    """Equal-size ``(H, W, C)`` uint8 views -> one contiguous ``(B, C, H, W)`` array (the collator's layout).

    One ``cv2.split`` per image straight into the batch's channel planes: about 3x faster than
    stacking and transposing (``np.stack(...).transpose(0, 3, 1, 2)`` copied to contiguous), same bytes.
    """
    images = list(images)
    h, w, c = images[0].shape
    out = np.empty((len(images), c, h, w), dtype=images[0].dtype)
    for i, a in enumerate(images):
        if a.shape != (h, w, c) or a.dtype != out.dtype:
            raise ValueError(f"chw_batch: image {i} is {a.dtype} {a.shape}, the first is {out.dtype} {(h, w, c)}")
        planes = list(out[i])
        got = cv2.split(a, planes) if 1 < c <= 4 and a.dtype == np.uint8 else ()
        if len(got) != c or any(g.ctypes.data != p.ctypes.data for g, p in zip(got, planes)):
            out[i] = a.transpose(2, 0, 1)  # OpenCV did not write into the batch (or cannot): copy with numpy
    return out


def fill_colour(cfg: PretrainDataConfig) -> np.ndarray:
    """Cutout fill: the normalisation mean in uint8, i.e. 0 after normalisation (SoCo)."""
    return np.round(np.asarray(cfg.mean) * 255).astype(np.uint8)


def region_augment(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, cfg: PretrainDataConfig,
                   *, cutout: bool = True) -> np.ndarray:
    """``PRM ∘ PRC`` of Eq. 2 (or SoCo's cutout in PRC's place), as enabled in ``cfg``.

    PRC and PRM are anchored on the original proposals (before any box jitter).
    """
    fill = fill_colour(cfg)
    if cfg.prc:
        img = prc(img, boxes, rng, fill=fill, rule=cfg.prc_rule, side_range=cfg.prc_side,
                  max_cover=cfg.prc_max_cover)
    elif cfg.soco_cutout and cutout:
        img = soco_cutout(img, boxes, rng, fill=fill, area_range=cfg.cutout_area, p=cfg.cutout_p,
                          clip_to_image=cfg.soco_cutout_clip == "image")
    if cfg.prm:
        img = prm(img, boxes, rng, area_range=cfg.prm_area, aspect_range=cfg.prm_aspect)
    return img


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, cfg: PretrainDataConfig, size: int) -> np.ndarray:
    """RBJ or SoCo's unrestricted box jitter as enabled in ``cfg`` (one independent draw per call)."""
    if cfg.rbj:
        return rbj(boxes, rng, ratio=cfg.jitter_ratio, p=cfg.jitter_p)
    if cfg.box_jitter:
        return box_jitter(boxes, rng, size, size, ratio=cfg.jitter_ratio, p=cfg.jitter_p)
    return np.asarray(boxes, dtype=np.float32)


def plan_crop(proposals: np.ndarray, height: int, width: int, cfg: PretrainDataConfig,
              rng: np.random.Generator) -> tuple:
    """The x2 crop of one sample drawn before its image is decoded: ``(crop, qualifying indices)``.

    The sample's first random draws (:func:`draw_crop`), on the stored ``height x width`` with
    ``proposals`` in stored pixels, so the decode can be reduced as far as this crop allows
    (:func:`crop_reduction`). Then ``make_views(image, proposals / reduce, cfg, rng,
    plan=(reduce_crop(crop, reduce, h, w), qualifying))`` on the decoded image continues with the
    same generator; with ``reduce = 1`` that gives exactly the views of ``make_views`` without a plan.
    """
    p = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    crop, _, ok = _draw_crop(p, height, width, cfg, rng)
    return crop, ok


def soco_proposal_ids(ok: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SoCo's K proposals of each view, as indices into the proposals: ``(ids1, ids2)``, int64 ``(K,)``.

    As SoCo's C4 dataset does it (``select_props`` with ``--select_strategy random`` in
    ``contrast/data/props_utils.py``, ``pad_bboxs_with_common`` in ``contrast/data/bboxs_utils.py``):
    at least K qualifying (``ok``): K of them at random without repeats, the same in both views.
    Fewer: all of them, in their order, then each view independently draws its ``K - len(ok)``
    repeats among them at random (with replacement, unjittered), so the views' pairs are matched by
    id (:func:`soco_correspondence`), not by position. ``ok`` must not be empty.
    """
    if ok.size >= k:
        ids = rng.choice(ok, size=k, replace=False).astype(np.int64)
        return ids, ids.copy()
    ids1 = np.concatenate([ok, rng.choice(ok, size=k - ok.size, replace=True)]).astype(np.int64)
    ids2 = np.concatenate([ok, rng.choice(ok, size=k - ok.size, replace=True)]).astype(np.int64)
    return ids1, ids2


def soco_correspondence(ids1, ids2):
    """SoCo's correspondence matrix (``get_correspondence_matrix``, ``contrast/data/bboxs_utils.py``):
    ``C[..., i, j] = 1`` where box i of view 1 and box j of view 2 are the same proposal, else 0.
    A proposal repeated c1 times in view 1 and c2 times in view 2 gives c1 * c2 ones. Works on numpy
    arrays and on torch tensors, ``(K,)`` or batched ``(B, K)``."""
    return ids1[..., :, None] == ids2[..., None, :]


def _views_and_boxes(image: np.ndarray, proposals: np.ndarray, cfg: PretrainDataConfig, rng: np.random.Generator,
                     plan=None):
    """Both views and their boxes, plus the proposal ids of each view's boxes (``None, None`` unless
    ``views='soco'`` with ``soco_pairing='id'``, whose boxes are paired by id)."""
    height, width = image.shape[:2]
    p = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    if plan is None:
        crop, clipped, ok = _draw_crop(p, height, width, cfg, rng)  # = draw_crop, then select_proposals
    else:
        crop, ok = plan
        clipped = _clip_to_crop(p, crop)
    whole = (0, 0, width, height)
    ids1 = ids2 = None
    if cfg.views == "soco" and cfg.soco_pairing == "id":
        k = cfg.num_proposals
        if ok.size == 0:
            # SoCo's clip_bboxs: no selected proposal -> each view's whole extent, one shared id (all pairs match)
            x0, y0, w, h = crop
            crop_box = np.array([[x0, y0, x0 + w, y0 + h]], dtype=np.float32)
            src1 = np.tile(np.array([[0, 0, width, height]], np.float32) if cfg.whole_box_view1 else crop_box, (k, 1))
            src2 = np.tile(crop_box, (k, 1))
            ids1, ids2 = np.full(k, -1, np.int64), np.full(k, -1, np.int64)
        else:
            ids1, ids2 = soco_proposal_ids(ok, k, rng)
            src1 = p[ids1] if cfg.whole_box_view1 else clipped[ids1]
            src2 = clipped[ids2]
    else:
        whole_boxes, clipped = _select(p, clipped, ok, crop, cfg.num_proposals, rng)
        # SoCo: view 1 (the whole image) sees the whole proposal; only view 2's box is clipped to its crop
        src1, src2 = (whole_boxes if cfg.whole_box_view1 else clipped), clipped
    flip1, flip2 = rng.random(2) < cfg.flip_p
    size = cfg.image_size
    x1 = color_augment(resize_view(image, whole, size, flip1), rng, cfg, 0)
    x2 = color_augment(resize_view(image, crop, size, flip2), rng, cfg, 1)
    b1 = boxes_to_view(src1, whole, size, flip1)
    b2 = boxes_to_view(src2, crop, size, flip2)
    return x1, x2, b1, b2, ids1, ids2


def _common(image: np.ndarray, proposals: np.ndarray, cfg: PretrainDataConfig, rng: np.random.Generator,
            plan=None):
    return _views_and_boxes(image, proposals, cfg, rng, plan)[:4]


def d3ssl_views(image: np.ndarray, proposals: np.ndarray, cfg: PretrainDataConfig,
                rng: np.random.Generator, plan=None) -> dict:
    """One D3SSL sample (Sec. 4, Eq. 2, Eq. 6-7) as uint8 arrays and float32 boxes.

    Keys: ``x1`` (x̂1), ``x2`` (no region aug), ``x2s`` (x̂2-s), ``boxes1``, ``boxes2``,
    ``boxes2s`` and, with ``cfg.depositioning``, ``m``, ``m_hat``, ``t``, ``boxes3`` (the paste
    itself happens in the collator, which has another image of the batch).
    """
    x1, x2, b1, b2 = _common(image, proposals, cfg, rng, plan)
    size, small = cfg.image_size, cfg.small_size
    x2s = cv2.resize(x2, (small, small), interpolation=cv2.INTER_AREA)
    b2s = b2 * (small / size)
    out = {"x1": region_augment(x1, b1, rng, cfg), "x2": x2, "x2s": region_augment(x2s, b2s, rng, cfg)}
    j1 = jitter_boxes(b1, rng, cfg, size)
    j2 = jitter_boxes(b2, rng, cfg, size)  # one draw for view 2: x2 and x2-s are the same crop
    out.update(boxes1=j1, boxes2=j2, boxes2s=(j2 * (small / size)).astype(np.float32))
    if cfg.depositioning:
        # The whole proposals of x2 are pasted; the (jittered) RoIs inside them move with t. With
        # dp_proposals = n (0 < n < K), only the first n of the K (randomly ordered) proposals enter
        # the composite and L_dp; 0 pastes all K (the literal reading of Sec. 4.2).
        n = cfg.dp_proposals if 0 < cfg.dp_proposals < len(b2) else len(b2)
        m, m_hat, t = depositioning_masks(b2[:n], size, size, rng, prc_rule=cfg.prc_rule,
                                          side_range=cfg.prc_side, max_cover=cfg.prc_max_cover)
        boxes3 = (j2[:n] + np.tile(t, 2)).clip(0, size)  # clip: unrestricted box_jitter may leave the proposal
        out.update(m=m, m_hat=m_hat, t=t, boxes3=boxes3.astype(np.float32))
    return out


def soco_views(image: np.ndarray, proposals: np.ndarray, cfg: PretrainDataConfig,
               rng: np.random.Generator, plan=None) -> dict:
    """SoCo's two views (whole image 224, RandomResizedCrop 224; SoCo's ``contrast/data/transform.py``).

    SoCo's random cutout goes on view 2 only (with ``soco_cutout_clip='image'``, SoCo's square clipped
    to the view, placed on the boxes as the flipped view shows them; Tab. 5 row 2 in D3SSL's views
    follows the same key); PRC/PRM (SoCo + Aug_D3SSL,
    Tab. 6) on both views. With ``soco_pairing='id'`` the sample also has ``proposal_ids1`` and
    ``proposal_ids2`` (int64 ``(K,)``): which proposal each box of ``boxes1`` / ``boxes2`` is; the
    loss pairs boxes with equal ids (:func:`soco_correspondence`). See docs/design.md, "The SoCo baseline".
    """
    x1, x2, b1, b2, ids1, ids2 = _views_and_boxes(image, proposals, cfg, rng, plan)
    size = cfg.image_size
    x1 = region_augment(x1, b1, rng, cfg, cutout=False)
    x2 = region_augment(x2, b2, rng, cfg)
    out = {"x1": x1, "x2": x2, "boxes1": jitter_boxes(b1, rng, cfg, size), "boxes2": jitter_boxes(b2, rng, cfg, size)}
    if ids1 is not None:
        out.update(proposal_ids1=ids1, proposal_ids2=ids2)
    return out


def make_views(image: np.ndarray, proposals: np.ndarray, cfg: PretrainDataConfig, rng: np.random.Generator,
               plan=None) -> dict:
    """Dispatch on ``cfg.views``. ``plan``: the x2 crop already drawn, in ``image``'s pixels (:func:`plan_crop`)."""
    views = d3ssl_views if cfg.views == "d3ssl" else soco_views
    return views(image, proposals, cfg, rng, plan)
