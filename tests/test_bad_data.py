"""Bad data in file-based datasets: undecodable images ('error' names the
file, 'skip' replaces it deterministically and counts it, eval masks it out),
empty class folders, boxes outside their image, attrfolder paths that leave
the images folder, and `--mode=check`, which lists every problem at once."""

import re

import numpy as np
import pytest
from conftest import run_cli, small_config
from PIL import Image

from camjax import parallel
from camjax.data import TrainBatches, eval_batches, open_splits
from camjax.data.check import check_dataset
from camjax.errors import CamjaxError


def _png(path, value, size=(8, 8)):
    """A PNG whose pixels all equal `value` (identifies it on read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _folder(root, per_class=4):
    """train/{a,b}/<i>.png and test/{a,b}/<i>.png; image i of class c has pixels 10 * (4c + i)."""
    for split in ('train', 'test'):
        for c, name in enumerate(('a', 'b')):
            for i in range(per_class):
                _png(root / split / name / f'{i}.png', 10 * (4 * c + i))
    return root


def _truncated_jpeg(path):
    _png(path.with_suffix('.png'), 0)
    Image.open(path.with_suffix('.png')).save(path, format='JPEG')
    path.with_suffix('.png').unlink()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


BAD_FILES = {'truncated JPEG': _truncated_jpeg,
             'empty file': lambda path: path.write_bytes(b''),
             'text file': lambda path: path.write_text('not an image\n')}


def _config(root, **overrides):
    return small_config(**{'dataset.name': f'imagefolder:{root}', 'dataset.val_fraction': 0.0,
                           **overrides}).dataset


def _sharding():
    return parallel.batch_sharded(parallel.make_mesh())


def _value(example):
    return int(example['image'][0, 0, 0])


@pytest.mark.parametrize('make_bad', BAD_FILES.values(), ids=BAD_FILES.keys())
def test_undecodable_image_is_an_error_naming_the_file(tmp_path, make_bad):
    root = _folder(tmp_path)
    (root / 'test' / 'a' / '1.png').unlink()
    bad = root / 'test' / 'a' / '1.jpg'  # sorts where 1.png was: index 1
    make_bad(bad)
    test = open_splits(_config(root)).test
    assert _value(test[0]) == 0 and test[0]['bad_image'] == 0
    with pytest.raises(CamjaxError, match=f'^corrupt image {bad}: '):
        test[1]


def test_skip_replaces_by_the_next_decodable_file_and_counts(tmp_path):
    root = _folder(tmp_path)
    for split, name in (('test', 'a/1'), ('test', 'a/2'), ('test', 'b/3'), ('train', 'b/0')):
        (root / split / f'{name}.png').unlink()
        BAD_FILES['text file'](root / split / f'{name}.jpg')
    test = open_splits(_config(root, **{'dataset.on_bad_image': 'skip'})).test
    examples = [test[i] for i in range(len(test))]
    # a/1 and a/2 -> a/3 (value 30, label 0); b/3, the last file, wraps round to a/0.
    assert [_value(e) for e in examples] == [0, 30, 30, 30, 40, 50, 60, 0]
    assert [int(e['label']) for e in examples] == [0, 0, 0, 0, 1, 1, 1, 0]
    assert [int(e['bad_image']) for e in examples] == [0, 1, 1, 0, 0, 0, 0, 1]
    np.testing.assert_array_equal(test[1]['image'], test[1]['image'])  # a pure function of i
    assert test.stored_format(1) == (8, 8, 3)  # the start-up summary reads the replacement

    stream = eval_batches(test, cfg=_config(root), global_batch=6, global_size=8,
                          sharding=_sharding())
    batches = list(stream)
    assert stream.bad_images == 3
    assert batches[-1].keys() == {'image', 'label', 'mask'}  # the flags stay on the host
    mask = np.concatenate([np.asarray(b['mask']) for b in batches])
    np.testing.assert_array_equal(mask, [1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0])  # 4 pads
    train = open_splits(_config(root, **{'dataset.on_bad_image': 'skip'})).train
    stream = TrainBatches(train, cfg=_config(root), global_batch=8, seed=0, sharding=_sharding())
    state = stream.get_state()
    next(stream)  # one batch = the whole epoch: the one bad file once
    assert stream.bad_images == 1 and 'bad_image' not in next(stream)
    assert stream.bad_images == 2
    stream.set_state(state)
    assert stream.bad_images == 0  # counts since the iterator was created or restored


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = _folder(tmp_path)
    for f in (root / 'test' / 'b').iterdir():
        f.unlink()
    (root / 'test' / 'b' / 'notes.txt').write_text('no images here\n')
    with pytest.raises(CamjaxError, match=f'^class folder {root / "test" / "b"} has no image'):
        open_splits(_config(root))


def test_box_outside_the_image_names_file_and_line(tmp_path):
    root = _folder(tmp_path)
    _png(root / 'test' / 'a' / '0.png', 0, size=(48, 40))
    boxes = root / 'test' / 'boxes.csv'
    boxes.write_text('image,x0,y0,x1,y1\na/0.png,0,0,47,39\na/0.png,5,5,3000,3000\n')
    with pytest.raises(CamjaxError, match=f'^{boxes}:3: box 5,5,3000,3000 is outside the image '
                       f'{root / "test" / "a" / "0.png"} \\(48x40'):
        open_splits(_config(root, **{'dataset.boxes_file': 'boxes.csv'}))
    boxes.write_text('a/0.png,0,0,47,39\na/0.png,0,0,48,39\n')  # x1 = width: one past the edge
    with pytest.raises(CamjaxError, match=f'^{boxes}:2: box 0,0,48,39 is outside'):
        open_splits(_config(root, **{'dataset.boxes_file': 'boxes.csv'}))


def _tiny(root, box='1 1 6 6'):
    """A two-class Tiny ImageNet layout of 8x8 images; val_0 has `box`."""
    wnids = ('n01', 'n02')
    (root / 'wnids.txt').parent.mkdir(parents=True)
    (root / 'wnids.txt').write_text('\n'.join(wnids) + '\n')
    for wnid in wnids:
        for i in range(2):
            _png(root / 'train' / wnid / 'images' / f'{wnid}_{i}.JPEG', 10 * i)
        (root / 'train' / wnid / f'{wnid}_boxes.txt').write_text(
            f'{wnid}_0.JPEG\t0\t0\t7\t7\n{wnid}_1.JPEG\t1\t2\t3\t4\n')
    for j in range(2):
        _png(root / 'val' / 'images' / f'val_{j}.JPEG', 5)
    (root / 'val' / 'val_annotations.txt').write_text(
        f'val_0.JPEG\tn01\t{box.replace(" ", chr(9))}\nval_1.JPEG\tn02\t0\t0\t7\t7\n')
    return root


def _tiny_config(root):
    return small_config(**{'dataset.name': f'tinyimagenet:{root}',
                           'dataset.val_fraction': 0.0}).dataset


def test_tinyimagenet_box_outside_and_empty_class(tmp_path, capsys):
    root = _tiny(tmp_path / 'tiny', box='1 1 6 8')
    ann = root / 'val' / 'val_annotations.txt'
    with pytest.raises(CamjaxError, match=f'^{ann}:1: box 1,1,6,8 is outside the image'):
        open_splits(_tiny_config(root))
    ann.write_text(ann.read_text().replace('6\t8', '6\t7'))
    assert open_splits(_tiny_config(root)).sizes == {'train': 4, 'val': 0, 'test': 2}
    for f in (root / 'train' / 'n02' / 'images').iterdir():
        f.unlink()
    message = f'class folder {root / "train" / "n02" / "images"} has no image files'
    with pytest.raises(CamjaxError, match=f'^{message}'):
        open_splits(_tiny_config(root))
    assert check_dataset(_tiny_config(root)) == 1
    out = capsys.readouterr().out
    assert re.search(r'^class n02 +0 +1$', out, re.M) and message in out


def _attr(root, rows):
    """attrfolder with images/p<i>.png for rows 0..3 and train.csv / test.csv."""
    for i in range(4):
        _png(root / 'images' / f'p{i}.png', 10 * i)
    for split in ('train', 'test'):
        (root / f'{split}.csv').write_text('image,hat,bag\n' + ''.join(
            f'{path},{values}\n' for path, values in rows))
    return root


def _attr_config(root):
    return small_config(**{'dataset.name': f'attrfolder:{root}',
                           'loss': (dict(name='weighted_sigmoid_ce'),)}).dataset


GOOD_ROWS = [('p0.png', '0,1'), ('p1.png', '1,0'), ('p2.png', '1,1'), ('p3.png', '0,0')]


@pytest.mark.parametrize('path, message', [
    ('/etc/x.png', "image path '/etc/x.png' is absolute"),
    ('../../outside.png', "image path '../../outside.png' is not inside"),
    ('p1/../../outside.png', "image path 'p1/../../outside.png' is not inside")])
def test_attrfolder_path_outside_the_images_folder_names_file_and_line(tmp_path, path, message):
    root = _attr(tmp_path / 'attr', GOOD_ROWS[:2] + [(path, '0,1')] + GOOD_ROWS[2:])
    _png(tmp_path / 'outside.png', 0)
    with pytest.raises(CamjaxError, match=f'^{root / "train.csv"}:4: {message}'):
        open_splits(_attr_config(root))


def test_check_lists_every_problem_of_an_image_folder(tmp_path, capsys):
    root = _folder(tmp_path / 'clean')
    assert check_dataset(_config(root)) == 0
    out = capsys.readouterr().out
    assert re.search(r'^class a +4 +4$', out, re.M) and re.search(r'^images +8 +8$', out, re.M)
    assert out.rstrip().endswith('no problems found')
    assert check_dataset(small_config().dataset) == 0  # TFDS kinds: nothing to scan
    assert capsys.readouterr().out.startswith('synthetic: nothing to scan')

    (root / 'train' / 'a' / '1.png').unlink()
    for name, make_bad in zip(('1', '4', '5'), BAD_FILES.values(), strict=True):
        make_bad(root / 'train' / 'a' / f'{name}.jpg')
    (root / 'train' / 'c').mkdir()
    (root / 'test' / 'boxes.csv').write_text('a/0.png,1,1,8,8\nb/0.png,3,1,2,2\nb/1.png,0,0,7,7\n')
    assert check_dataset(_config(root, **{'dataset.boxes_file': 'boxes.csv'})) == 6
    out = capsys.readouterr().out
    for expected in (f'corrupt image {root}/train/a/1.jpg: ', f'corrupt image {root}/train/a/4.jpg',
                     f'corrupt image {root}/train/a/5.jpg', f'class folder {root}/train/c has no',
                     f'{root}/test/boxes.csv:1: box 1,1,8,8 is outside',
                     f'{root}/test/boxes.csv:2: box '):
        assert expected in out
    lines = out.splitlines()
    assert sum(line.startswith('corrupt image  ') for line in lines) == 1  # one row per kind
    for row in ('class a +6 +4', 'class c +0 +0', 'images +10 +8', 'corrupt image +3 +0 ',
                'empty class +1 +0 ', 'bad box +0 +2 ', 'problems +4 +2'):
        assert re.search(f'^{row}', out, re.M), row
    assert out.rstrip().endswith('6 problems found')


def test_check_reports_both_problems_of_an_attrfolder_row(tmp_path, capsys):
    root = _attr(tmp_path / 'attr', GOOD_ROWS + [('/etc/x.png', '2,1'), ('p9.png', '0,0')])
    assert check_dataset(_attr_config(root)) == 6  # each csv: a value, a path, a missing image
    out = capsys.readouterr().out
    csv = root / 'train.csv'
    for expected in (f"{csv}:6: attribute 'hat' is '2'", f"{csv}:6: image path '/etc/x.png'",
                     f'{csv}:7: the listed image does not exist'):
        assert expected in out
    assert re.search(r'^attribute hat +2 +2$', out, re.M)


def test_check_mode_on_the_command_line_exits_1_and_writes_nothing(tmp_path):
    root = _folder(tmp_path / 'data')
    BAD_FILES['empty file'](root / 'test' / 'b' / '9.png')
    workdir = tmp_path / 'run'
    result = run_cli('--config=configs/default.py', '--mode=check',
                     f'--config.dataset.name=imagefolder:{root}', f'--workdir={workdir}',
                     timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f'corrupt image {root}/test/b/9.png' in result.stdout
    assert result.stdout.rstrip().endswith('1 problem found')
    assert not workdir.exists()


def test_a_run_stops_on_a_bad_image_then_resumes_skipping_and_counting_it(tmp_path):
    from camjax.checkpoint import saved_steps
    from camjax.rundir import read_records
    from camjax.training.train import train_and_evaluate

    root = _folder(tmp_path / 'data')
    (root / 'train' / 'b' / '0.png').unlink()
    bad = root / 'train' / 'b' / '0.jpg'
    BAD_FILES['text file'](bad)
    (root / 'test' / 'a' / '1.png').unlink()
    BAD_FILES['empty file'](root / 'test' / 'a' / '1.jpg')

    def config(policy):
        return small_config(**{
            'dataset.name': f'imagefolder:{root}', 'dataset.val_fraction': 0.0,
            'dataset.on_bad_image': policy, 'model': {'name': 'linear'},
            'train.batch_size': 4, 'train.num_steps': 6, 'train.log_every': 2,
            'train.eval_every': 6, 'train.checkpoint_every': 1})

    workdir = str(tmp_path / 'run')
    with pytest.raises(CamjaxError, match=f'corrupt image {bad}'):
        train_and_evaluate(config('error'), workdir, open_splits(config('error').dataset))
    assert len(saved_steps(workdir)) <= 1  # the first epoch's bad batch stops it early
    skip = config('skip')  # a safe change on an existing workdir
    train_and_evaluate(skip, workdir, open_splits(skip.dataset))
    records = read_records(workdir)
    assert [r['kind'] for r in records if r['kind'] == 'config_change'] == ['config_change']
    trains = [r for r in records if r['kind'] == 'train']
    assert sum(r['bad_images'] for r in trains) == 3  # once per epoch of 2 steps
    evals = [r for r in records if r['kind'] == 'eval']
    assert evals[-1]['test']['bad_images'] == 1  # left out: 7 of the 8 test images count
