"""What only the asyncio client shows: it runs in whichever event loop awaits it (no loop of its
own, no patching), and one loop drives many sessions at once with ``asyncio.gather``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from client import InvalidArgumentError
from client.aio import AsyncClient, AsyncSession
from server import Limits, ServerConfig
from tests.helpers import local_outputs, recurrent_net
from tests.server_fixture import running_server

SESSIONS, STEPS = 64, 8


def local_model(seed: int):
    """The model a session of ``recurrent_net()`` with ``seed`` starts with: drawn as the server draws it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return recurrent_net().make_model((3,)).eval()


def inputs(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((STEPS, 2, 3)) * 2).astype(np.float32)


def test_64_sessions_driven_at_once_from_one_loop_equal_local_models():
    """64 sessions created, run, streamed and stepped concurrently with asyncio.gather from one event
    loop each compute what a local model of the same seed computes."""

    async def drive(s: AsyncSession, x: np.ndarray) -> list[np.ndarray]:
        chunks = np.split(x, [2, 3, 6])
        outputs = [await s.run(chunks[0])]
        outputs += [y async for y in s.stream(chunks[1:3])]
        outputs += [(await s.step(chunks[3][0]))[None], (await s.step(chunks[3][1]))[None]]
        await s.close()
        return outputs

    async def main(address: str):
        async with AsyncClient(address) as c:
            create = (c.create_session(recurrent_net(), (3,), batch_size=2, seed=i) for i in range(SESSIONS))
            sessions = await asyncio.gather(*create)
            return await asyncio.gather(*(drive(s, inputs(i)) for i, s in enumerate(sessions)))

    with running_server(ServerConfig(device="cpu", workers=2, limits=Limits(max_sessions=SESSIONS))) as (address, _):
        results = asyncio.run(main(address))
    for i, outputs in enumerate(results):
        chunks = np.split(inputs(i), [2, 3, 6, 7])
        expected = local_outputs(local_model(i), chunks)
        assert all(np.array_equal(r, e) for r, e in zip(outputs, expected)), f"session {i} diverged"
    assert sum(np.concatenate(outputs).sum() for outputs in results) > 0


def test_works_inside_a_running_loop(server_address):
    """Made and used inside asyncio.run's loop (as in a notebook cell), with chunks from an async
    generator, the client gives what the local model gives, and its errors are the client's."""

    async def chunks(x):
        for chunk in np.split(x, 4):
            await asyncio.sleep(0.01)  # chunks that arrive over time
            yield chunk

    async def main():
        assert asyncio.get_running_loop().is_running()
        async with AsyncClient(server_address) as c:
            info, s = await asyncio.gather(c.info(), c.create_session(recurrent_net(), (3,), batch_size=2, seed=7))
            x = inputs(7)
            streamed = [y async for y in s.stream(chunks(x))]
            with pytest.raises(InvalidArgumentError):
                await s.run(np.ones((2, 3, 3), np.float32))  # batch 3, not 2
            await s.close()
            return info, streamed, x

    info, streamed, x = asyncio.run(main())
    assert info.device == "cpu"
    assert all(np.array_equal(r, e) for r, e in zip(streamed, local_outputs(local_model(7), np.split(x, 4))))


def test_a_cancelled_fit_stops_the_training(server_address):
    """Cancelling the task that awaits fit cancels the call: the server stops training and the
    session takes the next call."""

    async def main():
        async with AsyncClient(server_address) as c:
            s = await c.create_session(recurrent_net(), (3,), batch_size=2, seed=1)
            x, y = (np.random.default_rng(0).random((8, 20, 3)) < 0.5).astype(np.float32), np.arange(8) % 6
            batches = []
            fit = asyncio.ensure_future(s.fit(x, y, epochs=1000, batch_size=2, on_batch=batches.append))
            while len(batches) < 3:
                await asyncio.sleep(0.01)
            fit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fit
            await asyncio.sleep(0.5)  # the server notices the cancellation
            before = await s.parameters()
            await asyncio.sleep(0.5)
            after = await s.parameters()
            assert all(np.array_equal(before[k], after[k]) for k in before), "the server trained on"
            assert len(await s.fit(x, y, epochs=1, batch_size=2)) == 1
            await s.close()

    asyncio.run(main())
