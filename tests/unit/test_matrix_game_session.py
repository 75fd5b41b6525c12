"""Matrix-Game 2.0 session, actions and render-ahead producer (tiny preset, CPU).

Action tests assert on what reaches the model (the action windows `forward_block` receives), not on
pixels: the tiny model has random weights.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from deployments.matrix_game.actions import (
    CAM_VALUE,
    IDLE,
    Action,
    ActionError,
    ActionHistory,
    action_vectors,
    parse_action,
    parse_action_message,
)
from deployments.matrix_game.configs import preset_spec
from deployments.matrix_game.dit import ActionInputs
from deployments.matrix_game.models import WorldModels, build_world_models
from deployments.matrix_game.producer import BlockProducer, FrameFailed, paced_frames
from deployments.matrix_game.session import SessionPaused, StreamExhausted, WorldSession

SEED_IMAGE = (np.arange(90 * 200 * 3) % 251).astype(np.uint8).reshape(90, 200, 3)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> WorldModels:
    return build_world_models("tiny", ["universal", "templerun"], seed=0)


class Spy:
    """Records what each `forward_block` call of a DiT receives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, dit: Any) -> None:
        self.calls: list[tuple[float, ActionInputs, int]] = []
        original = dit.forward_block

        def record(latents: torch.Tensor, cond: torch.Tensor, timestep: torch.Tensor, actions: ActionInputs,
                   stream: Any) -> torch.Tensor:
            self.calls.append((float(timestep.flatten()[0]), actions, stream.start_frame))
            return original(latents, cond, timestep, actions, stream)

        monkeypatch.setattr(dit, "forward_block", record)

    def block(self, start: int) -> list[ActionInputs]:
        return [a for _, a, s in self.calls if s == start]


# --- actions -------------------------------------------------------------------------------------
def test_parse_action_accepts_the_move_look_grammar() -> None:
    assert parse_action("w l") == Action("w", "l")
    assert parse_action("  Q   U ") == IDLE
    assert parse_action_message({"type": "action", "action": "s i"}) == Action("s", "i")


@pytest.mark.parametrize("bad", ["x l", "w z", "w", "w l k", "", "wl", 3, None])
def test_bad_actions_are_rejected_with_a_clear_error(bad: Any) -> None:
    with pytest.raises(ActionError, match=r"action|move|look"):
        parse_action(bad)


def test_action_messages_need_type_and_action() -> None:
    with pytest.raises(ActionError, match="not an action message"):
        parse_action_message({"type": "pause", "paused": True})
    with pytest.raises(ActionError, match="without an 'action' field"):
        parse_action_message({"type": "action"})


def test_action_vectors_follow_the_published_key_maps() -> None:
    assert action_vectors(Action("w", "i"), "universal").keyboard == (1.0, 0.0, 0.0, 0.0)
    assert action_vectors(Action("d", "j"), "universal").keyboard == (0.0, 0.0, 0.0, 1.0)
    assert action_vectors(Action("q", "j"), "universal").mouse == (0.0, -CAM_VALUE)
    assert action_vectors(Action("q", "k"), "universal").mouse == (-CAM_VALUE, 0.0)
    assert action_vectors(IDLE, "universal").keyboard == (0.0,) * 4
    assert action_vectors(Action("w", "u"), "gta_drive").keyboard == (1.0, 0.0)
    assert action_vectors(Action("s", "u"), "gta_drive").keyboard == (0.0, 1.0)
    assert action_vectors(Action("a", "u"), "gta_drive").mouse == (0.0, -CAM_VALUE)
    assert action_vectors(Action("a", "l"), "gta_drive").mouse == (0.0, CAM_VALUE)  # look wins
    assert action_vectors(IDLE, "templerun") == action_vectors(Action("q", "i"), "templerun")
    assert action_vectors(IDLE, "templerun").keyboard[0] == 1.0 and action_vectors(IDLE, "templerun").mouse is None
    assert action_vectors(Action("w", "u"), "templerun").keyboard.index(1.0) == 1  # jump
    assert action_vectors(Action("q", "l"), "templerun").keyboard.index(1.0) == 4  # turn right


