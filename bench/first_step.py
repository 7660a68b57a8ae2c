"""Time to the first training step of a command-line run, with JAX's
persistent compilation cache cold and warm (camjax/compile_cache.py).

Runs `python -m camjax.main --config=CONFIG` (logging every step) and times,
from process start, the first 'step 1/' progress line, then stops the run
with SIGTERM. In order, sharing one fresh cache directory:
  cold    an empty cache: every program is compiled and stored
  repeat  the same command in a new workdir: programs come from the cache
  resume  the same command in the repeat's workdir: it resumes from the
          checkpoint SIGTERM saved, and its first step is step N+1
A warm-up run with the cache off comes first, so that the dataset is prepared
and the Python imports are in the page cache for all three.

  python bench/first_step.py                          # configs/default.py
  python bench/first_step.py --config configs/cifar10_resnet20.py:smoke
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_to_first_step(config: str, workdir: str, cache: str, timeout: float) -> float:
    """Seconds from start to the first training progress line; the run is then
    stopped with SIGTERM (it saves a checkpoint and exits)."""
    env = dict(os.environ, CAMJAX_CACHE=cache)
    env.pop('JAX_COMPILATION_CACHE_DIR', None)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, '-m', 'camjax.main', f'--config={config}', f'--workdir={workdir}',
         '--config.train.log_every=1'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds, seen = None, []
    for line in proc.stdout:
        seen.append(line)
        if re.match(r'step \d+/', line):
            seconds = time.perf_counter() - start
            proc.send_signal(signal.SIGTERM)
            break
        if time.perf_counter() - start > timeout:
            break
    proc.stdout.read()
    if proc.wait() not in (0, 130) or seconds is None:
        proc.kill()
        sys.exit(f'run failed or printed no step line:\n{"".join(seen)[-2000:]}')
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/default.py')
    parser.add_argument('--timeout', type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix='camjax-first-step-') as tmp:
        cache = os.path.join(tmp, 'xla')
        time_to_first_step(args.config, os.path.join(tmp, 'warmup'), 'off', args.timeout)
        cold = time_to_first_step(args.config, os.path.join(tmp, 'a'), cache, args.timeout)
        repeat = time_to_first_step(args.config, os.path.join(tmp, 'b'), cache, args.timeout)
        resume = time_to_first_step(args.config, os.path.join(tmp, 'b'), cache, args.timeout)
        entries = len(os.listdir(cache))
    print(f'time to the first step of {args.config} ({entries} cached programs):')
    print(f'  cold cache   {cold:6.1f} s')
    print(f'  repeat       {repeat:6.1f} s   {cold / repeat:4.1f}x faster')
    print(f'  resume       {resume:6.1f} s   {cold / resume:4.1f}x faster')


if __name__ == '__main__':
    main()
