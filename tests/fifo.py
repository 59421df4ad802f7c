"""FIFOs in tests: a read that should have been refused must fail the test, not block it."""

import os
import threading
import time


def unblock_readers(path: str, seconds: float) -> None:
    """Opens the FIFO `path` for writing (then closes it) once a reader waits on it, within
    `seconds`: a reader that opened it by mistake then reads an empty file instead of waiting
    forever for a writer."""

    def run():
        end = time.time() + seconds
        while time.time() < end:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # no reader yet (ENXIO)
                time.sleep(0.05)

    threading.Thread(target=run, daemon=True).start()
