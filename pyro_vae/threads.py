"""The thread policy: how many threads torch's operations use, chosen by timing the work as it
runs.

On a machine with idle cores, two threads take a training step of the default model in about
0.7 × the time of one. On a machine busy with other jobs the same two threads can take 3–13 ×
as long as one: every operation waits at OpenMP's barrier for a thread the system has not
scheduled. OpenMP's passive wait policy rescues the busy case but costs 20 % or more when the
machine is idle, and the load average lags by a minute, so no setting fixed in advance wins
both. :class:`ThreadPolicy` times a few steps at each thread count, keeps the fastest, and
times them again at doubling intervals, or as soon as the steps slow down.

The numbers do not depend on its choice: importing :mod:`pyro_vae` sets MKL's strict
reproducibility mode (``MKL_CBWR=AUTO,STRICT``), whose matrix products give the same bits on
any number of threads, and the counts the policy switches between must first give
bit-identical gradients on the run's first step (:meth:`ThreadPolicy.agree`); where they do
not (oneDNN's convolutions pick their algorithm by thread count), it holds torch's count.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from pyro_vae import checks
from pyro_vae.errors import ConfigTypeError

__all__ = ["ThreadPolicy", "default_threads", "idle_cores", "set_threads", "thread_policy"]

_EXPLICIT: list[int] = []  # the thread count set by set_threads(n), if any


def default_threads() -> int:
    """Torch's thread count when nobody sets one: ``$OMP_NUM_THREADS``, else one per core."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return os.cpu_count() or 1


