"""A Fig. 1-style grid of positive and negative CAMs (HNC paper, "Fixing
Localization Errors to Improve Image Classification", Fig. 1).

For each chosen test image, one row per run block: the input image; the
positive CAM (the ground-truth or predicted class) with the ground-truth
boxes (green) and the predicted box (red); then the top negative CAMs, the
other classes ranked by probability. Every CAM is upsampled bilinearly to the
image size and overlaid on it with the jet colormap. Runs (e.g. baseline and
HNC) sit side by side, one column group per run, so the same image can be
compared across runs along a row.

The CAM of class k is features @ W[:, k] (+ b[k]) with features (h, w, C) and
W (C, K); `make_panel` computes them on host from a model's outputs, and
`positive_only` gives the positive-weights-only variant (losses.class_activation_maps).

Boxes follow camjax.data.boxes: rows (x0, y0, x1, y1), x = column, inclusive
pixel indices of the image as shown, rows of -1 for padding.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from camjax.analysis.figures import figure_png
from camjax.losses import class_activation_maps

GT_COLOUR, PRED_COLOUR = '#00c000', '#ff0000'
NORMALIZATIONS = ('row', 'panel')


# =============================================================================
# Pure helpers
# =============================================================================
def caption(name: str, probability: float) -> str:
    return f'{name} {probability:.2f}'


def top_negative_captions(probs, label: int, class_names: Sequence[str], k: int = 4):
    """The k most probable classes other than `label`, with their captions.

    Args:
      probs: (K,) class probabilities of one image.
      label: the positive class (ground truth or prediction), left out.
      class_names: K names.
      k: how many to return; fewer when there are fewer than k other classes.
    Returns:
      (indices, captions): int64 (min(k, K - 1),) class indices by decreasing
      probability (lower index first on ties), and captions f'{name} {p:.2f}'.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 1:
        raise ValueError(f'probs must be (K,), got {probs.shape}')
    num_classes = probs.shape[0]
    if len(class_names) != num_classes:
        raise ValueError(f'{len(class_names)} class_names for {num_classes} classes')
    label = int(label)
    if not 0 <= label < num_classes:
        raise ValueError(f'label {label} is not in [0, {num_classes})')
    if k < 0:
        raise ValueError(f'k must be >= 0, got {k}')
    others = np.delete(np.arange(num_classes), label)
    order = others[np.argsort(-probs[others], kind='stable')][:k]
    return order.astype(np.int64), [caption(class_names[i], probs[i]) for i in order]


def select_images(num_total: int, count: int, seed: int, chosen: Sequence[int] | None = None):
    """Indices of the images to show: `chosen` first, in the given order, then
    random distinct others.

    The random part walks one seed-determined permutation of all images and
    skips the chosen ones, so the result depends only on the arguments, and a
    larger `count` extends a smaller one's selection.

    Args:
      num_total: number of test images N.
      count: how many indices to return, <= N.
      seed: seed of the permutation.
      chosen: distinct indices in [0, N) to show first; at most `count`.
    Returns:
      int64 (count,) distinct indices.
    """
    if count < 0 or count > num_total:
        raise ValueError(f'count must be in [0, num_total={num_total}], got {count}')
    chosen = np.asarray([] if chosen is None else chosen, np.int64).reshape(-1)
    if chosen.size > count:
        raise ValueError(f'{chosen.size} chosen images, more than count={count}')
    if np.any((chosen < 0) | (chosen >= num_total)):
        raise ValueError(f'chosen indices must lie in [0, {num_total})')
    if np.unique(chosen).size != chosen.size:
        raise ValueError('chosen indices must be distinct')
    permutation = np.random.default_rng(seed).permutation(num_total)
    rest = permutation[~np.isin(permutation, chosen)][:count - chosen.size]
    return np.concatenate([chosen, rest]).astype(np.int64)


def valid_boxes(boxes) -> np.ndarray:
    """(M, 4) boxes -> the rows that are not padding (any coordinate < 0)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return boxes[np.all(boxes >= 0, axis=1)]


def resize_bilinear(cam, height: int, width: int) -> np.ndarray:
    """(h, w) map -> float32 (height, width), bilinear (PIL, pixel centres
    aligned, as in image resizing)."""
    from PIL import Image
    cam = np.asarray(cam, np.float32)
    if cam.ndim != 2:
        raise ValueError(f'a CAM must be (h, w), got {cam.shape}')
    if cam.shape == (height, width):
        return cam
    # float32 2-D arrays become PIL mode 'F', which resizes without quantizing.
    resized = Image.fromarray(np.ascontiguousarray(cam)).resize(
        (width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.float32)


def _image(image) -> np.ndarray:
    """uint8 or float [0, 1] (H, W, 3), (H, W, 1) or (H, W) -> float (H, W, 3)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f'image must be (H, W, 3), got {image.shape}')
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


