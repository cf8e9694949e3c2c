"""The wire protocol of PROTOCOL.md in code: message types, encoding, and validation.

Every check of what arrives over the WebSocket lives here, so that both the trainer (``bridge.py``)
and the simulator's client (``sim/client.py``) reject malformed input the same way: by raising a
``ProtocolError`` whose message says which field was wrong, what was expected and what came.
JSON goes through orjson (fast, and it refuses NaN/Infinity, which JSON does not have).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import orjson

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20  # PROTOCOL.md: frames above 1 MiB are rejected
MAX_AGENTS = 4096  # bounds a single message: no game runs more cars than this
MAX_VENVS = 1024
# The original project's trainer served ws://<host>:8000/ws/<modelId>; its places dial that URL, so a trainer
# waiting for an external game listens there too (any path is accepted; /ws/<id> names the run).
DEFAULT_PORT = 8000

V0_COMMANDS = frozenset(
    {
        "FREEZE",
        "SPAWN_AGENTS",
        "RESET_AGENTS",
        "REMOVE_AGENTS",
        "ACTION",
        "CLOSE",
        "CLOSE_ALL",
        "UPDATE_COLLISIONS",
    }
)
# PING keeps a v0 game's idle timer (20 s) from closing the socket; CREATE_ENV is the v0 game's
# own command (venvs are created by their first spawn); RESET is an older v0 trainer's RESET_AGENTS.
COMMANDS = V0_COMMANDS | {"ACTION_BATCH", "PING", "CREATE_ENV", "RESET"}
CAPABILITIES = frozenset({"batch", "tick", "info", "track_spec", "random_start", "columns", "autoreset", "game_tracks"})
ERROR_CODES = frozenset(
    {
        "bad_json",
        "bad_message",
        "unknown_command",
        "unknown_agent",
        "too_large",
        "unauthorized",
        "unsupported_version",
        "internal_error",  # the sender failed on a frame its checks accepted: a bug on its side
        "capacity",  # a spawn beyond the max_venvs / max_cars the game announced in its hello
    }
)
ENDING_CAUSES = frozenset({"wall", "stuck", "wrong_way", "time_limit", "disconnected"})

_ENVID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AGENT_ID = re.compile(r"car_([0-9]{1,6})_env_([A-Za-z0-9_-]{1,64})")  # [0-9]: \d also matches non-ASCII digits
# Many agent ids at once, joined by newlines: one C-level scan instead of one match per car.
# Any venvs, or all of one venv (the backreference makes every id name the first one's venv).
_AGENT_IDS = re.compile(r"car_[0-9]{1,6}_env_[A-Za-z0-9_-]{1,64}(?:\ncar_[0-9]{1,6}_env_[A-Za-z0-9_-]{1,64})*")
_VENV_AGENT_IDS = re.compile(r"car_[0-9]{1,6}_env_([A-Za-z0-9_-]{1,64})(?:\ncar_[0-9]{1,6}_env_\1)*")
# A whole ACTION_BATCH's ids: "envid\tid\nid...", venv blocks joined by NUL; each id names its block's venv.
_VENV_BLOCK = r"([A-Za-z0-9_-]{{1,64}})\tcar_[0-9]{{1,6}}_env_\{0}(?:\ncar_[0-9]{{1,6}}_env_\{0})*"
_BATCH_IDS = re.compile(_VENV_BLOCK.format(1) + r"(?:\x00" + _VENV_BLOCK.format(2) + ")*")

# Per-agent info (PROTOCOL.md §3.3), carried as one column per key from the decoder on: numbers
# are float64 with NaN where not reported (lap_time: also where no lap is done yet).
INFO_NUMBERS = ("progress", "lap", "lap_time", "speed", "x", "y", "heading")
INFO_KEYS = (*INFO_NUMBERS, "collided", "cause")


class ProtocolError(ValueError):
    """A message broke PROTOCOL.md. ``code`` is one of ERROR_CODES; str(err) is for people."""

    def __init__(self, message: str, code: str = "bad_message"):
        super().__init__(message)
        self.code = code


class RateLimitedLog:
    """Log each kind of bad input once, then at most every ``period`` seconds with a count.

    Both sides use it (bridge: bad frames from the game; simulator: bad commands from the
    trainer): a peer that floods malformed frames must not flood the log too.
    """

    def __init__(self, logger: logging.Logger, what: str, period: float = 5.0):
        self.logger, self.what, self.period = logger, what, period
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warn(self, code: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(code, -1e9) < self.period:
            self._suppressed[code] += 1
            return
        extra = f" ({self._suppressed.pop(code)} more like it suppressed)" if self._suppressed[code] else ""
        self._last[code] = now
        self.logger.warning("%s [%s]: %s%s", self.what, code, message, extra)


# --------------------------------------------------------------------------------------------
# What a game offers


@dataclass(frozen=True)
class GameSpec:
    """The spaces and abilities a game announced in its ``hello`` (protocol version 0's defaults without one)."""

    protocol: int = 0  # 0: a v0 game that sent no hello
    game: str = "v0 game"
    obs_size: int = 13
    num_rays: int = 10
    action_size: int = 3
    tick_hz: float = 15.0
    mode: str = "realtime"  # v0 games tick on their own
    capabilities: frozenset[str] = field(default_factory=frozenset)
    track: dict | None = field(default=None, compare=False)  # the game's own track (capability game_tracks)
    # The most venvs, and cars in all of them together, the game will host (None: no limit).
    max_venvs: int | None = None
    max_cars: int | None = None

    def has(self, capability: str) -> bool:
        return capability in self.capabilities


V0_GAME = GameSpec()


@dataclass(frozen=True)
class Hello:
    spec: GameSpec
    token: str | None


@dataclass(frozen=True)
class ErrorMessage:
    code: str
    message: str


@dataclass
class ObsBatch:
    """Observations of one packet (a v0 per-venv packet or a v1 ``obs`` batch), as arrays.

    Row ``k`` of every array belongs to ``agent_ids[k]``. ``info`` holds one column per
    ``INFO_KEYS`` entry (see ``info_columns``); ``has_info[k]`` says whether agent k sent any.
    ``restarted[k]``: the game restarted agent k as its episode ended here (autoreset, §3.2), and
    ``reset_obs[k]`` is its first observation of the next one (both None: nobody restarted).
    """

    tick: int | None
    agent_ids: list[str]
    obs: np.ndarray  # (n, obs_size) float32
    reward: np.ndarray  # (n,) float64
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool
    info: dict[str, np.ndarray]
    has_info: np.ndarray  # (n,) bool
    restarted: np.ndarray | None = None  # (n,) bool
    reset_obs: np.ndarray | None = None  # (n, obs_size) float32, zeros where not restarted
    # A v0 game's ``last_observation`` (the final frame of an episode it ended and restarted in
    # this packet): rows where ``has_last`` is True (both None: nobody sent one).
    last_obs: np.ndarray | None = None  # (n, obs_size) float32
    has_last: np.ndarray | None = None  # (n,) bool

    @property
    def infos(self) -> list[dict | None]:
        """Per-agent info dicts (None where an agent sent none): the per-agent view of ``info``."""
        return [d if h else None for d, h in zip(info_dicts(self.info), self.has_info.tolist(), strict=True)]


def info_columns(n: int) -> dict[str, np.ndarray]:
    """Empty info columns for ``n`` agents: NaN numbers, collided False, cause None."""
    out = {key: np.full(n, np.nan) for key in INFO_NUMBERS}
    out["collided"] = np.zeros(n, dtype=bool)
    out["cause"] = np.full(n, None, dtype=object)
    return out


def info_dicts(info: dict[str, np.ndarray]) -> list[dict]:
    """Info columns -> one dict per agent with every key of §3.3 (None where not reported)."""
    numbers = {key: info[key].tolist() for key in INFO_NUMBERS}
    collided, cause = info["collided"].tolist(), info["cause"].tolist()
    out = []
    for k in range(len(collided)):
        row = {key: None if values[k] != values[k] else values[k] for key, values in numbers.items()}  # NaN
        if row["lap"] is not None:
            row["lap"] = int(row["lap"])
        row["collided"], row["cause"] = collided[k], cause[k]
        out.append(row)
    return out


@dataclass(eq=False)
class ActionRows:
    """ACTION_BATCH in column form (capability ``columns``), decoded: row k of ``actions``
    (n, action_size) float64 is the action of ``agent_ids[k]``."""

    agent_ids: list[str]
    actions: np.ndarray


@dataclass(frozen=True)
class Command:
    """A trainer -> game command, validated. ``data`` is normalised per command (see decode_command)."""

    name: str
    envid: str | None
    data: object
    tick: int | None = None


# --------------------------------------------------------------------------------------------
# Small helpers


def agent_id(index: int, envid: str) -> str:
    """The original project's agent naming: ``car_{i}_env_{envid}``."""
    return f"car_{index}_env_{envid}"


def parse_agent_id(aid: object) -> tuple[int, str]:
    """``car_3_env_ab`` -> (3, "ab"); raises ProtocolError for anything else."""
    m = _AGENT_ID.fullmatch(aid) if isinstance(aid, str) else None
    if m is None:
        raise ProtocolError(f"agent id {_show(aid)} is not of the form car_<i>_env_<envid>", "unknown_agent")
    return int(m.group(1)), m.group(2)


def check_envid(envid: object, where: str = "envid") -> str:
    if not isinstance(envid, str) or _ENVID.fullmatch(envid) is None:
        raise ProtocolError(f"{where}: expected 1-64 characters of [A-Za-z0-9_-], got {_show(envid)}")
    return envid


def _show(value: object, limit: int = 60) -> str:
    """A short printable rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


_NUMBER_TYPES = frozenset({int, float})  # not bool: True is an int in Python but not a number on the wire


def _check_int(value: object, where: str, low: int = 0, high: int = 2**53) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(f"{where}: expected an integer in [{low}, {high}], got {_show(value)}")
    return value


def _check_bool(value: object, where: str) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"{where}: expected true or false, got {_type_name(value)} {_show(value)}")
    return value


def _check_vector(value: object, size: int, where: str) -> list:
    """A JSON array of ``size`` finite numbers (orjson already refused NaN/Infinity literals)."""
    if type(value) is not list:
        raise ProtocolError(f"{where}: expected an array of {size} numbers, got {_type_name(value)}")
    if len(value) != size:
        raise ProtocolError(f"{where}: expected {size} numbers, got {len(value)}")
    if not _NUMBER_TYPES.issuperset(map(type, value)):  # the hot path: one C-level pass
        for k, v in enumerate(value):
            if type(v) not in _NUMBER_TYPES:
                raise ProtocolError(f"{where}[{k}]: expected a number, got {_type_name(v)} {_show(v)}")
    return value


def _check_number(value: object, where: str) -> float:
    if type(value) not in _NUMBER_TYPES or not math.isfinite(value):
        raise ProtocolError(f"{where}: expected a finite number, got {_type_name(value)} {_show(value)}")
    return float(value)


def load_json(raw: str | bytes) -> object:
    """Parse one frame. Oversized frames and non-JSON raise ProtocolError."""
    if isinstance(raw, memoryview):
        size = raw.nbytes
    elif isinstance(raw, str) and len(raw) * 4 > MAX_FRAME_BYTES:
        # characters are a lower bound of the UTF-8 size: count the bytes when it could matter
        size = len(raw.encode("utf-8", "surrogatepass"))
    else:
        size = len(raw)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit", "too_large")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ProtocolError(f"frame is not valid JSON ({err}); first bytes: {_show(raw[:40])}", "bad_json") from None


def _to_json(value: object) -> object:
    """orjson's fallback: numpy values it does not take natively (non-contiguous arrays, float16...)."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(message: dict) -> bytes:
    return orjson.dumps(message, default=_to_json, option=orjson.OPT_SERIALIZE_NUMPY)


# --------------------------------------------------------------------------------------------
# Game -> trainer


def decode_hello(msg: dict) -> Hello:
    protocol = msg.get("protocol")
    if type(protocol) is not int:
        raise ProtocolError(f"hello.protocol: expected an integer version, got {_show(protocol)}")
    if protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            f"hello.protocol: this trainer speaks protocol {PROTOCOL_VERSION}, the game speaks {protocol}; "
            "update the game or the trainer",
            "unsupported_version",
        )
    num_rays = _check_int(msg.get("num_rays", 10), "hello.num_rays", 1, 256)
    obs_size = _check_int(msg.get("obs_size", num_rays + 3), "hello.obs_size", 1, 1024)
    if obs_size != num_rays + 3:
        raise ProtocolError(f"hello.obs_size: expected num_rays + 3 = {num_rays + 3}, got {obs_size}")
    action_size = _check_int(msg.get("action_size", 3), "hello.action_size", 3, 3)
    tick_hz = _check_number(msg.get("tick_hz", 15.0), "hello.tick_hz")
    if not 0.1 <= tick_hz <= 1000:
        raise ProtocolError(f"hello.tick_hz: expected 0.1..1000 decisions per second, got {tick_hz}")
    mode = msg.get("mode", "lockstep")
    if mode not in ("lockstep", "realtime"):
        raise ProtocolError(f'hello.mode: expected "lockstep" or "realtime", got {_show(mode)}')
    caps = msg.get("capabilities", [])
    if type(caps) is not list or not all(isinstance(c, str) for c in caps):
        raise ProtocolError(f"hello.capabilities: expected an array of strings, got {_show(caps)}")
    # Absent: no limit (null is refused, as for every other field).
    max_venvs = _check_int(msg["max_venvs"], "hello.max_venvs", 1, MAX_VENVS) if "max_venvs" in msg else None
    max_cars = _check_int(msg["max_cars"], "hello.max_cars", 1, MAX_AGENTS) if "max_cars" in msg else None
    game = msg.get("game", "unnamed game")
    token = msg.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError(f"hello.token: expected a string, got {_type_name(token)}")  # never show a token
    track = _game_track(msg) if "game_tracks" in caps else None
    spec = GameSpec(
        protocol=protocol,
        game=str(game)[:100],
        obs_size=obs_size,
        num_rays=num_rays,
        action_size=action_size,
        tick_hz=tick_hz,
        mode=mode,
        capabilities=frozenset(caps) & CAPABILITIES,  # unknown capabilities: ignored, not an error
        track=track,
        max_venvs=max_venvs,
        max_cars=max_cars,
    )
    return Hello(spec, token)


