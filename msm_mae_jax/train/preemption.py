"""SIGTERM, the preemption notice of schedulers and cloud VMs: save, then stop, non-zero.

Both loops (pre-training and fine-tuning) install one `Preemption` while they run: SIGTERM
only sets a flag, the loop saves a checkpoint at the next step boundary (on a multi-host run
all processes at the same step, through jax's preemption sync) and returns, and the command
exits with `EXIT_PREEMPTED`: not 0, so `train && export` or a scheduler never takes the
unfinished run for a finished one; running the same command again continues it.
"""

from __future__ import annotations

import signal
import threading

EXIT_PREEMPTED = 3  # stopped by SIGTERM after saving; the same command continues the run


class Preemption:
    """SIGTERM -> `reached(step)` is True from the next step on (all processes agree)."""

    def __init__(self, manager):  # noqa: ANN001 (an orbax CheckpointManager)
        self.flag = False
        self.manager = manager
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):  # noqa: ANN001
        self.flag = True

    def reached(self, step: int) -> bool:
        import jax

        if jax.process_count() > 1:  # jax's preemption sync: same step on every process
            return self.flag or bool(self.manager.reached_preemption(step))
        return self.flag

    def restore(self) -> None:
        """Puts back the SIGTERM handler that was there before."""
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None


def stopped_message(workdir: str, step: int | None = None) -> str:
    """The one line a command prints when a SIGTERM stopped it."""
    where = f"step {step} saved" if step is not None else "state saved"
    return (
        f"stopped by SIGTERM (preemption); {where} in {workdir}: run the same command again "
        f"to continue (exit status {EXIT_PREEMPTED})"
    )
