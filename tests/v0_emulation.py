"""The two halves of the original project (GitHub kpustelnik/smart_racing_sim_ai) on the wire, written
from its facts (issue 14, PROTOCOL.md §1), not from its code: ``V0Game`` behaves like its Roblox
place, ``V0Trainer`` like its FastAPI/SB3 trainer. Tests run rbxenv against each over real sockets.

V0Game: dials ``ws://host:port/ws/<modelId>``; takes commands ``{"command", "envid", "data"}``
with object data (``{"agents": [...]}``, ``{"status": b}``, ``{"enable_collisions": b}``) and warns
about anything it cannot decode or handle; every 1/15 s sends one JSON object with every unfrozen
car (``[]`` when none is active); restarts an ended car in the same tick (reward -20, the new
episode's first observation); closes after ``idle_close`` s without a message and clears its
venvs after 250 ticks in which active cars got no ACTION. Observations: 16 rays + nitro +
velocity + is-reverse = 19 floats (its default car).

V0Trainer: serves ``/ws/<modelId>``; sends SPAWN_AGENTS / RESET_AGENTS / ACTION per venv with
object data, FREEZE ``{"status"}`` with envid "" around its updates, PING after ``ping_every`` s
without a command; a step sends every venv's ACTION and then takes the latest packet of each agent
(waiting up to 10 s for one that has none).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections import Counter

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake

# ---------------------------------------------------------------------------------------------- the place


class Car:
    """A car in a straight corridor (walls at lateral offset ±WALL): enough to learn from, and
    every ending the original project's place has (a crash: terminated; no progress for 4 s: truncated)."""

    WALL, RAY_LENGTH, TOP_SPEED = 8.0, 50.0, 40.0

    def __init__(self, rng: random.Random, num_rays: int):
        self.num_rays = num_rays
        self.y, self.h = rng.uniform(-2, 2), rng.uniform(-0.3, 0.3)
        self.v, self.fuel, self.s = 0.0, 1.0, 0.0
        self.best, self.best_at = 0.0, 0.0  # progress record and the game time it was set
        self.clock = 0.0  # game time of this car (stops while frozen)
        self.action = [0.0, 0.0, 0.0]
        self.updated = False  # an ACTION came since the last tick
        self.frozen = False

    def observe(self) -> list[float]:
        rays = []
        for k in range(self.num_rays):
            theta = self.h + math.radians(-90 + 180 * k / (self.num_rays - 1))
            sin = math.sin(theta)
            d = (self.WALL - self.y) / sin if sin > 1e-6 else (-self.WALL - self.y) / sin if sin < -1e-6 else 1e9
            rays.append(min(1.0, max(0.0, d / self.RAY_LENGTH)))
        return rays + [self.fuel, max(-1.0, min(1.0, self.v / self.TOP_SPEED)), float(math.cos(self.h) < 0)]

    def tick(self, dt: float) -> tuple[float, bool, bool]:
        """One tick of game time: (reward, terminated, truncated)."""
        throttle, steer, nitro = (max(-1.0, min(1.0, float(a))) for a in self.action)
        self.clock += dt
        boost = nitro > 0.5 and self.fuel > 0 and throttle > 0
        self.fuel = max(0.0, self.fuel - 0.3 * dt) if boost else min(1.0, self.fuel + 0.05 * dt)
        self.v += (20 * throttle + (15 if boost else 0) - 0.1 * self.v) * dt
        self.v = max(-5.0, min(self.TOP_SPEED * (1.3 if boost else 1.0), self.v))
        self.h += 1.5 * steer * dt * min(1.0, abs(self.v) / 10)
        ds = self.v * math.cos(self.h) * dt
        self.y += self.v * math.sin(self.h) * dt
        self.s += ds
        reward = ds * (20 if ds < 0 else 1) + (math.exp(2 * max(0.0, min(1.0, self.v / self.TOP_SPEED))) - 1) * 0.5
        if self.s > self.best:
            self.best, self.best_at = self.s, self.clock
        if abs(self.y) >= self.WALL:
            return -20.0, True, False
        if self.clock - self.best_at > 4:
            return -20.0, False, True
        return reward, False, False