def _game_track(msg: dict) -> dict:
    """hello.track of a game that owns its track (capability ``game_tracks``), checked by
    ``tracks.validate``: the trainer trains on it and sends no spec."""
    from rbxenv import tracks  # numba kernels: loaded only for the games that announce a track

    track = msg.get("track")
    if not isinstance(track, dict):
        raise ProtocolError(f"hello.track: capability game_tracks needs the game's track spec, got {_show(track)}")
    problems = tracks.validate(track)
    if problems:
        raise ProtocolError(f"hello.track: not a valid track: {problems[0]}")
    return track


def _check_info(info: object, where: str) -> dict | None:
    if info is None:
        return None
    if type(info) is not dict:
        raise ProtocolError(f"{where}: expected an object, got {_type_name(info)}")
    # Error texts are only formatted on failure: this runs for every car on every tick.
    for key in ("progress", "speed", "x", "y", "heading"):
        value = info.get(key, 0.0)
        if type(value) not in _NUMBER_TYPES:
            _check_number(value, f"{where}.{key}")
    lap = info.get("lap", 0)
    if type(lap) is not int or not 0 <= lap <= 10**6:
        _check_int(lap, f"{where}.lap", 0, 10**6)
    lap_time = info.get("lap_time")
    if lap_time is not None and type(lap_time) not in _NUMBER_TYPES:
        _check_number(lap_time, f"{where}.lap_time")
    if type(info.get("collided", False)) is not bool:
        _check_bool(info["collided"], f"{where}.collided")
    cause = info.get("cause")
    if cause is not None and (not isinstance(cause, str) or cause not in ENDING_CAUSES):
        raise ProtocolError(f"{where}.cause: expected one of {sorted(ENDING_CAUSES)} or null, got {_show(cause)}")
    return info