# =============================================================================
# Panels
# =============================================================================
@dataclasses.dataclass(frozen=True, eq=False)
class CamPanelData:
    """One image's row block for one run.

    Attributes:
      image: (H, W, 3) uint8, or float in [0, 1] (clipped).
      positive_cam: (h, w) CAM of the positive class (any real scale).
      positive_caption: e.g. 'dog 0.87'.
      negative_cams: (k, h, w) CAMs of the negative classes to show, most
        probable first (k may be 0).
      negative_captions: k captions.
      gt_boxes: (M, 4) ground-truth boxes (x0, y0, x1, y1), inclusive pixel
        indices of `image`, rows of -1 for padding; None for none.
      pred_box: (4,) predicted box in the same convention, or None.
      image_caption: title of the input panel (e.g. 'GT: dog'); default none.
    """
    image: np.ndarray
    positive_cam: np.ndarray
    positive_caption: str
    negative_cams: np.ndarray
    negative_captions: Sequence[str]
    gt_boxes: np.ndarray | None = None
    pred_box: np.ndarray | None = None
    image_caption: str = ''

    def __post_init__(self):
        negatives = np.asarray(self.negative_cams).reshape(
            (-1,) + np.shape(self.positive_cam))
        if len(negatives) != len(self.negative_captions):
            raise ValueError(f'{len(negatives)} negative CAMs but '
                             f'{len(self.negative_captions)} captions')


def make_panel(*, image, features, kernel, probs, class_names: Sequence[str], bias=None,
               label: int | None = None, gt_boxes=None, pred_box=None,
               num_negatives: int = 4, positive_only: bool = False,
               image_caption: str = '') -> CamPanelData:
    """A CamPanelData from one image's model outputs.

    Args:
      image: (H, W, 3) the model input as shown.
      features: (h, w, C) the backbone's last feature map for this image.
      kernel: (C, K) CAM classifier weights W; bias: optional (K,) b.
      probs: (K,) class probabilities (softmax of the logits).
      class_names: K names.
      label: positive class; default the predicted class argmax(probs).
      gt_boxes, pred_box: as in CamPanelData.
      num_negatives: negative CAMs, the most probable other classes.
      positive_only: build every CAM from max(W, 0), i.e.
        "localization from positive weights only".
      image_caption: as in CamPanelData.
    """
    features = np.asarray(features, np.float32)
    kernel = np.asarray(kernel, np.float32)
    if features.ndim != 3 or kernel.ndim != 2 or features.shape[-1] != kernel.shape[0]:
        raise ValueError(f'features (h, w, C) {features.shape} and kernel (C, K) '
                         f'{kernel.shape} do not match')
    probs = np.asarray(probs, np.float64)
    label = int(np.argmax(probs)) if label is None else int(label)
    negatives, negative_captions = top_negative_captions(probs, label, class_names,
                                                         k=num_negatives)
    classes = np.concatenate([[label], negatives]).astype(np.int64)
    cams = np.asarray(class_activation_maps(
        features=features[None], kernel=kernel, classes=classes[None],
        bias=None if bias is None else np.asarray(bias, np.float32),
        positive_only=positive_only))[0]
    return CamPanelData(
        image=np.asarray(image), positive_cam=cams[0],
        positive_caption=caption(class_names[label], probs[label]),
        negative_cams=cams[1:], negative_captions=negative_captions,
        gt_boxes=gt_boxes, pred_box=pred_box, image_caption=image_caption)


# =============================================================================
# Figure
# =============================================================================
def _box_patch(box, colour):
    from matplotlib.patches import Rectangle
    x0, y0, x1, y1 = (float(v) for v in box)
    # Inclusive pixel indices; imshow puts pixel i's edges at i - 0.5, i + 0.5.
    return Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                     edgecolor=colour, linewidth=1.5)


def _overlay(ax, image, cam, vmin, vmax, *, cmap, alpha):
    height, width = image.shape[:2]
    ax.imshow(image, interpolation='nearest')
    ax.imshow(resize_bilinear(cam, height, width), cmap=cmap, alpha=alpha, vmin=vmin,
              vmax=vmax, interpolation='nearest')


