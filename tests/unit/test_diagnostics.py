"""The text of a RankState: every section, cut at 20 rows, and an engine that was busy."""

from conveyor._diagnostics import ChunkWait, OpenRequest, PendingRequest, RankState, TableWait


def state(**fields):
    base = dict(
        rank=2,
        size=4,
        mode="inline",
        handling=0,
        pending=(),
        answering=(),
        table_waits=(),
        chunk_waits=(),
        async_handlers=0,
        engine=None,
    )
    return RankState(**{**base, **fields})


def engine(**fields):
    return {
        "ready": 1,
        "arriving": 0,
        "pending_sends": 2,
        "pending_receives": 1,
        "frames_posted": 10,
        "frames_finished": 9,
        "messages_sent": 12,
        "messages_handled": 11,
        "wave_active": True,
        "sends_held": 3,
        "window_bytes": 8 << 20,
        "data_window_bytes": 256 << 20,
        "routes": [],
        **fields,
    }


def test_every_section_names_what_waits():
    text = str(
        state(
            handling=1,
            pending=(PendingRequest(7, 3, "work", 1.5, False),),
            answering=(
                OpenRequest(1, 4, "ask", True, False),
                OpenRequest(0, 9, "slow", False, True),
            ),
            table_waits=(TableWait("t", ("k", 1), 2),),
            chunk_waits=(ChunkWait(0x10, 1, True), ChunkWait(0x20, 2, False)),
            async_handlers=3,
            engine=engine(
                routes=[
                    {
                        "rank": 3,
                        "batch_bytes": 40,
                        "held": 2,
                        "in_flight_frame_bytes": 2048,
                        "in_flight_data_bytes": 0,
                        "asked": True,
                        "consumed_frame_bytes": 0,
                        "consumed_data_bytes": 0,
                        "owes": False,
                    }
                ]
            ),
        )
    )
    lines = text.splitlines()
    assert lines[0] == "conveyor: rank 2 of 4 (inline; 1 handler(s) running)"
    assert "  #7 to rank 3, tag 'work', future, sent 1.500 s ago" in lines
    assert "  #4 from rank 1, tag 'ask', handler running" in lines
    assert "  #9 from rank 0, tag 'slow', deferred (its handler returned), cancelled" in lines
    assert "  table 't', key ('k', 1): 2 wait(s)" in lines
    assert "  chunk 0x20: 2 waiter(s), its task has not arrived" in lines
    assert "async handlers running: 3" in lines
    assert any("a termination wave is running" in line for line in lines)
    assert (
        "  rank 3: 40 B batched; 2 frame(s) held for credit; in flight 2.0 KiB of frames, "
        "0 B of data; credit asked, none came yet"
    ) in lines


def test_empty_sections_say_none_and_long_ones_are_cut():
    pending = tuple(PendingRequest(i, 1, "t", 0.0, True) for i in range(25))
    lines = str(state(pending=pending)).splitlines()
    assert "requests sent, waiting for an answer (25):" in lines
    assert sum(line.startswith("  #") for line in lines) == 20
    assert "  ... and 5 more" in lines
    assert "requests received, not answered yet: none" in lines
    assert lines[-1].startswith("engine: busy")
    assert str(state(mode="closed")).splitlines()[-1] == "engine: closed"
