"""The progress displays: the log line format, when lines are written, the numbers on them.

Time comes from a fake clock the tests move by hand; nothing here sleeps or reads the wall clock.
"""

from __future__ import annotations

import io
import json
import math
import re
import threading

import pytest
from rich.console import Console

from latentsync_cli.cli.displays import (
    LINE_PATTERN,
    JsonProgress,
    LineProgress,
    RichBars,
    SilentProgress,
    choose_progress,
    summary_line,
)
from latentsync_cli.errors import UsageError

# The format a render farm's regex relies on, written out here as the module docstring documents it.
DOCUMENTED_LINE = re.compile(
    r"^progress (?P<percent>\d+)% frames=(?P<done>\d+)/(?P<total>\d+) fps=(?:(?P<fps>\d+\.\d)|\?)"
    r" elapsed=(?P<elapsed>\d+)s eta=(?:(?P<eta>\d+)s|\?) stage=(?P<stage>.*)$"
)


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def line_display(clock: FakeClock, **kwargs) -> tuple[LineProgress, io.StringIO]:
    stream = io.StringIO()
    return LineProgress(stream, clock=clock, heartbeat_thread=False, **kwargs), stream


def written(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def parsed(line: str) -> dict:
    match = DOCUMENTED_LINE.match(line)
    assert match, f"not in the documented format: {line!r}"
    return match.groupdict()


def test_the_documented_pattern_is_the_one_in_the_module_and_its_docstring():
    import latentsync_cli.cli.displays as progress

    assert LINE_PATTERN.pattern == DOCUMENTED_LINE.pattern
    assert DOCUMENTED_LINE.pattern in progress.__doc__


def test_every_line_of_a_whole_job_matches_the_documented_format():
    clock = FakeClock()
    display, stream = line_display(clock, min_interval_s=0.0)
    display.message("loading models")
    display.start("job", 6)
    display.start("decode + align", 6)
    display.start("generate", 2)
    display.start("restore + encode", 6)
    for _ in range(6):
        clock.now += 1.0
        display.advance("decode + align")
    display.advance("generate", 2)
    for _ in range(6):
        clock.now += 0.5
        display.advance("restore + encode")
        display.advance("job")
    display.message("writing the\nvideo")
    display.close()

    lines = written(stream)
    assert len(lines) > 10
    fields = [parsed(line) for line in lines]
    assert fields[0]["stage"] == "loading models"
    assert fields[-1]["stage"] == "writing the video"  # a message is folded onto one line
    assert (fields[-1]["percent"], fields[-1]["done"], fields[-1]["total"]) == ("100", "6", "6")


def test_a_finished_generate_window_writes_a_line_even_inside_the_rate_limit():
    clock = FakeClock()
    display, stream = line_display(clock, min_interval_s=60.0)
    display.start("job", 100)
    display.start("generate", 5)
    before = len(written(stream))
    clock.now += 0.1
    display.advance("generate")
    lines = written(stream)
    assert len(lines) == before + 1
    assert parsed(lines[-1])["stage"] == "generate"


def test_other_advances_are_rate_limited_by_the_clock():
    clock = FakeClock()
    display, stream = line_display(clock, min_interval_s=5.0)
    display.start("job", 1000)
    display.start("decode + align", 1000)
    start_lines = len(written(stream))
    for _ in range(40):  # 40 frames in 4 s: inside the interval, no line
        clock.now += 0.1
        display.advance("decode + align")
    assert len(written(stream)) == start_lines
    clock.now += 1.0  # 5 s since the last line
    display.advance("decode + align")
    assert len(written(stream)) == start_lines + 1
    clock.now += 1.0
    display.advance("decode + align")
    assert len(written(stream)) == start_lines + 1


def test_the_last_frame_of_the_job_always_writes_a_line():
    clock = FakeClock()
    display, stream = line_display(clock, min_interval_s=60.0)
    display.start("job", 3)
    display.advance("job", 2)
    count = len(written(stream))
    display.advance("job")
    lines = written(stream)
    assert len(lines) == count + 1
    assert parsed(lines[-1])["percent"] == "100"
    assert parsed(lines[-1])["eta"] == "0"


def test_fps_and_eta_follow_the_frames_written_since_the_first():
    clock = FakeClock(now=50.0)
    display, stream = line_display(clock, min_interval_s=0.0)
    display.start("job", 200)
    first = parsed(written(stream)[-1])
    assert (first["fps"], first["eta"], first["percent"], first["elapsed"]) == (None, None, "0", "0")

    clock.now = 80.0  # models and the first window took 30 s: not part of the rate
    display.advance("job")
    one = parsed(written(stream)[-1])
    assert one["fps"] is None and one["eta"] is None  # one frame gives no rate yet

    frames, seconds = 40, 16.0
    for _ in range(frames):
        clock.now += seconds / frames
        display.advance("job")
    now = parsed(written(stream)[-1])
    fps = frames / seconds  # 2.5 frames per second
    assert now["fps"] == f"{fps:.1f}"
    assert now["eta"] == str(math.ceil((200 - 41) / fps))
    assert now["done"] == "41"
    assert now["percent"] == str(41 * 100 // 200)
    assert now["elapsed"] == str(int(clock.now - 50.0))


def test_stage_is_the_latest_message_or_task_other_than_job():
    clock = FakeClock()
    display, stream = line_display(clock, min_interval_s=0.0)
    display.message("checking for a face")
    display.start("job", 10)
    assert parsed(written(stream)[-1])["stage"] == "checking for a face"
    display.start("restore + encode", 10)
    display.advance("restore + encode")
    display.advance("job")
    assert parsed(written(stream)[-1])["stage"] == "restore + encode"


def test_json_lines_parse_and_carry_the_same_numbers():
    clock = FakeClock(now=0.0)
    stream = io.StringIO()
    display = JsonProgress(stream, min_interval_s=0.0, clock=clock, heartbeat_thread=False)
    display.message("loading models")
    display.start("job", 10)
    display.start("generate", 1)
    clock.now = 10.0
    display.advance("job")
    clock.now = 12.0
    display.advance("job", 4)
    display.advance("generate")
    events = [json.loads(line) for line in written(stream)]
    assert events[0] == {"event": "message", "text": "loading models"}
    last = events[-1]
    assert last["event"] == "progress"
    assert set(last) == {
        "event", "percent", "frames_done", "frames_total", "fps", "elapsed_s", "eta_s", "stage",
    }
    assert (last["frames_done"], last["frames_total"], last["percent"]) == (5, 10, 50)
    assert last["fps"] == 2.0  # 4 frames in the 2 s after the first
    assert last["eta_s"] == 3  # 5 frames left at 2 fps, rounded up
    assert (last["elapsed_s"], last["stage"]) == (12, "generate")
    assert events[1]["fps"] is None and events[1]["eta_s"] is None


def test_heartbeat_writes_only_when_a_line_is_overdue():
    clock = FakeClock()
    display, stream = line_display(clock, min_interval_s=60.0, heartbeat_s=5.0)
    display.start("job", 100)
    count = len(written(stream))
    clock.now += 4.0
    display.tick()
    assert len(written(stream)) == count
    clock.now += 1.0
    display.tick()
    assert len(written(stream)) == count + 1
    display.tick()  # no time passed since that line
    assert len(written(stream)) == count + 1
    display.close()
    clock.now += 60.0
    display.tick()  # a closed display stays silent
    assert len(written(stream)) == count + 1


def test_heartbeat_thread_starts_on_the_first_event_and_stops_on_close():
    stream = io.StringIO()
    with LineProgress(stream) as display:
        assert display.heartbeat is None
        display.message("loading models")
        thread = display.heartbeat.thread
        assert thread.is_alive() and thread.daemon
    assert display.heartbeat is None
    assert not thread.is_alive()
    display.advance("generate")  # an event after close starts no new thread
    assert display.heartbeat is None


def test_three_threads_advancing_count_every_unit():
    clock = FakeClock()
    display, stream = line_display(clock, min_interval_s=0.0)
    frames, stages = 3000, ("decode + align", "generate", "restore + encode")
    display.start("job", frames)
    for stage in stages:
        display.start(stage, frames // 3)

    def work(stage: str) -> None:  # each thread counts a third of the job's frames and its own stage
        for _ in range(frames // 3):
            display.advance(stage)
            display.advance("job")

    threads = [threading.Thread(target=work, args=(stage,)) for stage in stages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = written(stream)
    assert all(DOCUMENTED_LINE.match(line) for line in lines)  # no line torn by another thread
    last = parsed(lines[-1])
    assert (last["done"], last["percent"], last["eta"]) == (str(frames), "100", "0")
    assert sum(line.endswith("stage=generate") for line in lines) >= frames // 3


def test_a_broken_stream_does_not_fail_the_job():
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    display = LineProgress(Closed(), heartbeat_thread=False)
    display.start("job", 2)
    display.advance("job", 2)
    display.close()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_picks_lines_for_a_log_and_bars_for_a_terminal():
    console = Console(file=io.StringIO())
    log = choose_progress("auto", console, stream=io.StringIO())
    assert isinstance(log, LineProgress)
    log.close()
    xterm = {"TERM": "xterm-256color"}
    assert isinstance(choose_progress("auto", console, stream=FakeTerminal(), environ=xterm), RichBars)
    json_display = choose_progress("json", console, stream=io.StringIO())
    assert isinstance(json_display, JsonProgress)
    json_display.close()


@pytest.mark.parametrize("kind", ["auto", "bar"])
@pytest.mark.parametrize("term", ["dumb", "unknown"])
def test_a_terminal_that_cannot_draw_bars_gets_progress_lines(kind, term):
    stream = FakeTerminal()
    with choose_progress(kind, Console(file=io.StringIO()), stream=stream, environ={"TERM": term}) as display:
        assert isinstance(display, LineProgress)
        display.start("job", 2)
        display.advance("job", 2)
    assert any(LINE_PATTERN.match(line) for line in stream.getvalue().splitlines()), stream.getvalue()


def test_bars_asked_for_in_a_log_give_lines():
    with choose_progress("bar", Console(file=io.StringIO()), stream=io.StringIO(), environ={}) as display:
        assert isinstance(display, LineProgress)


def test_none_and_quiet_write_nothing():
    console = Console(file=io.StringIO())
    for display in (
        choose_progress("none", console, stream=FakeTerminal()),
        choose_progress("lines", console, stream=io.StringIO(), quiet=True),
    ):
        assert isinstance(display, SilentProgress)
        with display:
            display.message("loading models")
            display.start("job", 1)
            display.advance("job")


def test_an_unknown_kind_is_a_usage_error_naming_the_flag_and_choices():
    with pytest.raises(UsageError) as error:
        choose_progress("fancy", Console(file=io.StringIO()))
    assert "--progress" in error.value.message
    for kind in ("auto", "bar", "lines", "json", "none"):
        assert kind in error.value.message


def test_rich_bars_leave_a_summary_line():
    console_file = io.StringIO()
    console = Console(file=console_file, force_terminal=False, width=120)
    with RichBars(console) as bars:
        bars.message("loading models")
        bars.start("job", 4)
        bars.start("generate", 1)
        bars.advance("generate")
        bars.advance("job", 4)
    last = console_file.getvalue().splitlines()[-1]
    assert re.fullmatch(r"done 4/4 frames in \d+\.\ds( \(\d+\.\d fps\))?", last), last


def test_summary_line_numbers():
    assert summary_line(242, 242, 80.0) == "done 242/242 frames in 80.0s (3.0 fps)"
    assert summary_line(91, 242, 29.0) == "stopped at 91/242 frames after 29.0s (3.1 fps)"