def cam_grid_figure(panels: Mapping[str, Sequence[CamPanelData]], *,
                    num_negatives: int | None = None, normalize: str = 'row',
                    alpha: float = 0.5, cmap: str = 'jet', panel_size: float = 1.5,
                    title: str | None = None):
    """The grid as a matplotlib Figure (Agg canvas, no pyplot).

    Layout: one subfigure per run, left to right in `panels` order, titled
    with the run name. Inside each, one row per image and the columns
    [input, positive CAM, negative CAM 1..n], n = num_negatives. Hence
    `fig.axes` has num_images * num_runs * (2 + n) axes, ordered run by run,
    then row by row, then column by column. Panels with fewer than n negative
    CAMs leave the remaining axes blank.

    Args:
      panels: {run name: one CamPanelData per image}; every run lists the
        same images in the same order.
      num_negatives: columns of negative CAMs; default the most any panel has.
      normalize: 'row' (default) maps the positive and negative CAMs of one
        panel to a shared colour range, so a flat (homogeneous) negative CAM
        looks flat rather than stretched to full contrast; 'panel' min-max
        scales every CAM on its own, as CAM visualizations usually do.
      alpha: opacity of the CAM over the image.
      cmap: colormap of the CAMs.
      panel_size: inches per panel.
      title: figure title; default none.
    Returns:
      matplotlib.figure.Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError('panels is empty')
    if normalize not in NORMALIZATIONS:
        raise ValueError(f'normalize must be one of {NORMALIZATIONS}, got {normalize!r}')
    runs = list(panels)
    num_rows = len(panels[runs[0]])
    if num_rows == 0 or any(len(panels[run]) != num_rows for run in runs):
        raise ValueError('every run needs the same, non-zero number of images: '
                         + ', '.join(f'{run}: {len(panels[run])}' for run in runs))
    if num_negatives is None:
        num_negatives = max(len(p.negative_captions) for run in runs for p in panels[run])
    num_cols = 2 + num_negatives

    fig = Figure(figsize=(len(runs) * num_cols * panel_size + 0.3 * (len(runs) - 1),
                          num_rows * (panel_size + 0.35) + 0.6 + (0.3 if title else 0.0)),
                 dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    subfigures = np.atleast_1d(fig.subfigures(1, len(runs), wspace=0.02))
    for run, subfigure in zip(runs, subfigures, strict=True):
        subfigure.suptitle(run, fontsize=11, fontweight='bold')
        axes = subfigure.subplots(num_rows, num_cols, squeeze=False)
        for row, panel in enumerate(panels[run]):
            _draw_row(axes[row], panel, normalize=normalize, alpha=alpha, cmap=cmap)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def _draw_row(axes, panel: CamPanelData, *, normalize, alpha, cmap):
    image = _image(panel.image)
    positive = np.asarray(panel.positive_cam, np.float32)
    negatives = np.asarray(panel.negative_cams, np.float32).reshape((-1,) + positive.shape)
    cams = [positive, *negatives][:len(axes) - 1]
    captions = [panel.positive_caption, *panel.negative_captions][:len(cams)]
    if normalize == 'row':
        low = min(float(c.min()) for c in cams)
        high = max(float(c.max()) for c in cams)
        ranges = [(low, high)] * len(cams)
    else:
        ranges = [(float(c.min()), float(c.max())) for c in cams]

    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].imshow(image, interpolation='nearest')
    if panel.image_caption:
        axes[0].set_title(panel.image_caption, fontsize=8)
    for ax, cam, text, (low, high) in zip(axes[1:1 + len(cams)], cams, captions, ranges,
                                          strict=True):
        # A constant CAM gets a non-empty range (it then shows as its lowest colour).
        _overlay(ax, image, cam, low, high if high > low else low + 1.0, cmap=cmap, alpha=alpha)
        ax.set_title(text, fontsize=8)
    for ax in axes[1 + len(cams):]:
        ax.set_axis_off()

    positive_ax = axes[1]
    if panel.gt_boxes is not None:
        for box in valid_boxes(panel.gt_boxes):
            positive_ax.add_patch(_box_patch(box, GT_COLOUR))
    if panel.pred_box is not None and valid_boxes(panel.pred_box).size:
        positive_ax.add_patch(_box_patch(np.reshape(panel.pred_box, 4), PRED_COLOUR))
    height, width = image.shape[:2]
    positive_ax.set_xlim(-0.5, width - 0.5)
    positive_ax.set_ylim(height - 0.5, -0.5)


def cam_grid_png(panels: Mapping[str, Sequence[CamPanelData]], *, path=None, dpi: int = 100,
                 **kwargs) -> bytes:
    """`cam_grid_figure(panels, **kwargs)` as PNG bytes, also written to
    `path` when given."""
    return figure_png(cam_grid_figure(panels, **kwargs), path=path, dpi=dpi)
