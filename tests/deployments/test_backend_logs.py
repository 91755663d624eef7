"""Worker log files that the backends and the reconcile loop share: the end readable, the size bounded."""

from __future__ import annotations

from pathlib import Path

from deployments.backends.logs import tail_file, trim_log


def test_the_tail_of_a_log_is_its_last_lines_and_a_missing_log_reads_empty(tmp_path: Path) -> None:
    log = tmp_path / "worker-1.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))

    assert tail_file(log, 3) == "line 97\nline 98\nline 99"
    assert tail_file(tmp_path / "worker-2.log", 3) == ""


def test_a_log_past_its_limit_keeps_its_newest_half_under_a_marker(tmp_path: Path) -> None:
    log = tmp_path / "worker-1.log"
    log.write_bytes(b"a" * 600 + b"b" * 400)
    small = tmp_path / "worker-2.log"
    small.write_bytes(b"c" * 100)

    trim_log(log, max_bytes=800)
    trim_log(small, max_bytes=800)
    trim_log(tmp_path / "gone.log", max_bytes=800)

    assert log.read_bytes() == b"--- (older lines dropped)\n" + b"b" * 400
    assert small.read_bytes() == b"c" * 100
