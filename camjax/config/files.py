"""Config files (configs/*.py) loaded outside the command line, as
`--config=FILE[:variant]` loads them: `get_config(variant or None)`."""

import importlib.util
import os

from camjax.errors import CamjaxError


def load_config_file(arg: str):
    """The ConfigDict of `arg` = 'path/to/file.py[:variant,words]'; a
    CamjaxError naming the file when it is missing or raises."""
    path, _, variant = arg.partition(':')
    if not os.path.isfile(path):
        raise CamjaxError(f'config file {path!r} does not exist')
    spec = importlib.util.spec_from_file_location('camjax_config_file', path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config(variant or None)
    except CamjaxError:
        raise
    except Exception as e:  # noqa: BLE001 -- config files may raise anything
        raise CamjaxError(f'could not load config {arg!r}: {type(e).__name__}: '
                          f'{" ".join(str(e).split())}') from None
