"""Progress on the terminal (a bar with the epoch and ETA) or one log line per epoch."""
import logging
import os
import sys
import time

log = logging.getLogger("expkit.trainers.torch")  # the epoch lines keep the trainer's name


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A progress bar with the epoch, the ETA and, in a sweep, the job (#k/N: Hydra's job number of
    N, set by the sweeper as EXPKIT_JOB) on a terminal; one plain log line per epoch, ETA included, otherwise."""
    def __init__(self, epoch, epochs, steps, started, excluded=lambda: 0.0):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.first = started  # (first epoch trained by this process, its start time): the pace so far
        self.excluded = excluded  # seconds since then that are not the pace (compiling the step: once)
        self.tty = sys.stderr.isatty()
        self.every = max(1, steps // 50)
        job = os.environ.get("EXPKIT_JOB")
        self.job = f"job {job} " if job else ""

    def eta(self, done_steps):
        """Seconds left in the run, from this run's pace so far."""
        first_epoch, t_start = self.first
        done = (self.epoch - first_epoch) * self.steps + done_steps
        if done <= 0:
            return None
        left = (self.epochs - self.epoch) * self.steps - done_steps
        return (time.perf_counter() - t_start - self.excluded()) / done * left

    def update(self, i):
        if self.tty and i % self.every == 0:
            k = 30 * (i + 1) // self.steps
            eta = self.eta(i + 1)
            sys.stderr.write(f"\r{self.job}epoch {self.epoch + 1}/{self.epochs} [{'#' * k}{'.' * (30 - k)}] "
                             f"{i + 1}/{self.steps}" + (f"  ETA {_clock(eta)}" if eta is not None else ""))
            sys.stderr.flush()

    def done(self, active, epoch, dt):
        if self.tty:
            sys.stderr.write("\r\033[K")
        eta = self.eta(self.steps)
        tail = f"  ETA {_clock(eta)}" if eta else ""
        rows = [m.hist.rows[-1] for m in active]
        if len(rows) == 1:
            r = rows[0]
            log.info("%sepoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | test acc %.4f  (%.2fs)%s",
                     self.job, r["epoch"], self.epochs, r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"],
                     r["test_acc"], r["time_s"], tail)
        else:
            log.info("%sepoch %d/%d  %d members  val acc %s  (%.2fs)%s", self.job, epoch + 1, self.epochs, len(rows),
                     " ".join(f"{r['val_acc']:.4f}" for r in rows), dt, tail)