def idle_cores() -> int:
    """The CPU cores not busy with other work now: the core count minus the one-minute load
    average, rounded, at least 1 (all cores where the load is unknown)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - not on every platform
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def max_threads() -> int:
    """The most threads :func:`set_threads` takes: 1024, or 4 a core where that is more
    (libgomp fails to start some tens of thousands, and the process then crashes)."""
    return max(1024, 4 * (os.cpu_count() or 1))


def set_threads(requested: int | None = None) -> str | None:
    """Fix torch's intra-op threads at ``requested`` (``None``: leave them to
    :class:`ThreadPolicy`). Returns a note for the user when a fixed count outnumbers the
    cores idle now: every op may then wait at OpenMP's barriers for a thread that is not
    running (measured: 412 s against 3.6 s per epoch of the default run, at a load average
    of 5 on 2 cores)."""
    requested = None if requested is None else checks.integer("threads", requested,
                                                               high=max_threads())
    _EXPLICIT.clear()
    if requested is None:
        return None
    torch.set_num_threads(requested)
    _EXPLICIT.append(requested)
    idle = idle_cores()
    if requested <= idle:
        return None
    return (f"note: --threads {requested} with {idle} core(s) idle now (load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): steps may be many times "
            f"slower than with --threads {idle}, or without --threads")


class ThreadPolicy:
    """Torch's thread count for a loop of similar steps, the fastest of ``choices`` as timed
    now (see the module docstring). Wrap each step in :meth:`step`.

    :param choices: thread counts to choose from (default: :meth:`choices_for` torch's).
    :param probe_steps: steps timed at each count (their median decides).
    :param hold_seconds: how long the first choice is kept before the counts are timed again;
        each time the same count wins the hold doubles, up to ``max_hold_seconds``.
    :param slower: re-time early when the median of ``probe_steps`` steps exceeds this
        multiple of what the winning count was timed at.
    """

    def __init__(self, choices: Sequence[int] | None = None, *, probe_steps: int = 5,
                 hold_seconds: float = 2.0, max_hold_seconds: float = 256.0,
                 slower: float = 1.5):
        self.choices = tuple(choices or self.choices_for(torch.get_num_threads()))
        self.probe_steps, self.slower = probe_steps, slower
        self.first_hold, self.max_hold = hold_seconds, max_hold_seconds
        self.hold, self.chosen = hold_seconds, self.choices[-1]
        self.history: list[tuple[int, dict[int, float]]] = []  # (step, seconds per step)
        self._steps, self._plan, self._timed, self._recent = 0, self._probe_plan(), {}, []
        self._held = 0.0

    @staticmethod
    def choices_for(threads: int) -> tuple[int, ...]:
        """``threads`` and its halvings down to 1: 4 → (4, 2, 1)."""
        out = [threads]
        while out[-1] > 1:
            out.append(out[-1] // 2)
        return tuple(out)

    @classmethod
    def default(cls) -> ThreadPolicy | None:
        """The policy for a loop, or ``None`` where the thread count is not the policy's to
        choose: set with :func:`set_threads` or ``$OMP_NUM_THREADS``, or one core."""
        if _EXPLICIT or "OMP_NUM_THREADS" in os.environ or torch.get_num_threads() < 2:
            return None
        return cls()

    @property
    def active(self) -> bool:
        return len(self.choices) > 1

    def agree(self, compute: Callable[[], Sequence[torch.Tensor]]) -> bool:
        """Run ``compute`` (from the same seed) at every thread count; keep only the policy's
        freedom to switch if all give the same bits. Restores torch's random state."""
        if not self.active:
            return True
        results = []
        for threads in self.choices:
            torch.set_num_threads(threads)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                results.append([t.detach().clone() for t in compute()])
        torch.set_num_threads(self.chosen)
        same = all(len(r) == len(results[0]) and all(torch.equal(a, b) for a, b in
                                                     zip(r, results[0], strict=True))
                   for r in results[1:])
        if not same:
            self.choices = (self.choices[0],)
            self.chosen = self.choices[0]
        return same

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Time the step inside at the thread count the policy has set."""
        torch.set_num_threads(self.chosen)
        t0 = time.perf_counter()
        yield
        if self.active:
            self._record(time.perf_counter() - t0)

    def _probe_plan(self) -> list[tuple[int, bool]]:
        """(threads, whether the step only warms up) for each step of the next probe: the
        counts in turn, so that a passing change in the load hits all alike; the count in use
        first, so that a count that loses by far is dropped after one step."""
        first = not self.history
        warm = 2 if first else 0  # the first steps at a count allocate
        rounds = 2 * self.probe_steps if first else self.probe_steps
        order = [self.chosen, *(c for c in self.choices if c != self.chosen)]
        return [(c, True) for c in order for _ in range(warm)] + [
            (c, False) for _ in range(rounds) for c in order]

    def _record(self, seconds: float) -> None:
        self._steps += 1
        if self._plan:
            self._probe(seconds)
        else:
            self._hold(seconds)

    def _probe(self, seconds: float) -> None:
        threads, warming = self._plan.pop(0)
        if not warming:
            best = min((statistics.median(v) for v in self._timed.values()), default=None)
            self._timed.setdefault(threads, []).append(seconds)
            if best is not None and seconds > 3 * best:  # lost already: stop timing it
                self._plan = [p for p in self._plan if p[0] != threads]
        if self._plan:
            self.chosen = self._plan[0][0]
            return
        medians = {c: statistics.median(v) for c, v in self._timed.items()}
        winner = min(medians, key=medians.get)
        previous = self.history[-1][1] if self.history else None
        same = previous is not None and min(previous, key=previous.get) == winner
        self.hold = min(2 * self.hold, self.max_hold) if same else self.first_hold
        self.history.append((self._steps, medians))
        self.chosen, self._timed, self._recent, self._held = winner, {}, [], 0.0

    def _hold(self, seconds: float) -> None:
        self._held += seconds
        self._recent = [*self._recent[-(self.probe_steps - 1):], seconds]
        timed = self.history[-1][1][self.chosen]
        slowed = (len(self._recent) == self.probe_steps
                  and statistics.median(self._recent) > self.slower * timed)
        if slowed:
            self.hold = self.first_hold
        if slowed or self._held >= self.hold:
            self._plan = self._probe_plan()

    def describe(self) -> str:
        """What it chose, in a line: ``"2 threads (1: 7.1 ms, 2: 5.2 ms a step)"``."""
        if not self.history:
            return f"{self.chosen} thread{'s' if self.chosen > 1 else ''}"
        medians = self.history[-1][1]
        timed = ", ".join(f"{c}: {1e3 * s:.1f} ms" for c, s in sorted(medians.items()))
        return f"{self.chosen} thread{'s' if self.chosen > 1 else ''} ({timed} a step)"


def thread_policy(threads, first_step: Callable[[], Sequence[torch.Tensor]]
                  ) -> ThreadPolicy | None:
    """A loop's policy from its ``threads`` argument: ``"auto"`` (:meth:`ThreadPolicy.default`),
    a number (fixed), a :class:`ThreadPolicy`, or ``None`` (leave torch's count alone). A
    policy may switch only between counts that give the same bits for ``first_step``."""
    if threads is None or isinstance(threads, int):
        if threads is not None:
            torch.set_num_threads(checks.integer("threads", threads, high=max_threads()))
        return None
    if threads == "auto":
        threads = ThreadPolicy.default()
    elif not isinstance(threads, ThreadPolicy):
        raise ConfigTypeError(f"threads must be 'auto', a number, a ThreadPolicy or None; got "
                              f"{threads!r}")
    if threads is not None and threads.active:
        threads.agree(first_step)
    return threads
