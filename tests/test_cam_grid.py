"""Fig. 1-style CAM grid: negative-class ranking and captions, image
selection, CAM construction, and the figure's layout, boxes and PNG."""

import io

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle
from PIL import Image

from camjax.analysis.cam_grid import (
    GT_COLOUR,
    PRED_COLOUR,
    CamPanelData,
    cam_grid_figure,
    cam_grid_png,
    make_panel,
    resize_bilinear,
    select_images,
    top_negative_captions,
    valid_boxes,
)

NAMES = ['cat', 'dog', 'car', 'ship', 'frog', 'bird']


# =============================================================================
# Pure helpers
# =============================================================================
def test_top_negative_captions_excludes_label_and_sorts():
    probs = np.array([0.05, 0.40, 0.25, 0.01, 0.20, 0.09])
    indices, captions = top_negative_captions(probs, 2, NAMES, k=4)
    assert indices.tolist() == [1, 4, 5, 0]
    assert captions == ['dog 0.40', 'frog 0.20', 'bird 0.09', 'cat 0.05']
    # The label is excluded even when it is the most probable class.
    indices, captions = top_negative_captions(probs, 1, NAMES, k=2)
    assert indices.tolist() == [2, 4] and captions == ['car 0.25', 'frog 0.20']


def test_top_negative_captions_ties_and_small_k():
    probs = np.array([0.3, 0.3, 0.4])
    indices, captions = top_negative_captions(probs, 2, NAMES[:3], k=4)
    assert indices.tolist() == [0, 1]  # only K - 1 others; tie -> lower index first
    assert captions == ['cat 0.30', 'dog 0.30']
    assert top_negative_captions(probs, 0, NAMES[:3], k=0)[0].size == 0
    with pytest.raises(ValueError, match='label'):
        top_negative_captions(probs, 3, NAMES[:3])
    with pytest.raises(ValueError, match='class_names'):
        top_negative_captions(probs, 0, NAMES)


def test_select_images_deterministic_distinct_chosen_first():
    a = select_images(100, 10, seed=3, chosen=[42, 7])
    assert a.dtype == np.int64 and a.shape == (10,)
    assert a[:2].tolist() == [42, 7]
    assert len(set(a.tolist())) == 10 and np.all((a >= 0) & (a < 100))
    np.testing.assert_array_equal(a, select_images(100, 10, seed=3, chosen=[42, 7]))
    assert not np.array_equal(select_images(100, 10, seed=4), select_images(100, 10, seed=3))
    # A larger count extends a smaller one's selection.
    np.testing.assert_array_equal(select_images(100, 12, seed=3, chosen=[42, 7])[:10], a)
    # Everything, and only chosen.
    assert sorted(select_images(5, 5, seed=0, chosen=[4]).tolist()) == [0, 1, 2, 3, 4]
    assert select_images(5, 2, seed=0, chosen=[3, 1]).tolist() == [3, 1]
    for bad in ({'count': 6}, {'count': 1, 'chosen': [0, 1]}, {'count': 2, 'chosen': [1, 1]},
                {'count': 2, 'chosen': [5]}):
        with pytest.raises(ValueError):
            select_images(5, seed=0, **{'chosen': None, **bad})


def test_valid_boxes_drops_padding():
    boxes = np.array([[1, 2, 10, 12], [-1, -1, -1, -1], [0, 0, 31, 31]])
    np.testing.assert_array_equal(valid_boxes(boxes), boxes[[0, 2]])
    assert valid_boxes(np.full((3, 4), -1)).shape == (0, 4)


def test_resize_bilinear():
    cam = np.arange(16, dtype=np.float32).reshape(4, 4)
    up = resize_bilinear(cam, 32, 32)
    assert up.shape == (32, 32) and up.dtype == np.float32
    # Bilinear stays within the range, keeps the mean of a linear ramp, and
    # increases along the ramp's directions.
    assert cam.min() <= up.min() and up.max() <= cam.max()
    assert up.mean() == pytest.approx(cam.mean(), abs=1e-4)
    assert np.all(np.diff(up, axis=1) >= 0) and np.all(np.diff(up, axis=0) >= 0)
    np.testing.assert_array_equal(resize_bilinear(cam, 4, 4), cam)


def test_make_panel_computes_cams():
    rng = np.random.default_rng(0)
    features = rng.random((4, 4, 5)).astype(np.float32)
    kernel = rng.normal(size=(5, 6)).astype(np.float32)
    bias = np.arange(6, dtype=np.float32)
    probs = np.array([0.05, 0.40, 0.25, 0.01, 0.20, 0.09])
    panel = make_panel(image=np.zeros((16, 16, 3), np.uint8), features=features, kernel=kernel,
                       bias=bias, probs=probs, class_names=NAMES, label=2, num_negatives=3)
    assert panel.positive_caption == 'car 0.25'
    assert panel.negative_captions == ['dog 0.40', 'frog 0.20', 'bird 0.09']
    np.testing.assert_allclose(panel.positive_cam, features @ kernel[:, 2] + 2, rtol=1e-5)
    np.testing.assert_allclose(panel.negative_cams[1], features @ kernel[:, 4] + 4, rtol=1e-5)
    # Default label is the prediction; positive_only uses max(W, 0).
    positive = make_panel(image=np.zeros((16, 16, 3)), features=features, kernel=kernel,
                          probs=probs, class_names=NAMES, positive_only=True)
    assert positive.positive_caption == 'dog 0.40'
    np.testing.assert_allclose(positive.positive_cam, features @ np.maximum(kernel[:, 1], 0),
                               rtol=1e-5)
    assert len(positive.negative_captions) == 4


