"""A readable console for long local runs: stages and progress bars on the terminal, every
other line (Ray, the workers, Ray Data's progress bars, library warnings) in a log file.

    with QuietConsole(out / "demo.log") as console:
        console.stage(4, 8, "training")
        with console.follow_steps(total=2000):   # a bar fed by the workers' "step N" lines
            launch(cfg)
    console.say("full logs:", console.log_path)

Redirection is at the file-descriptor level (``os.dup2``), so output of Ray's own
processes forwarded to the driver and of C extensions lands in the log too.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

STEP_LINE = re.compile(rb"\bstep (\d+) ")


class QuietConsole:
    """Send fds 1 and 2 to ``log_path`` while open; :meth:`say` and bars go to the terminal."""

    def __init__(self, log_path: Path, *, enabled: bool = True):
        self.log_path = Path(log_path)
        self.enabled = enabled
        self.term: TextIO = sys.stdout
        self._saved: tuple[int, int] | None = None

    def __enter__(self) -> QuietConsole:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.enabled:
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.term = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self.term.close()
        self.term = sys.stdout
        self._saved = None

    def say(self, *parts: object) -> None:
        """A line on the terminal (and in the log, so the log reads as a whole)."""
        text = " ".join(str(p) for p in parts)
        print(text, file=self.term, flush=True)
        if self._saved is not None:
            print(text, flush=True)

    def stage(self, k: int, n: int, text: str) -> float:
        """``[k/n] text``; returns the start time."""
        self.say(f"\n[{k}/{n}] {text}")
        return time.perf_counter()

    @contextmanager
    def follow_steps(self, total: int, desc: str = "training"):
        """A tqdm bar on the terminal that follows ``step N`` lines written to the log."""
        from tqdm import tqdm

        stop = threading.Event()
        bar = tqdm(total=total, desc=desc, unit="step", file=self.term, dynamic_ncols=True)

        def tail() -> None:
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            while not stop.wait(1.0):
                with open(self.log_path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                cut = chunk.rfind(b"\n") + 1
                offset += cut
                steps = [int(m) for m in STEP_LINE.findall(chunk[:cut])]
                if steps and max(steps) > bar.n:
                    bar.update(min(max(steps), total) - bar.n)

        thread = threading.Thread(target=tail, daemon=True)
        thread.start()
        try:
            yield bar
        finally:
            stop.set()
            thread.join(timeout=5)
            bar.close()


def compare_with_reference(metrics: dict[str, float]) -> list[str]:
    """Sentences that read each generated metric against its real-data reference point.

    FVD against ``.../real_floor`` (real clips against other real clips: the best a model
    can reach under this protocol) and ``.../static`` (each real video's first frame held:
    no motion at all); every ``real/X`` against the generated metric of the same name; the
    generated length law against the data's.
    """
    lines = []
    fvd = {k: v for k, v in metrics.items() if re.fullmatch(r"fvd\d+\w*_\d+f\w*", k)}
    floor = next((v for k, v in metrics.items() if k.startswith("fvd") and "real_floor" in k), None)
    static = next((v for k, v in metrics.items() if k.startswith("fvd") and "static" in k), None)
    for key, value in fvd.items():
        text = f"{key} = {value:.1f}"
        if static is not None:
            verdict = "better than" if value < static else "not better than"
            text += f": {verdict} holding the first frame still (static {static:.1f})"
        if floor is not None:
            text += f"; real clips against real clips give {floor:.1f} (the floor)"
        lines.append(text)
    for key, real in sorted(metrics.items()):  # the same score on generated and real clips
        gen = metrics.get(key.removeprefix("real/"))
        if key.startswith("real/") and not key.startswith("real/length/") and gen is not None:
            lines.append(f"{key.split('/')[-1]}: generated {gen:.4g} vs real {real:.4g} "
                         f"(difference {gen - real:+.3g})")  # fmt: skip
    gen_len, data_len = metrics.get("length/mean_generated"), metrics.get("length/mean_data")
    if gen_len is not None and data_len:
        text = (f"length: generated videos average {gen_len:.2f} frames against {data_len:.2f} "
                f"in the data ({100 * (gen_len / data_len - 1):+.1f}%")  # fmt: skip
        se = metrics.get("length/mean_difference_se")
        if se is not None:  # how far the two means differ by sampling alone
            text += f", standard error of the difference {100 * se / data_len:.1f}%"
        text += ")"
        if "length/wasserstein" in metrics:
            text += f", Wasserstein {metrics['length/wasserstein']:.2f} frames"
            if "real/length/wasserstein" in metrics:  # the distance a perfect model would read
                text += (f" (two halves of the real clips: "
                         f"{metrics['real/length/wasserstein']:.2f})")  # fmt: skip
        lines.append(text)
    return lines
