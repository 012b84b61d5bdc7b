"""An async HTTP client in a coroutine step, against a real aiohttp server on 127.0.0.1."""

import asyncio
import threading

import aiohttp
import pytest
from aiohttp import web

from crystallize_async import AsyncExecution
from crystallize_core import Experiment, SeedPlugin, Treatment


class SquareService:
    """``GET /square?x=N`` answers ``{"square": N * N}`` after a short wait, counting
    the requests it serves and the most it served at once."""

    def __init__(self):
        self.served = 0
        self.now = 0
        self.most = 0
        self.loop = asyncio.new_event_loop()
        self.url = ""

    async def square(self, request: web.Request) -> web.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.02)
            x = int(request.query["x"])
            self.served += 1
            return web.json_response({"square": x * x})
        finally:
            self.now -= 1

    def start(self) -> None:
        app = web.Application()
        app.router.add_get("/square", self.square)
        self.runner = web.AppRunner(app)
        ready = threading.Event()

        async def serve():
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            port = self.runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}/square"
            ready.set()

        self.thread = threading.Thread(target=self._serve_forever, args=(serve,), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the test server did not start"

    def _serve_forever(self, serve) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(serve())
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def service():
    running = SquareService()
    running.start()
    yield running
    running.stop()


def draw(ctx):
    return ctx.rng.randrange(1000)


class AskService:
    """A coroutine step: asks the service to square the data, records the answer."""

    def __init__(self, url: str):
        self.url = url

    async def __call__(self, x, ctx):
        query = {"x": str(x * ctx.get("factor", 1))}
        async with aiohttp.ClientSession() as session, session.get(self.url, params=query) as response:
            response.raise_for_status()
            answer = await response.json()
        ctx.metrics.add("x", x)
        ctx.metrics.add("square", answer["square"])
        return answer["square"]


def study(url):
    return Experiment(
        draw,
        [AskService(url)],
        plugins=[SeedPlugin(seed=21, auto_seed=False)],
        treatments=[Treatment("double", {"factor": 2})],
    )


def test_an_async_client_in_a_step_under_the_async_strategy(service):
    n = 60
    result = study(service.url).run(replicates=n, strategy=AsyncExecution(max_workers=8, rate_limit=500))
    assert result.errors == []
    xs = result.metrics["baseline"]["x"]
    assert result.metrics["baseline"]["square"] == [x * x for x in xs]
    assert result.metrics["double"]["square"] == [4 * x * x for x in xs]
    assert service.served == 2 * n
    assert 1 < service.most <= 8, f"{service.most} requests at once with max_workers=8"


@pytest.mark.parametrize("strategy", ["serial", "parallel:executor_type='thread',max_workers=3"])
def test_the_same_client_under_strategies_without_an_event_loop(service, strategy):
    expected = study(service.url).run(replicates=10, strategy=AsyncExecution())
    result = study(service.url).run(replicates=10, strategy=strategy)
    assert result.errors == [] and result.metrics == expected.metrics
