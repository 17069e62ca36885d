"""Draw the views of one D3SSL sample so every augmentation can be checked by eye.

    python train/show_views.py --image PATH --out views.png [--proposals FILE --image-id N] [--seed 0]

Panels: x1, x2, x2-s (before region augmentation, original proposals dashed), x̂1 = PRM∘PRC(x1)
and x̂2-s = PRM∘PRC(x2-s) (Eq. 2; jittered RoIs solid), x3 (Eq. 8, pasted onto --background or a
scikit-image photo; shifted RoIs b̂ solid) and the mask m̂ of Eq. 7. Box colour = proposal id.
Without --proposals, selective search runs on the image (mode fast).
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from d3ssl_zoo.data.composite import composite_depositioned  # noqa: E402
from d3ssl_zoo.data.config import PretrainDataConfig  # noqa: E402
from d3ssl_zoo.data.images import load_rgb  # noqa: E402
from d3ssl_zoo.data.proposal_store import ProposalStore  # noqa: E402
from d3ssl_zoo.data.selective_search import image_proposals  # noqa: E402
from d3ssl_zoo.data.views import make_views, resize_view  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--proposals", help="proposal file made by d3ssl-zoo proposals")
    p.add_argument("--image-id", type=int, help="the image's id in --proposals")
    p.add_argument("--background", help="image used as x_b of Eq. 8 (default: a scikit-image photo)")
    p.add_argument("--seed", type=int, default=0, help="sample seed")
    args = p.parse_args(argv)
    if args.proposals and args.image_id is None:
        p.error("--proposals needs --image-id")
    folder = Path(args.out).parent
    try:  # up front: a bad --out must not fail only after the views are drawn
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {args.out}: cannot create its folder {folder} ({e.strerror}); choose another --out")
    return args


def draw_boxes(ax, boxes, dashed=False):
    colours = plt.get_cmap("tab10")
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes)):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2 if dashed else 2,
                               ls="--" if dashed else "-", edgecolor=colours(k % 10)))


def main(argv=None) -> int:
    args = parse_args(argv)
    image = load_rgb(args.image)
    if args.proposals:
        proposals = ProposalStore(args.proposals)[args.image_id]
    else:
        proposals, _ = image_proposals(image, "fast")
    cfg = PretrainDataConfig()
    plain_cfg = dataclasses.replace(cfg, prc=False, prm=False, rbj=False)
    aug = make_views(image, proposals, cfg, np.random.default_rng(args.seed))
    plain = make_views(image, proposals, plain_cfg, np.random.default_rng(args.seed))  # same draws up to region aug

    if args.background:
        bg = load_rgb(args.background)
    else:
        import skimage.data

        bg = skimage.data.rocket()
    x_b = resize_view(bg, (0, 0, bg.shape[1], bg.shape[0]), cfg.image_size, False)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]  # noqa: E731
    x3 = composite_depositioned(to_t(aug["x2"]).permute(0, 3, 1, 2), to_t(aug["m"]), to_t(x_b).permute(0, 3, 1, 2),
                                to_t(aug["m_hat"]), to_t(aug["t"]))[0].permute(1, 2, 0).numpy()

    panels = [("x1", plain["x1"], [(plain["boxes1"], True)]),
              ("x2 (teacher input, Eq. 3)", aug["x2"], [(plain["boxes2"], True), (aug["boxes2"], False)]),
              ("x2-s", plain["x2s"], [(plain["boxes2s"], True)]),
              ("x̂1 = PRM∘PRC(x1)", aug["x1"], [(plain["boxes1"], True), (aug["boxes1"], False)]),
              ("x̂2-s = PRM∘PRC(x2-s)", aug["x2s"], [(plain["boxes2s"], True), (aug["boxes2s"], False)]),
              (f"x3 (Eq. 8), t = {tuple(int(v) for v in aug['t'])}", x3, [(aug["boxes3"], False)]),
              ("m̂ = PRC(shift(m)) (Eq. 7)", aug["m_hat"].astype(np.uint8) * 255, [(aug["boxes3"], False)])]
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.4))
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title(f"input {image.shape[1]}x{image.shape[0]}, {len(proposals)} proposals")
    for ax, (title, img, box_sets) in zip(axes.flat[1:], panels):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        for boxes, dashed in box_sets:
            draw_boxes(ax, boxes, dashed)
        ax.set_title(title)
    fig.suptitle(f"D3SSL views, seed {args.seed}: dashed = proposals, solid = RoIs after RBJ / shift")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
