"""Fault injection: kill a tiny camjax training run at random moments, some
mid-save, restart it each time with the same command, and check that it ends
exactly where a run that was never interrupted ends.

    python bench/fault_injection.py [--cycles 20] [--seed 0] [--workdir DIR]

Each cycle starts the CLI, waits until a random step (one of the next
2 x checkpoint interval) has been logged, waits a further random 0-0.4 s (a save is often in
flight then) and sends SIGKILL; every fourth cycle sends SIGTERM instead,
which must save, print one line and exit 0, and every tenth SIGINT (exit
130). It prints the cycles survived,
whether each restart resumed from the newest complete save, the steps lost
per kill (the steps a killed process had logged beyond the step its
successor resumed from) against the checkpoint interval, how many kills
found a save in flight, and whether the final params and metrics.jsonl
(timings and 'resume' markers aside) are identical to the uninterrupted run's.
tests/test_resume_kill.py runs the same cycles, fewer of them.
"""

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS, CHECKPOINT_EVERY = 24, 2  # the run's length when not given
ARGS = ('--config=configs/default.py', '--config.dataset.image_size=32',
        '--config.dataset.synthetic.num_train=480', '--config.dataset.synthetic.num_test=96',
        '--config.model.width=8', '--config.model.stem_stride=1',
        '--config.train.batch_size=32', f'--config.train.checkpoint_every={CHECKPOINT_EVERY}',
        '--config.train.eval_every=12', '--config.train.log_every=1')
STEP_LINE = re.compile(r'^step (\d+)/')
RESUMED_LINE = re.compile(r'^resumed from step (\d+)')


def steps_for(cycles: int) -> int:
    """A run long enough that `cycles` signals land before it ends (each
    cycle advances it by about 3 steps)."""
    return max(TOTAL_STEPS, 4 * cycles + 8)


def _command(workdir: str, total_steps: int) -> list[str]:
    return [sys.executable, '-m', 'camjax.main', *ARGS,
            f'--config.train.num_steps={total_steps}', f'--workdir={workdir}']


def _save_in_flight(workdir: str) -> bool:
    """Does an unfinished Orbax save (a tmp directory) exist?"""
    for sub in ('checkpoints', 'best'):
        path = os.path.join(workdir, sub)
        if os.path.isdir(path) and any('tmp' in name for name in os.listdir(path)):
            return True
    return False


class _Watched:
    """A CLI process whose stdout is read line by line in a thread."""

    def __init__(self, workdir: str, total_steps: int):
        self.proc = subprocess.Popen(_command(workdir, total_steps), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.last_step, self.resumed_from, self._stderr = 0, 0, []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            if m := STEP_LINE.match(line):
                self.last_step = int(m.group(1))
            elif m := RESUMED_LINE.match(line):
                self.resumed_from = int(m.group(1))

    def _read_stderr(self):
        self._stderr.extend(self.proc.stderr)

    def finish(self, timeout: float) -> int:
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=30)
        self.stderr = ''.join(self._stderr)
        return self.proc.returncode


EXIT_STATUS = {'SIGKILL': -signal.SIGKILL, 'SIGTERM': 0, 'SIGINT': 130}


def signal_plan(cycles: int) -> list[str]:
    """SIGKILL, with SIGTERM every fourth cycle and SIGINT every tenth."""
    return ['SIGINT' if c % 10 == 9 else 'SIGTERM' if c % 4 == 3 else 'SIGKILL'
            for c in range(cycles)]


