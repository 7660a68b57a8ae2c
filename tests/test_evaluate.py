"""Evaluation and analysis of trained runs: eval by the run's own config,
multi-label eval, and analyze comparing a LinR refinement with its baseline
in report.html. (The demo run's evaluation is in test_demo.py.)"""

import base64
import html as html_lib
import json
import os
from html.parser import HTMLParser

from conftest import file_hashes, run_cli

from camjax.rundir import read_records

SMALL_28PX = ['--config=configs/default.py', '--config.dataset.image_size=28',
              '--config.dataset.synthetic.num_train=480', '--config.dataset.synthetic.num_test=96',
              '--config.model.width=8', '--config.train.batch_size=32',
              '--config.train.num_steps=12', '--config.train.eval_every=6']


def test_eval_of_a_28px_run_uses_its_saved_config(tmp_path):
    """Issue 9's table: eval rebuilt the model and preprocessing from the
    command line, so a 28 px run evaluated at the default 64 px (20.85%
    instead of 98.1%). Now `--mode=eval --workdir` alone reproduces the run's
    own test accuracy exactly, and a contradicting override is refused."""
    workdir = tmp_path / 'r28'
    train = run_cli(*SMALL_28PX, f'--workdir={workdir}')
    assert train.returncode == 0, train.stderr[-2000:]
    best = [r for r in read_records(str(workdir)) if r['kind'] == 'best'][-1]
    result = run_cli('--mode=eval', f'--workdir={workdir}', '--evaluation.fgsm_eps=()')
    assert result.returncode == 0, result.stderr[-2000:]
    eval_json = workdir / 'eval' / 'eval.json'
    assert json.loads(eval_json.read_text())['classification']['accuracy'] == \
        best['test']['accuracy']
    written = eval_json.read_bytes()
    refused = run_cli(*SMALL_28PX, '--config.mode=eval', '--config.dataset.image_size=64',
                      '--config.dataset.mean=(0.4,0.4,0.4)', f'--workdir={workdir}')
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith('camjax: error: config:') and 'Traceback' not in refused.stderr
    assert 'dataset.image_size=64 (the run has 28)' in line and 'dataset.mean=' in line
    assert eval_json.read_bytes() == written


def test_eval_needs_a_trained_run(tmp_path):
    result = run_cli('--mode=eval', f'--workdir={tmp_path}/none')
    assert result.returncode == 2
    assert result.stderr.strip() == (f"camjax: error: '{tmp_path}/none' is not a camjax run "
                                     '(no config.json)')


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.open_tags = [], []

    def handle_starttag(self, tag, attrs):
        if tag == 'img':
            self.sources.append(dict(attrs)['src'])
        elif tag not in ('meta', 'br'):
            self.open_tags.append(tag)

    def handle_endtag(self, tag):
        assert self.open_tags.pop() == tag


def test_analyze_compares_a_linr_refinement_with_its_baseline(tmp_path):
    from conftest import small_config

    from camjax.analysis.analyze import analyze
    from camjax.data import open_splits
    from camjax.training.refine import refine
    from camjax.training.train import train_and_evaluate
    base, refined, out = (str(tmp_path / n) for n in ('base', 'refined', 'compare'))
    config = small_config(**{'train.num_steps': 12})
    splits = open_splits(config.dataset)
    train_and_evaluate(config, base, splits)
    refine(small_config(**{'mode': 'refine', 'train.init_from': base, 'refine.rounds': 1,
                           'refine.cls_steps': 2, 'refine.linr_steps': 2}), refined, splits)
    before = {w: file_hashes(w) for w in (base, refined)}
    analysis = small_config(**{
        'mode': 'analyze', 'evaluation.runs': (base, refined), 'evaluation.fgsm_eps': (0.1,),
        'evaluation.landscape_steps': 3, 'evaluation.cam_grid_images': 2})
    summary = analyze(analysis, out)
    # analyze writes only into its own workdir; the compared runs stay byte-identical.
    assert {w: file_hashes(w) for w in (base, refined)} == before
    cached = sorted(os.listdir(os.path.join(out, 'cache')))
    assert [c.split('-step')[0] for c in cached] == ['base', 'refined']
    comparison = summary['per_class']['refined']
    assert comparison['summary']['headline'].startswith('mean ')
    assert len(comparison['classes']) == 12
    assert all(0 <= c['p_adjusted'] <= 1 for c in comparison['classes'] if c['count'])
    assert set(summary['landscape']) == {'base', 'refined'}
    html = (tmp_path / 'compare' / 'report.html').read_text()
    parser = _Images()
    parser.feed(html)
    assert parser.open_tags == []                       # every tag closed
    assert len(parser.sources) >= 8                     # per-class, weights, CAMs, landscape, ...
    for src in parser.sources:
        assert src.startswith('data:image/png;base64,')
        assert base64.b64decode(src.split(',', 1)[1])[:8] == b'\x89PNG\r\n\x1a\n'
    figures = sorted(os.listdir(os.path.join(out, 'figures')))  # the same PNGs, as files
    assert len(figures) == len(parser.sources) and figures[0].startswith('01-')
    for text in ('Per-class effects', 'CAM classifier weights', 'Class activation maps',
                 'Loss landscape', 'Training curves', 'Configs',
                 html_lib.escape(comparison['summary']['headline'])):
        assert text in html
    # A second analysis (no grids or landscape this time) reads the cached
    # evaluations and reports the same numbers.
    analysis.evaluation.landscape_batches = analysis.evaluation.cam_grid_images = 0
    again = analyze(analysis, out)
    for key in ('runs', 'per_class'):
        assert json.dumps(again[key], sort_keys=True, default=str) == json.dumps(
            summary[key], sort_keys=True, default=str)
    assert sorted(os.listdir(os.path.join(out, 'cache'))) == cached
    assert len(os.listdir(os.path.join(out, 'figures'))) < len(figures)  # none left over


def test_analyze_without_runs_is_a_one_line_error(tmp_path):
    result = run_cli('--config=configs/default.py', '--config.mode=analyze',
                     f'--workdir={tmp_path}/x')
    assert result.returncode == 2
    assert 'mode=analyze needs evaluation.runs' in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / 'x').exists()


def test_eval_of_a_multilabel_run_reports_coco_and_attribute_metrics(tmp_path):
    from conftest import small_config

    from camjax.data import open_splits
    from camjax.evaluation.evaluate import evaluate_run
    from camjax.training.train import train_and_evaluate
    config = small_config(**{'dataset.label_key': 'attributes', 'train.num_steps': 2,
                             'loss': (dict(name='weighted_sigmoid_ce'),)})
    splits = open_splits(config.dataset)
    train_and_evaluate(config, str(tmp_path), splits)
    results = evaluate_run(str(tmp_path), config.evaluation, splits=splits)
    coco, attributes = results['multilabel']['coco'], results['multilabel']['attributes']
    assert set(coco) == {'mAP', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1'}
    assert 0 < coco['mAP'] <= 1 and 0 <= attributes['mA'] <= 1
    assert results['_outputs']['scores'].shape == (120, splits.num_classes)
    assert 'classification' not in results and 'fgsm' not in results
    assert json.loads((tmp_path / 'eval' / 'eval.json').read_text())['multilabel'] == \
        results['multilabel']
