"""The one accuracy definition (metrics.topk_correct): argmax with ties to the
lowest index, and never correct for a non-finite logit; used alike by the
training loop's evaluation, mode=eval and analyze (one evaluator,
evaluation/classification.py)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from camjax.evaluation import metrics

K = 5


def classification_metrics(*, labels, logits, num_classes):
    """What every evaluation reports: the summary of the summed metrics."""
    return metrics.summarize(metrics.classification_sums(
        logits=jnp.asarray(logits), labels=jnp.asarray(labels),
        weights=jnp.ones(len(labels)), num_classes=num_classes))


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_never_correct(bad):
    logits = np.zeros((K, K), np.float32)
    logits[:, 0] = bad
    labels = np.arange(K)
    for k in (1, 5):
        np.testing.assert_array_equal(
            metrics.topk_correct(logits=jnp.asarray(logits), labels=jnp.asarray(labels), k=k),
            np.zeros(K))
    np.testing.assert_array_equal(metrics.predicted_class(logits), -np.ones(K))
    assert classification_metrics(labels=labels, logits=logits, num_classes=K)['accuracy'] == 0


def test_all_nan_logits_score_zero():
    logits = jnp.full((8, K), jnp.nan)
    labels = jnp.arange(8) % K
    sums = metrics.classification_sums(logits=logits, labels=labels, weights=jnp.ones(8),
                                       num_classes=K)
    summary = metrics.summarize(sums)
    assert summary['accuracy'] == 0.0 and summary['top5_accuracy'] == 0.0


def test_all_equal_logits_are_correct_only_for_label_zero():
    logits = np.ones((K, K), np.float32)
    labels = np.arange(K)
    top1 = np.asarray(metrics.topk_correct(logits=jnp.asarray(logits),
                                           labels=jnp.asarray(labels), k=1))
    np.testing.assert_array_equal(top1, [1, 0, 0, 0, 0])
    top2 = np.asarray(metrics.topk_correct(logits=jnp.asarray(logits),
                                           labels=jnp.asarray(labels), k=2))
    np.testing.assert_array_equal(top2, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(metrics.predicted_class(logits), np.zeros(K))
    result = classification_metrics(labels=labels, logits=logits, num_classes=K)
    assert result['accuracy'] == pytest.approx(1 / K)
    assert result['per_class_accuracy'] == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_topk_matches_a_stable_numpy_sort():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(200, 6)).astype(np.float32)  # many ties
    labels = rng.integers(0, 6, size=200)
    order = np.argsort(-logits, axis=-1, kind='stable')
    for k in (1, 2, 5):
        expected = np.any(order[:, :k] == labels[:, None], axis=-1)
        got = metrics.topk_correct(logits=jnp.asarray(logits), labels=jnp.asarray(labels), k=k)
        np.testing.assert_array_equal(np.asarray(got), expected)
    np.testing.assert_array_equal(metrics.predicted_class(logits), np.argmax(logits, -1))


def test_diverged_training_is_not_reported_accurate(tmp_path):
    """Table row: learning_rate=1e8 made the loss NaN and val accuracy 1.0.
    Now the NaN guard stops such a run; and the loop's own evaluator, given
    the diverged (NaN) weights, reports accuracy 0 and a NaN loss."""
    import jax
    from conftest import small_config

    from camjax.data import open_splits
    from camjax.training import nonfinite
    from camjax.training.loop import RunParts
    from camjax.training.train import train_and_evaluate

    config = small_config(**{'optimizer.learning_rate': 1e8, 'train.num_steps': 4})
    splits = open_splits(config.dataset, process_index=0, process_count=1)
    with pytest.raises(nonfinite.NonFiniteError):
        train_and_evaluate(config, str(tmp_path / 'diverged'), splits)
    parts = RunParts(config, str(tmp_path / 'eval'), splits)
    try:
        from camjax.training.state import init_state
        state = init_state(parts.model, lambda params: (), seed=0,
                           image_size=config.dataset.image_size, mesh=parts.mesh)
        state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
        record = parts.evaluate_split(state, 'test')
    finally:
        parts.close()
    assert math.isnan(record['loss'])
    assert record['accuracy'] == 0.0
