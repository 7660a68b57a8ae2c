"""The run directory owner: config.json refusals naming every field, runs
from an older camjax, and metrics.jsonl rewinding (torn last lines included)
for exact resumes."""

import json

import pytest
from conftest import small_config

from camjax.errors import CamjaxError
from camjax.rundir import RunDir


def test_a_different_config_is_refused_naming_every_field(tmp_path):
    rundir = RunDir(tmp_path / 'run')
    rundir.create(small_config())
    before = rundir.file('config.json')
    text = open(before).read()
    with pytest.raises(CamjaxError) as info:
        rundir.create(small_config(**{'seed': 3, 'optimizer.learning_rate': 0.5}))
    assert 'optimizer.learning_rate: 0.05 -> 0.5' in str(info.value)
    assert 'seed: 0 -> 3' in str(info.value)
    assert open(before).read() == text
    rundir.create(small_config())  # the same config: accepted, nothing changes


def test_a_run_from_before_a_new_field_resumes_with_its_default(tmp_path):
    # config.json written before train.mixup_alpha and dataset.reshuffle_each_epoch
    # existed: the run resumes, and reads back with their defaults (its behaviour).
    rundir = RunDir(tmp_path / 'run')
    rundir.create(small_config())
    path = rundir.file('config.json')
    old = json.load(open(path))
    del old['train']['mixup_alpha'], old['dataset']['reshuffle_each_epoch']
    json.dump(old, open(path, 'w'))
    saved = rundir.saved_config()
    assert saved.train.mixup_alpha == 0.0 and saved.dataset.reshuffle_each_epoch is True
    rundir.create(small_config())  # the same run: accepted, no config_change
    assert not rundir.exists('metrics.jsonl')
    with pytest.raises(CamjaxError, match=r'train.mixup_alpha: 0.0 -> 1.0'):
        rundir.create(small_config(**{'train.mixup_alpha': 1.0}))


def test_rewind_drops_replayed_and_torn_records(tmp_path):
    rundir = RunDir(tmp_path)
    for step in (2, 4, 6):
        rundir.append({'kind': 'train', 'step': step})
    with open(rundir.file('metrics.jsonl'), 'a') as f:
        f.write('{"kind": "train", "st')  # a kill in the middle of a write
    assert [r['step'] for r in rundir.records()] == [2, 4, 6]
    rundir.rewind(4)
    assert [r['step'] for r in rundir.records()] == [2, 4]
    rundir.append({'kind': 'train', 'step': 6})
    assert [r['step'] for r in rundir.records()] == [2, 4, 6]
    rundir.rewind(-1)
    assert rundir.records() == []


def test_rewind_drops_the_end_of_run_best_record_with_the_later_steps(tmp_path):
    """A finished run's 'best' record names the best step (2) but was written
    last: resuming from step 2 (a damaged newest save) replays it at the end."""
    rundir = RunDir(tmp_path)
    for record in ({'kind': 'train', 'step': 2}, {'kind': 'eval', 'step': 2},
                   {'kind': 'train', 'step': 4}, {'kind': 'best', 'step': 2}):
        rundir.append(record)
    rundir.rewind(4)  # nothing after step 4: the finished run stays as it is
    assert [r['kind'] for r in rundir.records()] == ['train', 'eval', 'train', 'best']
    rundir.rewind(2)
    assert rundir.records() == [{'kind': 'train', 'step': 2}, {'kind': 'eval', 'step': 2}]