def _obs_array(rows: list, n: int, obs_size: int, where: str) -> np.ndarray:
    """Validated observation rows -> (n, obs_size) float32 (finite float64 can overflow float32)."""
    with np.errstate(over="ignore"):  # overflow is reported just below, not as a RuntimeWarning
        obs = np.array(rows, dtype=np.float32).reshape(n, obs_size)
    if not np.isfinite(obs).all():
        raise ProtocolError(f"{where}: observation values overflow 32-bit floats")
    return obs


def _column(msg: dict, key: str, n: int, types: frozenset, where: str) -> list:
    """A column of ``n`` values whose Python types are in ``types`` (one C-level pass when fine)."""
    values = msg.get(key)
    if type(values) is not list or len(values) != n:
        got = f"{len(values)} values" if type(values) is list else _type_name(values)
        raise ProtocolError(f"{where}.{key}: expected an array of {n} values, one per id, got {got}")
    if not types.issuperset(map(type, values)):
        k, bad = next((k, v) for k, v in enumerate(values) if type(v) not in types)
        wanted = " or ".join(sorted({_type_name(t()) if t is not type(None) else "null" for t in types}))
        raise ProtocolError(f"{where}.{key}[{k}]: expected {wanted}, got {_type_name(bad)} {_show(bad)}")
    return values


