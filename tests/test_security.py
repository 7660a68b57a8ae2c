"""Security properties of the camjax package.

1. No code path can unpickle or evaluate text: no `pickle` (or a relative)
   imported or used, no `np.load(..., allow_pickle=<not False>)`, no `eval` /
   `exec` / `compile` builtins. Found with `ast`, so `jax.eval_shape`,
   `model.eval()` and the words in strings or comments are not matches.
2. No name from a config or a data file (run names from `evaluation.runs`,
   class names from a dataset's words.txt or folder names) can make camjax
   write outside its workdir.
"""

import ast
import os
import shutil

import pytest
from conftest import ROOT, file_hashes

PICKLE_MODULES = {'pickle', 'cPickle', '_pickle', 'cloudpickle', 'dill', 'shelve', 'joblib'}
EVAL_BUILTINS = {'eval', 'exec', 'compile'}


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ''


def forbidden_uses(source: str) -> list[str]:
    """'line N: what' for every use of pickle or of eval / exec / compile in
    `source` (Python code)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, 'lineno', 0)
        if isinstance(node, ast.Import):
            found += [f'line {line}: import {a.name}' for a in node.names
                      if a.name.split('.')[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module \
                and node.module.split('.')[0] in PICKLE_MODULES:
            found.append(f'line {line}: from {node.module} import ...')
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if 'pickle' in name.lower():  # pickle.loads, pd.read_pickle, obj.to_pickle, ...
                found.append(f'line {line}: {name}')
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        builtin = isinstance(node.func, ast.Name) or (
            isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ('builtins', '__builtins__'))
        if name in EVAL_BUILTINS and builtin:
            found.append(f'line {line}: {name}()')
        for keyword in node.keywords:
            if keyword.arg == 'allow_pickle' and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                found.append(f'line {line}: {name}(..., allow_pickle=...)')
        if name in ('__import__', 'import_module') and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str)
                and a.value.split('.')[0] in PICKLE_MODULES for a in node.args):
            found.append(f'line {line}: {name}() of a pickle module')
    return found


CAUGHT = [
    'import pickle',
    'import pickle as p',
    'import cloudpickle',
    'from pickle import loads',
    'from _pickle import Unpickler',
    'import dill.settings',
    'data = pickle.loads(blob)',
    'frame = pd.read_pickle(path)',
    'arrays = np.load(path, allow_pickle=True)',
    'arrays = numpy.load(path, allow_pickle=flag)',
    'eval("1 + 1")',
    'exec(code, {})',
    'code = compile(text, "<config>", "exec")',
    'builtins.eval(text)',
    '__import__("pickle")',
    'importlib.import_module("cPickle")',
]
ALLOWED = [
    'shapes = jax.eval_shape(f, x)',
    'model.eval()',
    'spec.loader.exec_module(module)',
    'fn = jax.jit(f).lower(x).compile()',
    'pattern = re.compile("a+")',
    'arrays = np.load(path)',
    'arrays = np.load(path, allow_pickle=False)',
    'value = ast.literal_eval(text)',
    '# eval(x) and pickle.loads(y) in a comment',
    's = "exec(x); import pickle"',
    'def evaluate(evaluation):\n    return evaluation.eval_batch_size',
]


@pytest.mark.parametrize('snippet', CAUGHT)
def test_the_detector_catches(snippet):
    assert forbidden_uses(snippet), snippet


@pytest.mark.parametrize('snippet', ALLOWED)
def test_the_detector_allows(snippet):
    assert forbidden_uses(snippet) == [], snippet


def test_no_pickle_eval_or_exec_in_camjax():
    package = os.path.join(ROOT, 'camjax')
    found, checked = [], 0
    for root, _, names in os.walk(package):
        for name in sorted(n for n in names if n.endswith('.py')):
            path = os.path.join(root, name)
            with open(path) as f:
                found += [f'{os.path.relpath(path, ROOT)} {use}'
                          for use in forbidden_uses(f.read())]
            checked += 1
    assert checked > 30  # the walk saw the package
    assert found == []


# ---------------------------------------------------------------------------
# 2. Writes stay inside the workdir
# ---------------------------------------------------------------------------
HOSTILE = ['../../x', '/abs/path', 'a/b', '..', '.', '.hidden', 'x/../../y', '', 'a' * 300,
           'C:\\evil', 'tab\tand\nnewline', 'ünïcode/名前']


def test_safe_filename_is_one_component_inside_the_directory(tmp_path):
    from camjax.analysis.analyze import safe_filename
    names = [safe_filename(n) for n in HOSTILE]
    assert len(set(names)) == len(HOSTILE)  # distinct names stay distinct
    root = os.path.realpath(tmp_path)
    for name in names:
        assert name and name not in ('.', '..') and not name.startswith('.')
        assert os.sep not in name and '/' not in name and '\\' not in name and len(name) < 80
        path = os.path.realpath(os.path.join(root, 'cache', f'{name}-step2-abc'))
        assert os.path.dirname(path) == os.path.join(root, 'cache')
    for plain in ('base', 'refined', 'run_1', 'cifar100_linr_vgg19-train'):
        assert safe_filename(plain) == plain  # readable names are kept as they are


CLASS_NAMES = ('../../x', '/abs/path', 'a/b/..', 'n3 (..)', '$x_$ 5%')  # '$..$': mathtext


def _tiny_imagenet(root, *, per_class: int = 2):
    """A Tiny ImageNet layout whose words.txt names the classes with paths."""
    from PIL import Image
    wnids = [f'n{i:08d}' for i in range(len(CLASS_NAMES))]
    os.makedirs(os.path.join(root, 'val', 'images'))
    (root / 'wnids.txt').write_text(''.join(f'{w}\n' for w in wnids))
    (root / 'words.txt').write_text(''.join(f'{w}\t{n}, other\n'
                                            for w, n in zip(wnids, CLASS_NAMES, strict=True)))
    annotations = []
    for c, wnid in enumerate(wnids):
        images = root / 'train' / wnid / 'images'
        images.mkdir(parents=True)
        boxes = []
        for i in range(per_class):
            Image.new('RGB', (8, 8), (60 * c, 40 * i, 0)).save(images / f'{wnid}_{i}.png')
            Image.new('RGB', (8, 8), (60 * c, 0, 40 * i)).save(root / 'val' / 'images' /
                                                              f'v{c}_{i}.png')
            boxes.append(f'{wnid}_{i}.png 1 1 6 6\n')
            annotations.append(f'v{c}_{i}.png {wnid} 0 0 7 7\n')
        (root / 'train' / wnid / f'{wnid}_boxes.txt').write_text(''.join(boxes))
    (root / 'val' / 'val_annotations.txt').write_text(''.join(annotations))


def test_class_names_that_look_like_paths_are_only_text(tmp_path, monkeypatch):
    """Class names come from data (words.txt here; folder names and CSV
    headers likewise) and are only ever text: in tables, plots and JSON,
    never in a file name. Reading them and drawing the per-class figures and
    the CAM captions writes nothing at all."""
    import numpy as np
    from conftest import small_config

    from camjax.analysis import cam_grid, per_class
    from camjax.analysis.report import Report
    from camjax.data import open_splits
    data = tmp_path / 'data'
    _tiny_imagenet(data)
    work = tmp_path / 'cwd'
    work.mkdir()
    monkeypatch.chdir(work)  # a relative write would land here
    before = file_hashes(tmp_path)
    config = small_config(**{'dataset.name': f'tinyimagenet:{data}', 'dataset.test_split': 'val',
                             'dataset.image_size': 8, 'dataset.val_fraction': 0.0})
    splits = open_splits(config.dataset)
    assert splits.class_names == CLASS_NAMES
    k = len(CLASS_NAMES)
    labels = np.arange(4 * k) % k
    result = per_class.compare_per_class(labels=labels, baseline_pred=labels,
                                         treated_pred=(labels + 1) % k, num_classes=k,
                                         class_names=splits.class_names)
    report = Report('hostile names')
    report.figure(per_class.plot_per_class_deltas(result), 'deltas')
    report.table(per_class.per_class_table_rows(result))
    _, captions = cam_grid.top_negative_captions(np.full(k, 1 / k), 0, splits.class_names)
    report.paragraph(' '.join(captions))
    assert '../../x' in report.html()
    assert file_hashes(tmp_path) == before


def test_analyze_of_runs_with_hostile_names_writes_only_into_its_workdir(tmp_path):
    """Two compared runs with the same base name are named by their full
    paths (one absolute, one through '..'): analyze used to join such a name
    under cache/, an absolute one replacing the whole path, and wrote the
    cached evaluation next to the compared run. Every file analyze writes
    must land in its own workdir, and nothing else may change."""
    from conftest import small_config

    from camjax.analysis.analyze import analyze
    from camjax.data import open_splits
    from camjax.training.train import train_and_evaluate
    # The smoke configs' data, and no boxes: localization (its compiles) is
    # not what this test is about.
    config = small_config(**{'dataset.synthetic.num_train': 96, 'dataset.synthetic.num_test': 32,
                             'dataset.box_key': '', 'train.num_steps': 2,
                             'train.eval_every': 2, 'evaluation.fgsm_eps': ()})
    config.model = {'name': 'linear'}
    first, second = tmp_path / 'A' / 'run', tmp_path / 'B' / 'run'
    train_and_evaluate(config, str(first), open_splits(config.dataset))
    shutil.copytree(first, second)
    workdir = tmp_path / 'compare'
    runs = (str(first), os.path.join(str(tmp_path), 'B', '..', 'B', 'run'))
    analysis = small_config(**{'mode': 'analyze', 'evaluation.runs': runs,
                               'evaluation.fgsm_eps': (), 'evaluation.cam_grid_images': 0,
                               'evaluation.landscape_batches': 0})
    before = file_hashes(tmp_path)
    analyze(analysis, str(workdir))
    after = file_hashes(tmp_path)
    inside = os.path.join('compare', '')
    assert {p: h for p, h in after.items() if not p.startswith(inside)} == before
    written = sorted(p for p in after if p.startswith(inside))
    assert os.path.join('compare', 'report.html') in written
    cached = [p for p in written if p.startswith(os.path.join('compare', 'cache', ''))]
    assert len({os.path.dirname(p) for p in cached}) == 2  # one entry per run, side by side
    assert all(p.count(os.sep) == 3 for p in cached)  # compare/cache/<entry>/<file>