def test_history_windows_cover_the_twelve_video_frames_before_each_latent_frame() -> None:
    cfg = preset_spec("tiny").modes["universal"].dit.action
    history = ActionHistory(cfg, "universal")
    history.apply(Action("w", "u"), 0, 3)  # video frames 0..8
    history.apply(Action("s", "u"), 3, 3)  # video frames 9..20
    keyboard, mouse = history.windows(3, 3)
    assert keyboard.shape == (1, 3, 12, 4) and mouse is not None and mouse.shape == (1, 3, 12, 2)
    forward, back = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    # latent frame 3 sees video frames 0..11: 9 frames of "w", then 3 of "s"
    assert torch.equal(keyboard[0, 0, :9], forward.expand(9, 4)) and torch.equal(keyboard[0, 0, 9:], back.expand(3, 4))
    first, _ = history.windows(0, 1)
    assert torch.equal(first[0, 0], forward.expand(12, 4))  # before frame 0: frame 0's action
    with pytest.raises(RuntimeError, match="in order"):
        history.apply(IDLE, 9, 3)


# --- the session -----------------------------------------------------------------------------------
def test_blocks_are_uint8_frames_of_the_output_size(models: WorldModels) -> None:
    session = WorldSession(models, max_latent_frames=6)
    session.start(SEED_IMAGE, "universal", seed=0)
    first, second = session.next_block(), session.next_block()
    assert first.shape == (9, 32, 64, 3) and second.shape == (12, 32, 64, 3)
    assert first.dtype == np.uint8
    with pytest.raises(StreamExhausted):
        session.next_block()
    assert session.exhausted and session.latent_frames == 6


def test_actions_change_the_conditioning_the_model_receives(models: WorldModels,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch, models.dits["universal"])
    session = WorldSession(models)
    session.start(SEED_IMAGE, "universal", seed=0)
    session.set_action("a i")
    session.set_action("w l")  # the latest action is the one the next block uses
    session.next_block()
    session.set_action("s j")
    session.next_block()

    block0, block1 = spy.block(0), spy.block(3)
    assert len(block0) == len(block1) == 4  # 3 distilled steps + the clean context pass, same actions
    assert [t for t, _, s in spy.calls if s == 0] == pytest.approx([1000.0, 908.8428, 713.9794, 0.0], rel=1e-5)
    a0, a1 = block0[0], block1[0]
    assert a0.mouse is not None and a1.mouse is not None
    assert torch.equal(a0.keyboard, torch.tensor([1.0, 0, 0, 0]).expand(1, 3, 12, 4))
    assert torch.equal(a0.mouse, torch.tensor([0.0, CAM_VALUE]).expand(1, 3, 12, 2))
    # block 1's first latent frame: video frames 0..8 of "w l", then 9..11 of "s j"
    assert torch.equal(a1.keyboard[0, 0, 9:], torch.tensor([0, 1.0, 0, 0]).expand(3, 4))
    assert torch.equal(a1.keyboard[0, 0, :9], torch.tensor([1.0, 0, 0, 0]).expand(9, 4))
    # block 1's last latent frame (5): video frame 8 is block 0's, 9..19 are block 1's
    assert torch.equal(a1.mouse[0, 2, 1:], torch.tensor([0.0, -CAM_VALUE]).expand(11, 2))
    assert torch.equal(a1.mouse[0, 2, 0], torch.tensor([0.0, CAM_VALUE]))


def test_templerun_sends_keyboard_only(models: WorldModels, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch, models.dits["templerun"])
    session = WorldSession(models)
    session.start(SEED_IMAGE, "templerun", seed=0)
    session.set_action("q l")
    session.next_block()
    actions = spy.block(0)[0]
    assert actions.mouse is None
    assert torch.equal(actions.keyboard[0, 0, 0], torch.tensor([0.0, 0, 0, 0, 1, 0, 0]))  # turn right
    with pytest.raises(ValueError, match="not loaded"):
        session.start(SEED_IMAGE, "gta_drive")


def test_same_seed_and_actions_give_the_same_frames(models: WorldModels) -> None:
    runs = []
    for _ in range(2):
        session = WorldSession(models)
        session.start(SEED_IMAGE, "universal", seed=7)
        session.set_action("d k")
        runs.append(session.next_block())
    assert np.array_equal(runs[0], runs[1])