_BOOL = frozenset({bool})
_NUMBER_OR_NULL = frozenset({int, float, type(None)})
_INT_OR_NULL = frozenset({int, type(None)})
_NULLABLE_INFO = frozenset({"lap_time", "cause"})
_STR = frozenset({str})
_LIST = frozenset({list})
_DICT = frozenset({dict})
_STR_OR_NULL = frozenset({str, type(None)})
_CAUSES_OR_NULL = ENDING_CAUSES | {None}


def _match_ids(ids: Iterable[str], n: int, pattern: re.Pattern) -> re.Match | None:
    """Match ``n`` agent ids, joined by newlines, against ``pattern`` (no id may hide a newline)."""
    joined = "\n".join(ids)
    return pattern.fullmatch(joined) if joined.count("\n") == n - 1 else None


def _vector_column(msg: dict, key: str, ids: list[str], size: int, where: str) -> list[list]:
    """A column of ``size``-number arrays, one per id (one C-level type pass when fine)."""
    rows = _column(msg, key, len(ids), _LIST, where)
    if not _vectors_ok(rows, size):
        for k, row in enumerate(rows):
            _check_vector(row, size, f"{where}.{key}[{k}] ({ids[k]})")
    return rows


def _decode_columns(msg: dict, obs_size: int, tick: int | None) -> ObsBatch:
    """The column form (capability ``columns``): one array per field, row k for ``ids[k]``.

    Validated with whole-array passes, not a loop per car: this is the lockstep hot path.
    """
    ids = _check_agent_list(msg["ids"], None, "obs.ids")
    n = len(ids)
    rows = _vector_column(msg, "obs", ids, obs_size, "obs")
    reward = np.array(_column(msg, "reward", n, _NUMBER_TYPES, "obs"), dtype=np.float64)
    terminated = np.array(_column(msg, "terminated", n, _BOOL, "obs"), dtype=bool)
    truncated = np.array(_column(msg, "truncated", n, _BOOL, "obs"), dtype=bool)
    has_info = np.zeros(n, dtype=bool)
    sent = msg.get("info")
    if sent is None:
        info = info_columns(n)
    else:
        if type(sent) is not dict:
            raise ProtocolError(f"obs.info: expected an object of columns, got {_type_name(sent)}")
        has_info[:] = True
        info = {}
        numbers = [key for key in INFO_NUMBERS if key in sent]
        columns = [sent[key] for key in numbers]
        if not (all(type(c) is list and len(c) == n for c in columns) and _NUMBER_OR_NULL.issuperset(
            map(type, chain.from_iterable(columns))) and _INT_OR_NULL.issuperset(map(type, sent.get("lap", ())))
        ):  # fmt: skip
            for key in numbers:
                _column(sent, key, n, _INT_OR_NULL if key == "lap" else _NUMBER_OR_NULL, "obs.info")  # raises
        block = np.array(columns, dtype=np.float64).reshape(len(numbers), n)  # null -> NaN
        for key in INFO_NUMBERS:
            info[key] = block[numbers.index(key)] if key in sent else np.full(n, np.nan)
        bad = np.flatnonzero((info["lap"] < 0) | (info["lap"] > 10**6))  # NaN (not reported) compares False
        if bad.size:
            k = int(bad[0])
            raise ProtocolError(f"obs.info.lap[{k}]: expected an integer in [0, 1000000], got {_show(sent['lap'][k])}")
        collided = _column(sent, "collided", n, _BOOL, "obs.info") if "collided" in sent else [False] * n
        info["collided"] = np.array(collided, dtype=bool)
        causes = _column(sent, "cause", n, _STR_OR_NULL, "obs.info") if "cause" in sent else [None] * n
        if not _CAUSES_OR_NULL.issuperset(causes):
            bad = next(c for c in causes if c not in _CAUSES_OR_NULL)
            raise ProtocolError(f"obs.info.cause: expected one of {sorted(ENDING_CAUSES)} or null, got {_show(bad)}")
        info["cause"] = np.array(causes, dtype=object)
    batch = ObsBatch(tick, ids, _obs_array(rows, n, obs_size, "obs.obs"), reward, terminated, truncated, info, has_info)
    if "reset_ids" in msg:
        batch.restarted, batch.reset_obs = _decode_restarts(msg, batch, obs_size)
    return batch