def run_cycles(workdir: str, signals: list[str], *, rng: random.Random,
               total_steps: int = TOTAL_STEPS, timeout: float = 600) -> list[dict]:
    """Stop a run in `workdir` once with each of `signals`, restarting it
    each time, then run it to completion. Returns one dict per cycle: the
    signal, the target step, the step the process had logged when the signal
    was sent, whether a save was in flight, its exit status and stderr, and
    the step its successor resumed from."""
    results, resumed_from = [], 0
    for name in signals:
        run = _Watched(workdir, total_steps)
        # A random step among the next few, so that many cycles fit in one run.
        target = min(resumed_from + rng.randint(1, 2 * CHECKPOINT_EVERY), total_steps - 2)
        deadline = time.time() + timeout
        while run.last_step < target and run.proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.4))
        in_flight = _save_in_flight(workdir)
        run.proc.send_signal(getattr(signal, name))
        status = run.finish(timeout)
        resumed_from = _newest_complete_save(workdir)
        results.append({'signal': name, 'target': target, 'logged': run.last_step,
                        'mid_save': in_flight, 'status': status, 'stderr': run.stderr,
                        'started_from': run.resumed_from, 'newest_complete': resumed_from})
        if run.last_step >= total_steps:
            break  # it finished before the signal came
    final = _Watched(workdir, total_steps)
    if final.finish(timeout) != 0:
        raise RuntimeError(f'the final run failed: {final.stderr[-2000:]}')
    # Steps lost by each kill: logged by the killed process, redone by the next.
    starts = [r['started_from'] for r in results[1:]] + [final.resumed_from]
    for r, start in zip(results, starts, strict=True):
        r['resumed_from'] = start
        r['lost'] = max(r['logged'] - start, 0)
    return results


def _newest_complete_save(workdir: str) -> int:
    """The newest finished save's step: what the next start must resume from
    (Orbax renames a save's directory to its step only once it is complete)."""
    path = os.path.join(workdir, 'checkpoints')
    steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
    return max(steps, default=0)


def run_straight(workdir: str, total_steps: int = TOTAL_STEPS, timeout: float = 600) -> None:
    result = subprocess.run(_command(workdir, total_steps), cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f'the uninterrupted run failed: {result.stderr[-2000:]}')


def identical(straight: str, killed: str) -> tuple[bool, bool]:
    """(final params bit-identical, metrics.jsonl identical but for timings
    and 'resume' markers)."""
    import jax
    import numpy as np

    from camjax.checkpoint import restore_model_variables
    from camjax.rundir import read_records

    a, b = restore_model_variables(straight), restore_model_variables(killed)
    same_params = all(np.array_equal(x, y) for x, y in
                      zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    def comparable(workdir):
        return [{k: v for k, v in r.items() if k != 'images_per_s'}
                for r in read_records(workdir) if r['kind'] != 'resume']

    return same_params, comparable(straight) == comparable(killed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cycles', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workdir', default='')
    args = parser.parse_args()
    base = args.workdir or tempfile.mkdtemp(prefix='camjax-faults-')
    straight, killed = os.path.join(base, 'straight'), os.path.join(base, 'killed')
    t0, total_steps = time.time(), steps_for(args.cycles)
    run_straight(straight, total_steps)
    results = run_cycles(killed, signal_plan(args.cycles), rng=random.Random(args.seed),
                         total_steps=total_steps)
    same_params, same_metrics = identical(straight, killed)
    kills = [r for r in results if r['signal'] == 'SIGKILL']
    terms = [r for r in results if r['signal'] != 'SIGKILL']
    lost = [r['lost'] for r in kills]
    print(f'fault injection: {len(results)} cycles ({len(kills)} SIGKILL, {len(terms)} '
          f'SIGTERM/SIGINT), {total_steps} steps, checkpoint every {CHECKPOINT_EVERY}, '
          f'{time.time() - t0:.0f} s, workdir {base}')
    survived = [r for r in results if r['resumed_from'] == r['newest_complete']
                and r['status'] == EXIT_STATUS[r['signal']]]
    print(f'  cycles survived: {len(survived)}/{len(results)} (the expected exit status, and '
          'the restart resumed from the newest complete save)')
    if lost:
        mid_save = sum(r['mid_save'] for r in kills)
        print(f'  steps lost per SIGKILL: max {max(lost)}, mean {statistics.mean(lost):.2f}, '
              f'against a checkpoint interval of {CHECKPOINT_EVERY} (saves are asynchronous: '
              f'a kill also loses the steps of a save in flight, as {mid_save} of {len(kills)} '
              'kills found one)')
    term_ok = sum(r['status'] == EXIT_STATUS[r['signal']] and r['lost'] == 0 for r in terms)
    print(f'  SIGTERM/SIGINT: {term_ok}/{len(terms)} exited 0/130 having saved the step they '
          'stopped at')
    print(f'  final params identical: {same_params}; metrics.jsonl identical: {same_metrics}')
    ok = same_params and same_metrics and len(survived) == len(results) == len(terms) + len(kills)
    sys.exit(0 if ok and term_ok == len(terms) else 1)


if __name__ == '__main__':
    main()
