"""TensorBoard event files of a training run (``TrainConfig.log_dir``).

Every record the loop appends to its history (every ``log_every`` steps: loss, explained
variance per modality, reconstruction errors, the l2,1 term where the method has one,
AuxK, dead latents, learning rate, throughput) becomes one scalar per key, tagged
``train/<key>`` (the column names of ``train_log.csv``), at the record's step. Only the
main process writes. The records of a run resumed at step ``s`` have steps ``> s``, so its
writer is opened with ``purge_step = s + 1``: TensorBoard, reading the folder, drops what
an earlier writer logged after the checkpoint (a crashed run's last records) instead of
showing those steps twice, and a run started over in the same folder (``s = 0``) replaces
the earlier one.

``tensorboard`` is an optional dependency (``pip install -e ".[tensorboard]"``); it is
imported only when a ``log_dir`` is set.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

__all__ = ["TensorBoardLog", "tensorboard_log", "tensorboard_missing", "require_tensorboard", "INSTALL_HINT"]

INSTALL_HINT = 'pip install -e ".[tensorboard]"'


def _summary_writer():
    from torch.utils.tensorboard import SummaryWriter  # raises ImportError without tensorboard

    return SummaryWriter


def tensorboard_missing() -> str | None:
    """None when TensorBoard event files can be written, else the reason they cannot."""
    try:
        _summary_writer()
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def require_tensorboard(log_dir: str | Path):
    """TensorBoard's ``SummaryWriter`` class, or an :class:`ImportError` saying how to install it."""
    try:
        return _summary_writer()
    except ImportError as e:
        raise ImportError(f"log_dir={str(log_dir)!r} needs the tensorboard package: {INSTALL_HINT}") from e


class TensorBoardLog:
    """One run's event files in ``log_dir``; :meth:`write` one history record at a time."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, flush_secs: int = 10):
        self.log_dir = Path(log_dir)
        self.writer = require_tensorboard(log_dir)(str(log_dir), purge_step=purge_step, flush_secs=flush_secs)

    def write(self, record: Mapping[str, float]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(f"train/{key}", float(value), global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@contextmanager
def tensorboard_log(log_dir: str | Path | None, start: int = 0) -> Iterator[TensorBoardLog | None]:
    """A :class:`TensorBoardLog` in ``log_dir`` for a run that starts (or resumes) at step
    ``start`` (None when ``log_dir`` is None: nothing is imported or written), closed on the
    way out, exceptions included."""
    if log_dir is None:
        yield None
        return
    log = TensorBoardLog(log_dir, purge_step=start + 1)
    try:
        yield log
    finally:
        log.close()