def test_pause_stops_generation_and_resume_continues_the_stream(models: WorldModels) -> None:
    session = WorldSession(models)
    with pytest.raises(RuntimeError, match="start"):
        session.next_block()
    session.start(SEED_IMAGE, "universal", seed=0)
    session.pause(True)
    with pytest.raises(SessionPaused):
        session.next_block()
    assert session.latent_frames == 0
    session.pause(False)
    assert session.next_block().shape[0] == 9 and session.latent_frames == 3


# --- the producer ----------------------------------------------------------------------------------
class FakeSession:
    """A session whose blocks are numbered frames (no model): producer mechanics only."""

    def __init__(self, blocks: int = 100, frames: int = 3, fail_at: int | None = None) -> None:
        self.started, self.calls, self.blocks, self.frames, self.fail_at = True, 0, blocks, frames, fail_at
        self._paused = False

    def pause(self, paused: bool) -> None:
        self._paused = paused

    def next_block(self) -> np.ndarray:
        if self._paused:
            raise SessionPaused("paused")
        if self.calls == self.fail_at:
            raise ValueError("boom")
        if self.calls >= self.blocks:
            raise StreamExhausted("done")
        start = self.calls * self.frames
        self.calls += 1
        return np.arange(start, start + self.frames).reshape(-1, 1, 1, 1).astype(np.uint8)


def _wait_until(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)


def test_producer_renders_ahead_into_a_bounded_queue() -> None:
    session = FakeSession(frames=3)
    producer = BlockProducer(session, max_frames=4)  # type: ignore[arg-type]
    producer.start()
    _wait_until(lambda: session.calls >= 2)
    time.sleep(0.2)
    assert session.calls == 2  # 4 queued frames + 2 waiting in the producer: it stays ahead by one block
    frames = [int(producer.get_frame(timeout=2)[0, 0, 0]) for _ in range(9)]  # type: ignore[index]
    assert frames == list(range(9))
    producer.stop()
    assert not producer.running


def test_paused_producer_generates_nothing_until_resumed() -> None:
    session = FakeSession(frames=2)
    producer = BlockProducer(session, max_frames=2)  # type: ignore[arg-type]
    producer.pause(True)
    producer.start()
    time.sleep(0.2)
    assert session.calls == 0 and producer.get_frame(timeout=0.05) is None
    producer.pause(False)
    assert producer.get_frame(timeout=2) is not None
    producer.stop()


def test_stream_end_and_failures_reach_the_consumer_after_the_queued_frames() -> None:
    producer = BlockProducer(FakeSession(blocks=1, frames=2))  # type: ignore[arg-type]
    producer.start()
    assert producer.get_frame(timeout=2) is not None and producer.get_frame(timeout=2) is not None
    with pytest.raises(StreamExhausted):
        producer.get_frame(timeout=2)
    failing = BlockProducer(FakeSession(frames=1, fail_at=1))  # type: ignore[arg-type]
    failing.start()
    assert failing.get_frame(timeout=2) is not None
    with pytest.raises(FrameFailed, match="ValueError: boom"):
        failing.get_frame(timeout=2)


def test_paced_frames_keep_the_frame_rate() -> None:
    producer = BlockProducer(FakeSession(blocks=4, frames=3))  # type: ignore[arg-type]
    producer.start()

    async def consume() -> tuple[list[int], float]:
        t0 = time.monotonic()
        got = [int(f[0, 0, 0]) async for f in paced_frames(producer, fps=100)]
        return got, time.monotonic() - t0

    got, elapsed = asyncio.run(consume())
    assert got == list(range(12))  # then the stream ends the iteration
    assert elapsed >= 11 / 100


def test_producer_on_a_real_session(models: WorldModels) -> None:
    session = WorldSession(models, max_latent_frames=6)
    session.start(SEED_IMAGE, "universal", seed=0)
    producer = BlockProducer(session, max_frames=24)
    producer.start()
    setter = threading.Thread(target=session.set_action, args=("w u",))
    setter.start()
    setter.join()
    frames = []
    with pytest.raises(StreamExhausted):
        while True:
            frame = producer.get_frame(timeout=60)
            assert frame is not None
            frames.append(frame)
    assert len(frames) == 9 + 12 and frames[0].shape == (32, 64, 3)
