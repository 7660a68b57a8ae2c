"""The mechanism the HNC paper claims, shown in training: with HNC_kd the
top-k negative CAMs end flatter (smaller peak - mean) than with CE alone, at
the same seed and number of steps."""

from conftest import small_config

from camjax.data import open_splits
from camjax.rundir import read_records
from camjax.training.train import train_and_evaluate


def _final_test_peakiness(config, workdir):
    train_and_evaluate(config, workdir, open_splits(config.dataset))
    evals = [r for r in read_records(workdir) if r['kind'] == 'eval']
    return evals[-1]['test']


def test_hnc_kd_flattens_negative_cams(tmp_path):
    common = {'train.num_steps': 60, 'train.eval_every': 60, 'train.checkpoint_every': 60,
              'train.log_every': 0, 'train.eval_negative_cam_k': 3, 'model.width': 16}
    ce = _final_test_peakiness(small_config(**common), str(tmp_path / 'ce'))
    hnc = _final_test_peakiness(
        small_config(**common, loss=(dict(name='cross_entropy'),
                                     dict(name='hnc_kd', weight=0.1, k=3))),
        str(tmp_path / 'hnc'))
    print(f"peak-mean of top-3 negative CAMs: CE {ce['neg_cam_peak_minus_mean']:.3f}, "
          f"CE+HNC_kd {hnc['neg_cam_peak_minus_mean']:.3f}; accuracy CE {ce['accuracy']:.3f}, "
          f"HNC {hnc['accuracy']:.3f}")
    assert 'loss/hnc_kd' in hnc and hnc['loss/hnc_kd'] > 0
    assert hnc['neg_cam_peak_minus_mean'] < 0.8 * ce['neg_cam_peak_minus_mean']