def _decode_restarts(msg: dict, batch: ObsBatch, obs_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``reset_ids`` / ``reset_obs`` (autoreset): agents of this batch whose episode ended in it
    and that the game restarted, with their first observations -> (restarted, reset_obs) by row."""
    reset_ids = _check_agent_list(msg["reset_ids"], None, "obs.reset_ids")
    rows = _vector_column(msg, "reset_obs", reset_ids, obs_size, "obs")
    row_of = {aid: k for k, aid in enumerate(batch.agent_ids)}
    restarted = np.zeros(len(row_of), dtype=bool)
    reset_obs = np.zeros((len(row_of), obs_size), dtype=np.float32)
    if not reset_ids:
        return restarted, reset_obs
    for aid in reset_ids:
        k = row_of.get(aid)
        if k is None:
            raise ProtocolError(f"obs.reset_ids: {aid} is not in this batch's ids (its ending must come with it)")
        if not (batch.terminated[k] or batch.truncated[k]):
            raise ProtocolError(f"obs.reset_ids: {aid} was restarted, but its episode did not end in this batch")
        restarted[k] = True
    reset_obs[[row_of[aid] for aid in reset_ids]] = _obs_array(rows, len(reset_ids), obs_size, "obs.reset_obs")
    return restarted, reset_obs


def decode_game_message(raw: str | bytes, obs_size: int | None) -> Hello | ObsBatch | ErrorMessage:
    """Parse and validate one frame sent by a game (hello, obs batch, v0 packet or error).

    ``obs_size`` None (a v0 game whose width is not known yet): a v0 packet's first entry sets it.
    ``[]`` is a v0 game's empty packet (Roblox's JSONEncode of an empty table): an ObsBatch of no agents.
    """
    msg = load_json(raw)
    if msg == []:
        return _decode_agents({}, obs_size or 0, None, "packet")
    if type(msg) is not dict:
        raise ProtocolError(f"expected a JSON object, got {_type_name(msg)}")
    kind = msg.get("type")
    if kind is None:  # a v0 packet: {agent_id: {...}}
        return _decode_agents(msg, obs_size, None, "packet")
    if kind == "obs":
        obs_size = obs_size or V0_GAME.obs_size
        tick = msg.get("tick")
        if tick is not None:
            _check_int(tick, "obs.tick")
        if "ids" in msg:
            return _decode_columns(msg, obs_size, tick)
        agents = msg.get("agents")
        if type(agents) is not dict:
            raise ProtocolError(f"obs.agents: expected an object of agent entries, got {_type_name(agents)}")
        return _decode_agents(agents, obs_size, tick, "obs.agents")
    if kind == "hello":
        return decode_hello(msg)
    if kind == "error":
        return ErrorMessage(str(msg.get("code", "bad_message"))[:40], str(msg.get("message", ""))[:500])
    raise ProtocolError(f'type: expected "hello", "obs" or "error", got {_show(kind)}', "unknown_command")


def encode_hello(spec: GameSpec, token: str | None = None) -> bytes:
    msg = {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "game": spec.game,
        "obs_size": spec.obs_size,
        "num_rays": spec.num_rays,
        "action_size": spec.action_size,
        "tick_hz": spec.tick_hz,
        "mode": spec.mode,
        "capabilities": sorted(spec.capabilities),
    }
    if spec.track is not None:
        msg["track"] = spec.track
    if spec.max_venvs is not None:
        msg["max_venvs"] = spec.max_venvs
    if spec.max_cars is not None:
        msg["max_cars"] = spec.max_cars
    if token is not None:
        msg["token"] = token
    return dumps(msg)


def encode_obs(
    agent_ids: list[str],
    obs: np.ndarray,
    reward: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    info: dict[str, np.ndarray] | None = None,
    tick: int | None = None,
    form: str = "batch",
    reset_ids: list[str] | None = None,
    reset_obs: np.ndarray | None = None,
) -> bytes:
    """An observation message of the given agents, ``info`` as columns (see ``info_columns``).

    ``form``: "columns" (v1 ``obs`` batch in column form), "batch" (v1 ``obs`` batch, one entry per
    agent) or "v0" (the per-venv packet of protocol version 0, no type and no tick). ``reset_ids`` and their
    first observations ``reset_obs``: the agents restarted by autoreset (column form only).
    """
    if form == "columns":
        msg = {"type": "obs", "tick": tick, "ids": agent_ids, "obs": obs, "reward": reward,
               "terminated": terminated, "truncated": truncated}  # fmt: skip
        if info is not None:
            # NaN goes out as null (orjson), which is what "not reported" / "no lap yet" are
            lap = info["lap"]
            if lap.dtype.kind == "f":  # laps are integers on the wire
                lap = [None if v != v else int(v) for v in lap.tolist()]
            msg["info"] = {key: info[key] for key in INFO_NUMBERS} | {
                "lap": lap,
                "collided": info["collided"],
                "cause": info["cause"].tolist(),
            }
        if reset_ids is not None:
            msg["reset_ids"], msg["reset_obs"] = reset_ids, reset_obs
        return dumps(msg)
    agents = _encode_entries(agent_ids, obs, reward, terminated, truncated, info)
    if form == "v0":
        return dumps(agents)
    return dumps({"type": "obs", "tick": tick, "agents": agents})


def encode_error(code: str, message: str) -> bytes:
    return dumps({"type": "error", "code": code, "message": message})


def encode_welcome(capabilities: frozenset[str]) -> bytes:
    return dumps({"type": "welcome", "protocol": PROTOCOL_VERSION, "capabilities": sorted(capabilities)})


# --------------------------------------------------------------------------------------------
# Trainer -> game


def encode_command(command: str, envid: str | None = None, data: object = None, tick: int | None = None) -> bytes:
    """One command frame. The original project's three keys always appear; ``tick`` only when given."""
    msg: dict = {"command": command, "envid": envid, "data": data}
    if tick is not None:
        msg["tick"] = tick
    return dumps(msg)


def encode_pong(t: float) -> bytes:
    """A game's answer to a PING that carried a time (the original project's later trainers measure with it)."""
    return dumps({"__pong": {"t": t}})


def encode_action_rows(agent_ids: list[str], actions: np.ndarray, tick: int) -> bytes:
    """ACTION_BATCH in column form (to games that announced ``columns``): row k of ``actions``
    (n, action_size) for ``agent_ids[k]``."""
    msg = {"command": "ACTION_BATCH", "envid": None, "data": None, "tick": tick, "ids": agent_ids, "actions": actions}
    return dumps(msg)


