"""JAX's persistent compilation cache for command-line runs.

On CPU, compiling the train and eval steps takes most of a short run's
start-up; a repeated or resumed run with the same programs loads them from
the cache instead. Where the cache lives, first match wins:
  $CAMJAX_CACHE                    a directory, or 'off' to turn the cache off
  $JAX_COMPILATION_CACHE_DIR       JAX's own setting, respected as it is
  ~/.cache/camjax/xla              the default
"""

import os

import jax

DEFAULT_DIR = '~/.cache/camjax/xla'
OFF = ('off', '0', 'false', 'no', 'none')


def cache_dir(environ=os.environ) -> str | None:
    """The directory command-line runs cache compiled programs in (None: off)."""
    setting = environ.get('CAMJAX_CACHE', '').strip()
    if setting.lower() in OFF:
        return None
    return setting or environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.expanduser(DEFAULT_DIR)


def enable(environ=os.environ) -> str | None:
    """Turn the cache on for this process (before the first compile); returns
    its directory, or None when turned off."""
    directory = cache_dir(environ)
    if directory is None:
        jax.config.update('jax_enable_compilation_cache', False)
        return None
    jax.config.update('jax_compilation_cache_dir', directory)
    # JAX caches only programs that took >= 1 s to compile by default; the
    # eval and checkpoint programs of a small model take less, and a rerun
    # should reach its first step compiling nothing. An explicit JAX setting wins.
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in environ:
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    return directory