# =============================================================================
# Figure
# =============================================================================
GT_BOXES = [np.array([[2, 3, 20, 25], [-1, -1, -1, -1]]),       # 1 real box
            np.array([[0, 0, 31, 31], [5, 5, 10, 10], [8, 1, 30, 9]]),  # 3
            np.full((2, 4), -1)]                                 # none
PRED_BOXES = [np.array([4, 4, 22, 24]), None, np.array([1, 1, 15, 15])]


def _panels(run_seed: int, num_images: int = 3):
    rng = np.random.default_rng(run_seed)
    panels = []
    for i in range(num_images):
        image = (rng.random((32, 32, 3)) * 255).astype(np.uint8) if i % 2 else rng.random(
            (32, 32, 3))
        panels.append(CamPanelData(
            image=image, positive_cam=rng.normal(size=(8, 8)),
            positive_caption=f'cat {0.9 - 0.1 * i:.2f}',
            negative_cams=rng.normal(size=(4, 8, 8)),
            negative_captions=[f'neg{j} {0.02 * (4 - j):.2f}' for j in range(4)],
            gt_boxes=GT_BOXES[i], pred_box=PRED_BOXES[i], image_caption=f'image {i}'))
    return panels


def _boxes(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_cam_grid_layout_and_boxes():
    runs = {'baseline': _panels(0), 'HNC': _panels(1)}
    fig = cam_grid_figure(runs)
    cols = 2 + 4
    assert len(fig.axes) == 3 * 2 * cols
    assert [sf.get_suptitle() for sf in fig.subfigs] == ['baseline', 'HNC']
    expected_gt = [1, 3, 0]
    expected_pred = [1, 0, 1]
    for r, run in enumerate(runs):
        axes = fig.subfigs[r].axes
        assert len(axes) == 3 * cols
        for i in range(3):
            row = axes[i * cols:(i + 1) * cols]
            assert row[0].get_title() == f'image {i}'
            assert row[1].get_title() == runs[run][i].positive_caption
            assert [ax.get_title() for ax in row[2:]] == runs[run][i].negative_captions
            boxes = _boxes(row[1])
            assert len(boxes) == expected_gt[i] + expected_pred[i]
            colours = [b.get_edgecolor()[:3] for b in boxes]
            assert colours.count(to_rgb(GT_COLOUR)) == expected_gt[i]
            assert colours.count(to_rgb(PRED_COLOUR)) == expected_pred[i]
            assert all(not _boxes(ax) for ax in row[2:])  # boxes only on the positive CAM
            # Every CAM panel: the image, then the CAM upsampled to the image size.
            for ax in row[1:]:
                images = ax.get_images()
                assert len(images) == 2
                assert images[1].get_array().shape == (32, 32)
                assert images[1].get_alpha() == 0.5
                assert images[1].get_cmap().name == 'jet'
    # The first gt box of image 0 covers pixels 2..20 x 3..25 inclusive.
    first = _boxes(fig.subfigs[0].axes[1])[0]
    assert (first.get_x(), first.get_y(), first.get_width(), first.get_height()) == (
        1.5, 2.5, 19.0, 23.0)


def test_cam_grid_normalization():
    runs = {'a': _panels(0, num_images=1)}
    panel = runs['a'][0]
    cams = [panel.positive_cam, *panel.negative_cams]
    low, high = min(c.min() for c in cams), max(c.max() for c in cams)
    row = cam_grid_figure(runs).axes
    assert all(ax.get_images()[1].get_clim() == pytest.approx((low, high)) for ax in row[1:])
    row = cam_grid_figure(runs, normalize='panel').axes
    for ax, cam in zip(row[1:], cams, strict=True):
        assert ax.get_images()[1].get_clim() == pytest.approx((cam.min(), cam.max()))


def test_cam_grid_fewer_negatives_leaves_blank_axes():
    panel = _panels(0, num_images=1)[0]
    short = CamPanelData(image=panel.image, positive_cam=panel.positive_cam,
                         positive_caption='x 0.50', negative_cams=panel.negative_cams[:2],
                         negative_captions=['a 0.10', 'b 0.05'])
    fig = cam_grid_figure({'r1': [panel], 'r2': [short]})
    assert len(fig.axes) == 2 * 6
    r2 = fig.subfigs[1].axes
    assert [ax.axison for ax in r2] == [True] * 4 + [False] * 2
    assert not _boxes(r2[1])
    with pytest.raises(ValueError, match='same'):
        cam_grid_figure({'r1': [panel], 'r2': [short, short]})
    with pytest.raises(ValueError, match='captions'):
        CamPanelData(image=panel.image, positive_cam=panel.positive_cam,
                     positive_caption='x', negative_cams=panel.negative_cams,
                     negative_captions=['only one'])


def test_cam_grid_png(tmp_path):
    path = tmp_path / 'grid.png'
    png = cam_grid_png({'baseline': _panels(0), 'HNC': _panels(1)}, path=path,
                       title='Fig. 1')
    assert png.startswith(b'\x89PNG\r\n\x1a\n')
    assert path.read_bytes() == png
    width, height = Image.open(io.BytesIO(png)).size
    # 12 panels of 1.5 in across, 3 rows down, at 100 dpi.
    assert width >= 12 * 1.5 * 100 and 3 * 1.5 * 100 <= height < width