def _check_agent_list(data: object, envid: str | None, where: str) -> list[str]:
    """A list of unique agent ids (all of venv ``envid`` when given): one regex pass for all of them,
    the lockstep hot path for the ``ids`` of column-form messages; a loop names a bad one."""
    if type(data) is not list:
        raise ProtocolError(f"{where}: expected an array of agent ids, got {_type_name(data)}")
    n = len(data)
    if n > MAX_AGENTS:
        raise ProtocolError(f"{where}: {n} agents, the limit is {MAX_AGENTS}", "too_large")
    m = (
        _match_ids(data, n, _AGENT_IDS if envid is None else _VENV_AGENT_IDS)
        if _STR.issuperset(map(type, data))
        else None
    )
    if n and (m is None or envid is not None and m.group(1) != envid):
        for aid in data:  # raises, naming the first bad id
            _, aid_env = parse_agent_id(aid)
            if envid is not None and aid_env != envid:
                raise ProtocolError(f"{where}: agent {aid} does not belong to venv {envid}", "unknown_agent")
    if len(set(data)) != n:  # (a repeated id would be reset twice, and answered twice)
        raise ProtocolError(f"{where}: an agent id appears twice")
    return data


def _check_actions(data: object, envid: str | None, action_size: int, where: str) -> dict[str, list]:
    if type(data) is not dict:
        raise ProtocolError(
            f"{where}: expected an object {{agent_id: [{action_size} numbers]}}, got {_type_name(data)}"
        )
    if len(data) > MAX_AGENTS:
        raise ProtocolError(f"{where}: {len(data)} agents, the limit is {MAX_AGENTS}", "too_large")
    if data and _actions_ok(data, envid, action_size):  # the hot path: whole-batch passes
        return data
    for aid, action in data.items():
        _, aid_env = parse_agent_id(aid)
        if envid is not None and aid_env != envid:
            raise ProtocolError(f"{where}: agent {aid} does not belong to venv {envid}", "unknown_agent")
        if type(action) is not list or len(action) != action_size or not _NUMBER_TYPES.issuperset(map(type, action)):
            _check_vector(action, action_size, f"{where}.{aid}")  # raises, saying what is wrong
    return data


def _actions_ok(data: dict, envid: str | None, action_size: int) -> bool:
    """Every key an agent id (of ``envid``), every value an array of ``action_size`` numbers."""
    m = _match_ids(data, len(data), _VENV_AGENT_IDS)
    if m is None or (envid is not None and m.group(1) != envid):
        return False
    actions = data.values()
    return (
        _LIST.issuperset(map(type, actions))
        and set(map(len, actions)) == {action_size}
        and _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(actions)))
    )


def _action_batch_ok(data: dict, action_size: int) -> bool:
    """ACTION_BATCH data that ``_check_actions`` would pass for every venv, checked in a few
    passes over the whole batch (False: let the per-venv checks say what is wrong)."""
    per_venv = data.values()
    if not (data and _DICT.issuperset(map(type, per_venv)) and 0 < min(map(len, per_venv))):
        return False
    if max(map(len, per_venv)) > MAX_AGENTS:
        return False
    joined = "\x00".join([venv + "\t" + "\n".join(actions) for venv, actions in data.items()])
    blocks, cars = len(data), sum(map(len, per_venv))
    if not (
        joined.count("\t") == blocks and joined.count("\x00") == blocks - 1 and joined.count("\n") == cars - blocks
    ):
        return False  # a separator hidden in a key
    if _BATCH_IDS.fullmatch(joined) is None:
        return False
    return _vectors_ok(list(chain.from_iterable(actions.values() for actions in per_venv)), action_size)


def check_track_spec(track: object, where: str = "track") -> dict:
    """Structural check of a track spec (PROTOCOL.md §3.4); geometry is rbxenv.tracks' job."""
    if type(track) is not dict:
        raise ProtocolError(f"{where}: expected a track spec object, got {_type_name(track)}")
    centerline = track.get("centerline")
    if type(centerline) is not list or not 8 <= len(centerline) <= 20000:
        got = f"{len(centerline)} points" if type(centerline) is list else _type_name(centerline)
        raise ProtocolError(f"{where}.centerline: expected an array of 8..20000 [x, y] points, got {got}")
    if not _vectors_ok(centerline, 2):  # one pass for all points; the loop says which is wrong
        for k, point in enumerate(centerline):
            _check_vector(point, 2, f"{where}.centerline[{k}]")
    half_width = track.get("half_width")
    if type(half_width) is not list or len(half_width) != len(centerline):
        got = f"{len(half_width)} numbers" if type(half_width) is list else _type_name(half_width)
        raise ProtocolError(
            f"{where}.half_width: expected {len(centerline)} numbers, one per centre-line point, got {got}"
        )
    _check_vector(half_width, len(centerline), f"{where}.half_width")
    if not min(half_width) > 0:
        k = next(k for k, w in enumerate(half_width) if not w > 0)
        raise ProtocolError(f"{where}.half_width[{k}]: expected a positive number, got {_show(half_width[k])}")
    grid = track.get("grid", [])
    if type(grid) is not list:
        raise ProtocolError(f"{where}.grid: expected an array of [x, y, heading], got {_type_name(grid)}")
    if not _vectors_ok(grid, 3):
        for k, slot in enumerate(grid):
            _check_vector(slot, 3, f"{where}.grid[{k}]")
    return track


def _vectors_ok(rows: list, size: int) -> bool:
    """Every row an array of ``size`` numbers (whole-list passes; ``_check_vector`` names a bad one)."""
    return (
        _LIST.issuperset(map(type, rows))
        and set(map(len, rows)) <= {size}
        and _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(rows)))
    )


