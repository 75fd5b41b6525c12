"""Cancellation agreed across ranks (gloo, two processes): every rank stops at the same poll, `lag`
polls after one rank saw its flag, and a flag never seen means no stop."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch.multiprocessing as mp


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SCENARIOS = [  # (flags: rank -> first poll that sees the flag, lag, polls)
    ({1: 3}, 0, 12),  # only rank 1 sees its flag, from poll 3 on
    ({1: 3}, 2, 12),
    ({0: 1, 1: 5}, 2, 12),  # the earliest flag wins
    ({}, 1, 6),  # never set: never stops
]


def _rank(rank: int, port: int, out: Any) -> None:
    import torch.distributed as dist

    from serve_app.distributed.cancel import CancelAgreement

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for index, (flag_at, lag, polls) in enumerate(SCENARIOS):
            agreement = CancelAgreement("cpu", 2, lag=lag)
            stopped = None
            for step in range(polls):
                if agreement.poll(step >= flag_at.get(rank, polls + 1)):
                    stopped = step
                    break
            out.put((index, rank, stopped))
    finally:
        dist.destroy_process_group()


def test_one_rank_flag_stops_every_rank_at_the_same_poll_lag_polls_later() -> None:
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    port = _port()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    stopped: dict[tuple[int, int], int | None] = {}
    for _ in range(2 * len(SCENARIOS)):
        index, rank, step = out.get()
        stopped[(index, rank)] = step
    assert [(stopped[(i, 0)], stopped[(i, 1)]) for i in range(len(SCENARIOS))] == [
        (3, 3), (5, 5), (3, 3), (None, None)]


def test_single_rank_needs_no_collective() -> None:
    from serve_app.distributed.cancel import CancelAgreement

    agreement = CancelAgreement("cpu", 1, lag=2)
    assert [agreement.poll(i >= 2) for i in range(4)] == [False, False, True, True]