class V0Game:
    """The original project's place: see the module docstring. ``warnings`` lists what it warned about."""

    def __init__(
        self,
        url: str,
        *,
        num_rays: int = 16,
        tick_hz: float = 15.0,
        idle_close: float = 20.0,
        last_observation: bool = False,
        seed: int = 0,
    ):
        self.url, self.num_rays, self.period, self.idle_close = url, num_rays, 1.0 / tick_hz, idle_close
        self.last_observation = last_observation
        self.rng = random.Random(seed)
        self.envs: dict[str, list[str]] = {}
        self.cars: dict[str, Car] = {}
        self.warnings: list[str] = []
        self.commands: Counter[str] = Counter()
        self.episodes = 0  # cars ended (and restarted)
        self.endings: list[tuple[str, list[float], list[float]]] = []  # (car, final frame, next first frame)
        self.packets = 0  # non-empty packets sent
        self.late_ticks = 0  # ticks started more than a period late (the trainer starved the game)
        self.idle_closed = False
        self.max_silence = 0.0  # longest time without a message from the trainer, once it spoke
        self._last_msg: float | None = None

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    # ----------------------------------------------------------------------------------- commands

    def handle(self, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return self.warn(f"Failed to decode message: {raw[:80]}")
        if not isinstance(msg, dict):
            return self.warn(f"Failed to decode message: {raw[:80]}")
        command, data, envid = msg.get("command"), msg.get("data"), msg.get("envid")
        handler = getattr(self, f"cmd_{command}", None) if isinstance(command, str) else None
        if handler is None:
            return self.warn(f"Unknown command received: {command}")
        self.commands[command] += 1
        try:
            handler(data, envid)
        except (AttributeError, KeyError, TypeError, IndexError) as err:  # a Lua error inside the handler
            self.warn(f"Error handling command {command} for env {envid} - {err!r}")

    def cmd_CREATE_ENV(self, data, envid) -> None:
        if envid is None:
            return
        if envid in self.envs:
            return self.warn(f"Environment {envid} already exists")
        self.envs[envid] = []

    def cmd_UPDATE_COLLISIONS(self, data, envid) -> None:
        data.get("enable_collisions")  # (cars of a corridor never meet: nothing to apply)

    def cmd_SPAWN_AGENTS(self, data, envid) -> None:
        if envid is None:
            return
        if envid not in self.envs:
            self.envs[envid] = []
        for aid in data["agents"]:
            if aid not in self.envs[envid]:
                self.envs[envid].append(aid)
            self.cars[aid] = Car(self.rng, self.num_rays)

    def cmd_RESET_AGENTS(self, data, envid) -> None:
        if envid is None:
            return
        self.cmd_SPAWN_AGENTS({"agents": data["agents"]}, envid)

    def cmd_REMOVE_AGENTS(self, data, envid) -> None:
        if envid is None or envid not in self.envs:
            return
        for aid in data["agents"]:
            self.cars.pop(aid, None)
            if aid in self.envs[envid]:
                self.envs[envid].remove(aid)

    def cmd_CLOSE(self, data, envid) -> None:
        if envid is None or envid not in self.envs:
            return
        self.cmd_REMOVE_AGENTS({"agents": list(self.envs[envid])}, envid)
        del self.envs[envid]

    def cmd_CLOSE_ALL(self, data, envid) -> None:
        for env in list(self.envs):
            self.cmd_CLOSE({}, env)

    def cmd_ACTION(self, data, envid) -> None:
        for aid, action in data.items():
            car = self.cars.get(aid)
            if car is None:
                continue
            car.action = [action[0], action[1], action[2] > 0.5]
            car.updated = True

    def cmd_FREEZE(self, data, envid) -> None:
        for agents in self.envs.values():
            for aid in agents:
                car = self.cars.get(aid)
                if car is not None:
                    car.frozen = data["status"]

    def cmd_PING(self, data, envid) -> None:
        pass  # only keeps the connection alive

    # ------------------------------------------------------------------------------------ running

    def packet(self) -> str:
        out: dict[str, dict] = {}
        active, updated = False, False
        for agents in self.envs.values():
            for aid in agents:
                car = self.cars.get(aid)
                if car is None or car.frozen:
                    continue
                active = True
                updated |= car.updated
                car.updated = False
                final = car.observe()
                reward, terminated, truncated = car.tick(self.period)
                if terminated or truncated:  # restarted in the same tick: the next episode's first frame
                    self.episodes += 1
                    final = car.observe()
                    car = self.cars[aid] = Car(self.rng, self.num_rays)
                    self.endings.append((aid, final, car.observe()))
                entry = {"obs": car.observe(), "reward": reward, "terminated": terminated, "truncated": truncated}
                if self.last_observation and (terminated or truncated):
                    entry["last_observation"] = final
                out[aid] = entry
        self._idle_ticks = 0 if updated or not active else self._idle_ticks + 1
        if self._idle_ticks > 250:
            self.warn("No cars have updated their state for a long time, closing env")
            self._idle_ticks = 0
            self.cmd_CLOSE_ALL({}, None)
        if out:
            self.packets += 1
        return json.dumps(out) if out else "[]"  # Roblox's JSONEncode of an empty table

    async def run(self, connect_timeout: float = 60.0) -> None:
        """Dial until the trainer listens, serve it until it closes (or ``idle_close`` passes)."""
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                ws = await connect(self.url, open_timeout=5, max_size=None)
                break
            except (OSError, TimeoutError, InvalidHandshake):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self._idle_ticks = 0
        async with ws:
            ticker = asyncio.create_task(self._tick(ws))
            watchdog = asyncio.create_task(self._watch(ws))
            try:
                async for raw in ws:
                    now = time.monotonic()
                    if self._last_msg is not None:
                        self.max_silence = max(self.max_silence, now - self._last_msg)
                    self._last_msg = now
                    self.handle(raw if isinstance(raw, str) else raw.decode())
            except ConnectionClosed:
                pass
            finally:
                ticker.cancel()
                watchdog.cancel()

    async def _tick(self, ws) -> None:
        next_tick = time.monotonic()
        while True:
            next_tick += self.period
            delay = next_tick - time.monotonic()
            if delay < -self.period:
                self.late_ticks += 1
            await asyncio.sleep(max(0.0, delay))
            await ws.send(self.packet())

    async def _watch(self, ws) -> None:
        start = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            if time.monotonic() - (self._last_msg or start) > self.idle_close:
                self.idle_closed = True
                await ws.close()
                return


# ---------------------------------------------------------------------------------------------- the trainer


class V0Trainer:
    """The original project's trainer on the wire (one game, one model id): see the module docstring.

    ``await trainer.serve()`` starts listening; the test drives it with ``spawn`` / ``step`` /
    ``update`` and reads ``packets`` (every frame the game sent), ``refused`` (error frames: the
    v0 trainer would store them as agents named "type", "code" ...) and ``missing`` (agents a
    step got no packet for within ``obs_timeout``).
    """

    def __init__(self, *, ping_every: float = 5.0, obs_timeout: float = 10.0):
        self.ping_every, self.obs_timeout = ping_every, obs_timeout
        self.port = 0
        self.model_id: str | None = None
        self.latest: dict[str, dict] = {}  # agent -> its latest entry not read yet
        self.packets: list = []
        self.refused: list[dict] = []
        self.missing: list[str] = []
        self.pings = 0
        self.pongs: list[dict] = []
        self._ws = None
        self._last_sent = 0.0
        self._connected = asyncio.Event()
        self._arrived = asyncio.Event()

    async def serve(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        self._server.close()
        await self._server.wait_closed()

    async def wait_for_game(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def _handle(self, ws) -> None:
        self.model_id = ws.request.path.rsplit("/", 1)[-1]
        self._ws, self._last_sent = ws, time.monotonic()
        self._connected.set()
        pinger = asyncio.create_task(self._pinger(ws))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.packets.append(msg)
                if isinstance(msg, dict):  # the original project's receiver: every key is an agent
                    if msg.get("type") == "error":
                        self.refused.append(msg)
                    for aid, entry in msg.items():
                        if aid == "__pong":
                            self.pongs.append(entry)
                        elif isinstance(entry, dict) and "obs" in entry:
                            self.latest[aid] = entry
                    self._arrived.set()
        except ConnectionClosed:
            pass
        finally:
            pinger.cancel()

    async def _pinger(self, ws) -> None:
        while True:
            await asyncio.sleep(0.05)
            if time.monotonic() - self._last_sent >= self.ping_every:
                await self.send({"command": "PING"})
                self.pings += 1

    async def send(self, msg: dict) -> None:
        self._last_sent = time.monotonic()
        await self._ws.send(json.dumps(msg))

    async def command(self, command: str, envid: str, data: dict | None = None) -> None:
        await self.send({"command": command, "data": data if data else {}, "envid": envid})

    async def latest_of(self, agents: list[str]) -> dict[str, dict]:
        """The original project's get_latest_obs for each agent: the newest packet entry, or wait up to
        ``obs_timeout`` for one (an agent that never answers is recorded in ``missing``)."""
        out: dict[str, dict] = {}
        for aid in agents:
            deadline = time.monotonic() + self.obs_timeout
            while aid not in self.latest:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    self.missing.append(aid)
                    break
            if aid in self.latest:
                out[aid] = self.latest.pop(aid)
        return out

    async def spawn(self, venvs: dict[str, list[str]]) -> dict[str, dict]:
        for envid, agents in venvs.items():
            await self.command("SPAWN_AGENTS", envid, {"agents": agents})
        return await self.latest_of([aid for agents in venvs.values() for aid in agents])

    async def reset(self, venvs: dict[str, list[str]]) -> dict[str, dict]:
        self.latest.clear()
        for envid, agents in venvs.items():
            await self.command("RESET_AGENTS", envid, {"agents": agents})
        return await self.latest_of([aid for agents in venvs.values() for aid in agents])

    async def step(self, venvs: dict[str, list[str]], actions: dict[str, list[float]]) -> dict[str, dict]:
        for envid, agents in venvs.items():
            await self.command("ACTION", envid, {aid: actions[aid] for aid in agents})
        return await self.latest_of([aid for agents in venvs.values() for aid in agents])

    async def update(self, seconds: float) -> None:
        """A learning update: FREEZE, nothing but PINGs for ``seconds``, unFREEZE (its callback)."""
        await self.command("FREEZE", "", {"status": True})
        await asyncio.sleep(seconds)
        await self.command("FREEZE", "", {"status": False})


async def drive(trainer: V0Trainer, num_venvs: int, cars: int, episodes: int) -> dict:
    """The v0 trainer's loop: spawn, reset, then steps with random actions and a FREEZE'd
    "update" every 20 steps, until ``episodes`` episodes ended and one update was made. Returns what it saw."""
    rng = random.Random(0)
    venvs = {
        str(uuid.UUID(int=rng.getrandbits(128))): [] for _ in range(num_venvs)
    }  # the original project's uuid4 venv ids
    for envid in venvs:
        venvs[envid] = [f"car_{i}_env_{envid}" for i in range(cars)]
    agents = [aid for ids in venvs.values() for aid in ids]
    await trainer.wait_for_game(60)
    await trainer.command("UPDATE_COLLISIONS", "", {"enable_collisions": False})
    await trainer.spawn(venvs)
    await trainer.reset(venvs)
    seen = {"episodes": 0, "steps": 0, "widths": set(), "last_widths": set(), "updates": 0}
    while (seen["episodes"] < episodes or not seen["updates"]) and seen["steps"] < 600:
        actions = {aid: [rng.uniform(0.3, 1), rng.uniform(-1, 1), rng.uniform(-1, 1)] for aid in agents}
        got = await trainer.step(venvs, actions)
        seen["steps"] += 1
        for entry in got.values():
            seen["widths"].add(len(entry["obs"]))
            if entry["terminated"] or entry["truncated"]:
                seen["episodes"] += 1
                seen["last_widths"].add(len(entry.get("last_observation", ())))
        if seen["steps"] % 20 == 0:
            await trainer.update(1.2)  # longer than ping_every: PINGs while it "learns"
            seen["updates"] += 1
    await trainer.send({"command": "PING", "data": {"t": 12.5}})
    for _ in range(40):
        if trainer.pongs:
            break
        await asyncio.sleep(0.05)
    for envid in venvs:
        await trainer.command("CLOSE", envid)
    await trainer.command("CLOSE_ALL", "")
    return seen