def _check_spawn(data: object, envid: str) -> dict:
    """SPAWN_AGENTS data -> {"agents", "track", "start", "seed", "autoreset"} whichever form it came in."""
    if type(data) is list:
        return {
            "agents": _check_agent_list(data, envid, "SPAWN_AGENTS.data"),
            "track": None,
            "start": "grid",
            "seed": None,
            "autoreset": False,
        }
    if type(data) is not dict:
        raise ProtocolError(
            f"SPAWN_AGENTS.data: expected an array of agent ids or a spawn object, got {_type_name(data)}"
        )
    agents = _check_agent_list(data.get("agents"), envid, "SPAWN_AGENTS.data.agents")
    track = data.get("track")
    if track is not None:
        check_track_spec(track, "SPAWN_AGENTS.data.track")
    start = data.get("start", "grid")
    if start not in ("grid", "random"):
        raise ProtocolError(f'SPAWN_AGENTS.data.start: expected "grid" or "random", got {_show(start)}')
    seed = data.get("seed")
    if seed is not None:
        _check_int(seed, "SPAWN_AGENTS.data.seed", 0, 2**63 - 1)
    autoreset = _check_bool(data.get("autoreset", False), "SPAWN_AGENTS.data.autoreset")
    return {"agents": agents, "track": track, "start": start, "seed": seed, "autoreset": autoreset}


def decode_command(raw: str | bytes, action_size: int = 3) -> Command:
    """Parse and validate one frame sent by the trainer (the game side of the protocol).

    ``data`` comes out normalised, whichever form it came in (rbxenv's bare list / bool, or the
    v0 trainer's object, which ``_command_from_v0`` turns into rbxenv's): FREEZE/UPDATE_COLLISIONS
    -> bool, RESET/REMOVE -> list of ids (an older v0 trainer's RESET comes out as RESET_AGENTS),
    SPAWN_AGENTS -> spawn dict, ACTION ->
    {aid: action}, ACTION_BATCH -> {envid: {aid: action}} (``ActionRows`` in the column form),
    PING -> the time to echo or None, CREATE_ENV / CLOSE -> None.
    Frames the trainer sends that are not commands (``welcome``, ``error``) come back as
    Command("WELCOME"/"ERROR", None, msg).
    """
    msg = load_json(raw)
    if type(msg) is not dict:
        raise ProtocolError(f"expected a JSON object, got {_type_name(msg)}")
    if msg.get("type") == "welcome":
        return Command("WELCOME", None, msg)
    if msg.get("type") == "error":
        return Command("ERROR", None, ErrorMessage(str(msg.get("code")), str(msg.get("message"))))
    name = msg.get("command")
    if not isinstance(name, str) or name not in COMMANDS:
        raise ProtocolError(f"command: expected one of {sorted(COMMANDS)}, got {_show(name)}", "unknown_command")
    tick = msg.get("tick")
    if tick is not None:
        _check_int(tick, f"{name}.tick")
    data = msg.get("data")
    envid = msg.get("envid")
    name, data, where = _command_from_v0(name, data)
    if name in ("FREEZE", "UPDATE_COLLISIONS"):
        return Command(name, None, _check_bool(data, where), tick)
    if name in ("CLOSE_ALL",):
        return Command(name, None, None, tick)
    if name == "PING":  # the original project's keep-alive: no envid, no data, or {"t": time} to be echoed in __pong
        t = data.get("t") if type(data) is dict else None
        return Command(name, None, None if t is None else _check_number(t, "PING.data.t"), tick)
    if name == "ACTION_BATCH":
        if data is None and "ids" in msg:  # the column form
            ids = _check_agent_list(msg["ids"], None, f"{name}.ids")
            rows = _vector_column(msg, "actions", ids, action_size, name)
            flat = np.fromiter(chain.from_iterable(rows), np.float64, len(ids) * action_size)  # (np.array: 2x slower)
            return Command(name, None, ActionRows(ids, flat.reshape(len(ids), action_size)), tick)
        if type(data) is not dict or len(data) > MAX_VENVS:
            got = f"{len(data)} venvs" if type(data) is dict else _type_name(data)
            raise ProtocolError(
                f"ACTION_BATCH.data: expected an object {{envid: {{agent_id: action}}}} of at most {MAX_VENVS} venvs, "
                f"got {got}",
                "too_large" if type(data) is dict else "bad_message",
            )
        if not _action_batch_ok(data, action_size):  # the hot path: whole-batch passes
            for venv, actions in data.items():  # raises, naming the venv and agent at fault
                check_envid(venv, "ACTION_BATCH.data key")
                _check_actions(actions, venv, action_size, f"ACTION_BATCH.data.{venv}")
        return Command(name, None, data, tick)
    envid = check_envid(envid, f"{name}.envid")
    if name in ("CLOSE", "CREATE_ENV"):
        return Command(name, envid, None, tick)
    if name == "SPAWN_AGENTS":
        return Command(name, envid, _check_spawn(data, envid), tick)
    if name == "ACTION":
        return Command(name, envid, _check_actions(data, envid, action_size, "ACTION.data"), tick)
    return Command(name, envid, _check_agent_list(data, envid, where), tick)  # RESET_AGENTS / REMOVE_AGENTS


# --------------------------------------------------------------------------------------------
# Compatibility forms, at the edge: protocol version 0 (the original project's packets and
# command objects) and v1's per-agent batch form. The core above speaks the v1 column form and
# calls these only where another form arrives or must go out.


def _decode_agents(agents: dict, obs_size: int | None, tick: int | None, where: str) -> ObsBatch:
    """The per-agent form: ``{agent_id: {"obs", "reward", "terminated", "truncated", "info"?,
    "last_observation"?}}``. Keys starting with ``__`` are not agents (a v0 game's ``__pong``):
    skipped. ``obs_size`` None: the first entry's observation sets the width (a v0 game says it
    nowhere else) and every other entry must match it."""
    if any(key[:2] == "__" for key in agents):
        agents = {key: entry for key, entry in agents.items() if key[:2] != "__"}
    if obs_size is None:
        first = next(iter(agents.values()), None)
        obs = first.get("obs") if type(first) is dict else None
        obs_size = len(obs) if type(obs) is list and 0 < len(obs) <= 1024 else 0
        if not obs_size and first is not None:
            _check_entry_obs(next(iter(agents)), first)  # raises, saying what is wrong
    if len(agents) > MAX_AGENTS:
        raise ProtocolError(f"{where}: {len(agents)} agents in one message, the limit is {MAX_AGENTS}", "too_large")
    ids: list[str] = []
    rows: list[list] = []
    n = len(agents)
    reward = np.empty(n)
    terminated = np.empty(n, dtype=bool)
    truncated = np.empty(n, dtype=bool)
    info = info_columns(n)
    has_info = np.zeros(n, dtype=bool)
    last_rows: list[list] | None = None
    has_last: np.ndarray | None = None
    for k, (aid, entry) in enumerate(agents.items()):
        parse_agent_id(aid)
        if type(entry) is not dict:
            raise ProtocolError(
                f"{where}.{aid}: expected an object with obs/reward/terminated/truncated, got {_type_name(entry)}"
            )
        try:
            obs, r, term, trunc = entry["obs"], entry["reward"], entry["terminated"], entry["truncated"]
        except KeyError as err:
            raise ProtocolError(f"{aid}: missing field {err.args[0]!r}") from None
        # Fast checks first; the detailed ones (which format the error text) run only on failure.
        if type(obs) is not list or len(obs) != obs_size or not _NUMBER_TYPES.issuperset(map(type, obs)):
            _check_vector(obs, obs_size, f"{aid}.obs")
        if type(r) not in _NUMBER_TYPES:
            _check_number(r, f"{aid}.reward")
        if type(term) is not bool:
            _check_bool(term, f"{aid}.terminated")
        if type(trunc) is not bool:
            _check_bool(trunc, f"{aid}.truncated")
        rows.append(obs)
        reward[k], terminated[k], truncated[k] = r, term, trunc
        if "last_observation" in entry:
            last = entry["last_observation"]
            if type(last) is not list or len(last) != obs_size or not _NUMBER_TYPES.issuperset(map(type, last)):
                _check_vector(last, obs_size, f"{aid}.last_observation")
            if last_rows is None:
                last_rows, has_last = [[0.0] * obs_size for _ in range(n)], np.zeros(n, dtype=bool)
            last_rows[k], has_last[k] = last, True
        entry_info = _check_info(entry.get("info"), aid + ".info")
        if entry_info is not None:
            has_info[k] = True
            for key, value in entry_info.items():
                column = info.get(key)
                if column is not None and value is not None:
                    column[k] = value
        ids.append(aid)
    batch = ObsBatch(tick, ids, _obs_array(rows, n, obs_size, where), reward, terminated, truncated, info, has_info)
    if last_rows is not None:
        batch.last_obs, batch.has_last = _obs_array(last_rows, n, obs_size, where + " last_observation"), has_last
    return batch


def _check_entry_obs(aid: str, entry: object) -> None:
    """Raise the error an agent entry whose ``obs`` sets no width deserves."""
    if type(entry) is not dict:
        raise ProtocolError(f"{aid}: expected an object with obs/reward/terminated/truncated, got {_type_name(entry)}")
    if "obs" not in entry:
        raise ProtocolError(f"{aid}: missing field 'obs'")
    obs = entry["obs"]
    if type(obs) is not list:
        raise ProtocolError(f"{aid}.obs: expected an array of numbers, got {_type_name(obs)}")
    raise ProtocolError(f"{aid}.obs: expected 1..1024 numbers, got {len(obs)}")


def _encode_entries(agent_ids: list[str], obs, reward, terminated, truncated, info) -> dict:
    """The per-agent form of an observation batch: ``{agent_id: {"obs", "reward", "terminated",
    "truncated", "info"?}}``, info keys not reported left out (only lap_time and cause may be null)."""
    infos = info_dicts(info) if info is not None else None
    agents = {}
    for k, aid in enumerate(agent_ids):
        entry = {
            "obs": obs[k],
            "reward": float(reward[k]),
            "terminated": bool(terminated[k]),
            "truncated": bool(truncated[k]),
        }
        if infos is not None:
            entry["info"] = {key: v for key, v in infos[k].items() if v is not None or key in _NULLABLE_INFO}
        agents[aid] = entry
    return agents


_V0_FLAG = {"FREEZE": "status", "UPDATE_COLLISIONS": "enable_collisions"}


def encode_v0_command(command: str, envid: str | None = None, data: object = None) -> bytes:
    """One command in the v0 trainer's own form, for a game that never said hello (the original project's
    place reads ``data.agents``, ``data.status`` ... and would fail on rbxenv's bare lists and
    booleans): ``data`` is always an object and ``envid`` a string ("" where no venv applies)."""
    if command == "PING":
        return dumps({"command": "PING"})
    if command in _V0_FLAG:
        return dumps({"command": command, "envid": "", "data": {_V0_FLAG[command]: bool(data)}})
    if command in ("SPAWN_AGENTS", "RESET_AGENTS", "REMOVE_AGENTS"):
        data = {"agents": data} if type(data) is list else data
    return dumps({"command": command, "envid": envid or "", "data": {} if data is None else data})


def _command_from_v0(name: str, data: object) -> tuple[str, object, str]:
    """A command in the v0 trainer's forms -> rbxenv's (name, data) and where its data is checked:
    ``{"status": b}`` / ``{"enable_collisions": b}`` -> b, ``{"agents": [...]}`` -> the list (RESET,
    REMOVE; SPAWN_AGENTS takes the object as its spawn form), RESET -> RESET_AGENTS."""
    if name == "RESET":
        name = "RESET_AGENTS"
    if type(data) is dict:
        if name in _V0_FLAG:
            return name, data.get(_V0_FLAG[name]), f"{name}.data.{_V0_FLAG[name]}"
        if name in ("RESET_AGENTS", "REMOVE_AGENTS"):
            return name, data.get("agents"), f"{name}.data.agents"
    return name, data, f"{name}.data"
