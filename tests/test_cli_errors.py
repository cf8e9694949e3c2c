"""Every command answers bad input with one clear line: one table over every entry point a user runs.

Each row runs the real command in a subprocess: bad input (zero, negative, NaN, an unknown choice
or flag, a missing, unreadable or wrong kind of file) exits 2; a runtime failure (no game, a game
that never answers, a port in use, an unreachable trainer, a full disk) exits 1.
Either way stderr holds exactly one line, which starts with the command's name, and no traceback.
The rows run in parallel (a module fixture), so the table costs about as long as its slowest rows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rbxenv
from rbxenv import cli, protocol, training

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
PPO, SAC, EXPORT = str(ROOT / "ppo_continuous.py"), str(ROOT / "sac_continuous.py"), str(ROOT / "export_onnx.py")
DRIVE, SIM, TRACKS = ["-m", "rbxenv.drive"], ["-m", "rbxenv.sim"], ["-m", "rbxenv.tracks"]
BENCH, EXAMPLE, RLLIB = ROOT / "bench", str(ROOT / "examples" / "sb3_ppo.py"), str(ROOT / "examples" / "rllib_ppo.py")

# (row id, command after `python`, exit code, the command's name, text the one stderr line must hold).
# {missing}, {unreadable}, {garbage}, {dir}, {policy}, {busy}, {closed}, {nogame}, {silent...} are filled in below.
# A file of the wrong kind that only torch.load can tell apart (export's and --resume's) is
# test_export.py's and test_reliability.py's: here it would cost a torch import per row.
# fmt: off
TABLE = [
    # the training scripts: tyro flags, checked before torch loads
    ("ppo zero", [PPO, "--num-agents", "0"], 2, "ppo_continuous.py", "--num-agents 0: allowed: 1 or more"),
    ("ppo negative", [PPO, "--num-venvs", "-3"], 2, "ppo_continuous.py", "--num-venvs -3: allowed: 1 or more"),
    ("ppo nan", [PPO, "--learning-rate", "nan"], 2, "ppo_continuous.py", "--learning-rate nan: allowed: a number above 0"),
    ("ppo choice", [PPO, "--mode", "warp"], 2, "ppo_continuous.py", "invalid choice 'warp' for argument '--mode'"),
    ("ppo flag", [PPO, "--num-agnets", "3"], 2, "ppo_continuous.py", "did you mean --num-agents?"),
    ("ppo not a number", [PPO, "--gamma", "high"], 2, "ppo_continuous.py", "--gamma"),
    ("ppo minibatches", [PPO, "--num-minibatches", "99999"], 2, "ppo_continuous.py", "--num-minibatches 99999: allowed: 1 to 5120"),
    ("ppo missing", [PPO, "--resume", "{missing}"], 2, "ppo_continuous.py", "--resume {missing}: no such file"),
    ("ppo unreadable", [PPO, "--resume", "{unreadable}"], 2, "ppo_continuous.py", "{unreadable}: cannot be read"),
    ("ppo wrong kind", [PPO, "--resume", "{dir}"], 2, "ppo_continuous.py", "--resume {dir}: is a directory, not a file"),
    ("ppo silent game", [PPO, "--no-sim", "--port", "{silent_ppo}"], 1, "ppo_continuous.py", "the game stopped answering"),
    ("sac zero", [SAC, "--batch-size", "0"], 2, "sac_continuous.py", "--batch-size 0: allowed: 1 or more"),
    ("sac nan", [SAC, "--tau", "nan"], 2, "sac_continuous.py", "--tau nan: allowed: 0 to 1"),
    ("sac choice", [SAC, "--start", "moon"], 2, "sac_continuous.py", "invalid choice 'moon' for argument '--start'"),
    ("sac missing", [SAC, "--resume", "{missing}"], 2, "sac_continuous.py", "--resume {missing}: no such file"),
    # export_onnx.py
    ("export missing", [EXPORT, "{missing}"], 2, "export_onnx.py", "{missing}: no such file"),
    ("export unreadable", [EXPORT, "{unreadable}"], 2, "export_onnx.py", "{unreadable}: cannot be read"),
    ("export wrong kind", [EXPORT, "{dir}"], 2, "export_onnx.py", "{dir}: is a directory, not a checkpoint file"),
    ("export negative", [EXPORT, "{garbage}", "--check-steps", "-1"], 2, "export_onnx.py", "--check-steps -1: allowed: 0 or more"),
    ("export no file", [EXPORT], 2, "export_onnx.py", "the following arguments are required: checkpoint"),
    # python -m rbxenv.drive (onnxruntime only)
    ("drive zero", [*DRIVE, "{policy}", "--num-agents", "0"], 2, "rbxenv.drive", "--num-agents 0: allowed: 1 or more"),
    ("drive nan", [*DRIVE, "{policy}", "--wait-timeout", "nan"], 2, "rbxenv.drive", "--wait-timeout nan: allowed: a number above 0"),
    ("drive port range", [*DRIVE, "{policy}", "--port", "70000"], 2, "rbxenv.drive", "--port 70000: allowed: 0 to 65535"),
    ("drive choice", [*DRIVE, "{policy}", "--start", "moon"], 2, "rbxenv.drive", "invalid choice: 'moon'"),
    ("drive missing", [*DRIVE, "{missing}"], 2, "rbxenv.drive", "{missing}: no such file"),
    ("drive unreadable", [*DRIVE, "{unreadable}"], 2, "rbxenv.drive", "{unreadable}: cannot be read"),
    ("drive wrong kind", [*DRIVE, "{garbage}"], 2, "rbxenv.drive", "{garbage}: not a readable ONNX model"),
    ("drive port in use", [*DRIVE, "{policy}", "--no-sim", "--port", "{busy}"], 1, "rbxenv.drive", "cannot listen on 127.0.0.1:{busy}"),
    ("drive no game", [*DRIVE, "{policy}", "--no-sim", "--port", "{nogame}", "--wait-timeout", "0.5"], 1, "rbxenv.drive", "no game connected to ws://127.0.0.1:{nogame} within 0.5 s"),
    ("drive silent game", [*DRIVE, "{policy}", "--no-sim", "--port", "{silent}"], 1, "rbxenv.drive", "the game stopped answering"),
    # python -m rbxenv.sim and python -m rbxenv.tracks
    ("sim unreachable", [*SIM, "--url", "ws://127.0.0.1:{closed}", "--connect-timeout", "0"], 1, "rbxenv.sim", "no trainer at ws://127.0.0.1:{closed}"),
    ("sim wrong url", [*SIM, "--url", "http://127.0.0.1:8765"], 2, "rbxenv.sim", "allowed: a ws:// or wss:// URL"),
    ("tracks negative", [*TRACKS, "--seed", "-1"], 2, "rbxenv.tracks", "--seed -1: allowed: 0 or more"),
    ("tracks disk full", [*TRACKS, "-o", "/dev/full"], 1, "rbxenv.tracks", "cannot write /dev/full (No space left on device)"),
    # examples/ and bench/ (realtime_load, reference_driver and step_breakdown refuse through the same
    # cli.check; left out here because each of their rows would pay a numba import for nothing new)
    ("example zero", [EXAMPLE, "--timesteps", "0"], 2, "sb3_ppo.py", "--timesteps 0: allowed: 1 or more"),
    ("rllib nan", [RLLIB, "--gamma", "nan"], 2, "rllib_ppo.py", "--gamma nan: allowed: 0 to 1"),
    ("env_speed zero", [str(BENCH / "env_speed.py"), "--num-venvs", "0"], 2, "env_speed.py", "--num-venvs 0: allowed: 1 or more"),
    ("learning nan", [str(BENCH / "learning.py"), "--minutes", "nan"], 2, "learning.py", "--minutes nan: allowed: a number above 0"),
    ("luau_game negative", [str(BENCH / "luau_game.py"), "--steps", "-5"], 2, "luau_game.py", "--steps -5: allowed: 1 or more"),
    ("sim_speed negative", [str(BENCH / "sim_speed.py"), "--repeat", "-1"], 2, "sim_speed.py", "--repeat -1: allowed: 1 or more"),
]
# fmt: on


def write_policy(path: Path) -> None:
    """A real ONNX driving policy (52 stacked floats in, 3 actions out), built without torch."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.1, (52, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "w"], ["pre"]), helper.make_node("Tanh", ["pre"], ["action"])],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 52])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def silent_game(port: int, stop: threading.Event) -> None:
    """A game that connects and says hello, then never answers a command (paused, hung)."""
    from websockets.sync.client import connect

    spec = protocol.GameSpec(protocol=protocol.PROTOCOL_VERSION, game="silent", mode="lockstep")
    hello = protocol.encode_hello(spec, None)
    while not stop.is_set():
        try:
            with connect(f"ws://127.0.0.1:{port}", open_timeout=2) as ws:
                ws.send(hello.decode())
                while not stop.is_set():
                    try:
                        ws.recv(timeout=0.2)
                    except TimeoutError:
                        pass
            return
        except OSError:
            time.sleep(0.1)  # the trainer is not listening yet
        except Exception:  # noqa: BLE001 - the trainer closed the connection: done
            return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    garbage = tmp / "garbage.bin"
    garbage.write_bytes(b"\x80\x04 not a checkpoint, not a model" * 40)
    if os.geteuid() == 0:  # root reads any mode-000 file: use one whose read fails for everyone
        unreadable = "/proc/self/mem"
    else:
        unreadable = tmp / "unreadable.pt"
        unreadable.write_bytes(b"x")
        unreadable.chmod(0)
    write_policy(tmp / "policy.onnx")
    busy = socket.socket()  # another trainer on this port
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    fill = {
        "missing": str(tmp / "missing.pt"),
        "unreadable": str(unreadable),
        "garbage": str(garbage),
        "dir": str(tmp),
        "policy": str(tmp / "policy.onnx"),
        "busy": str(busy.getsockname()[1]),
        "closed": str(free_port()),  # nobody listens: the simulator finds no trainer there
        "nogame": str(free_port()),  # a trainer listens, no game comes (not {closed}: the simulator would come)
        "silent": str(free_port()),
        "silent_ppo": str(free_port()),
    }
    stop = threading.Event()
    games = [
        threading.Thread(target=silent_game, args=(int(fill[key]), stop), daemon=True)
        for key in ("silent", "silent_ppo")
    ]
    for game in games:
        game.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}

    def run(row):
        argv = [PY, *(arg.format(**fill) for arg in row[1])]
        started = time.monotonic()
        done = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
        return done, time.monotonic() - started

    try:
        # The silent-game rows wait out the bridge's 10 s observation timeout: start them first.
        rows = sorted(TABLE, key=lambda row: "silent" not in row[0])
        with ThreadPoolExecutor(max_workers=4) as pool:
            ran = dict(zip([row[0] for row in rows], pool.map(run, rows), strict=True))
    finally:
        stop.set()
        busy.close()
        for game in games:
            game.join(timeout=5)
    return ran, fill


@pytest.mark.parametrize(("name", "argv", "code", "prog", "says"), TABLE, ids=[row[0] for row in TABLE])
def test_bad_input_and_failures_are_one_line(results, name, argv, code, prog, says):
    ran, fill = results
    done, seconds = ran[name]
    lines = done.stderr.strip().splitlines()
    shown = f"{name} ({seconds:.1f} s): exit {done.returncode}\nstderr:\n{done.stderr[-2000:]}\nstdout:\n{done.stdout[-500:]}"
    assert done.returncode == code, shown
    assert "Traceback" not in done.stderr + done.stdout, shown
    assert len(lines) == 1, shown
    assert lines[0].startswith(f"{prog}: "), shown
    assert says.format(**fill) in lines[0], shown
    if code == 2:
        assert lines[0].startswith(f"{prog}: error: "), shown
    if name == "ppo silent game":  # the run never trained: nothing to keep, and it says so
        assert lines[0].endswith("at step 0; nothing was learned, so no checkpoint"), shown
    if name == "drive silent game":  # its summary still prints: no rates, no lap time ("-", never nan)
        assert (
            "summary: 0 episodes | 0 laps | lap completion - | crash rate - | lap time mean -, best -" in done.stdout
        ), shown


def test_figures_that_do_not_exist_print_as_a_dash():
    assert [cli.figure(v, ".1f", " s") for v in (float("nan"), None, float("inf"), 12.345)] == ["-", "-", "-", "12.3 s"]
    assert cli.HELDOUT_TRACKS == len(rbxenv.HELDOUT_TRACK_SEEDS)  # the flag checks know it without the env


@pytest.mark.parametrize("script", ["ppo_continuous", "sac_continuous"])
def test_track_is_a_deprecated_alias_of_wandb(script, monkeypatch, capsys):
    """--track (W&B logging, CleanRL's name) still works: it turns on --wandb and says so in one line."""
    module = __import__(script)
    monkeypatch.setattr(sys, "argv", [module.PROG, "--track"])
    args = training.parse_args(module.Args, module.PROG, script[:3], module.check_args)
    assert args.wandb and not args.track
    assert capsys.readouterr().err.splitlines() == [f"{module.PROG}: warning: --track is deprecated, use --wandb"]
    monkeypatch.setattr(sys, "argv", [module.PROG, "--wandb"])
    args = training.parse_args(module.Args, module.PROG, script[:3], module.check_args)
    assert args.wandb and capsys.readouterr().err == ""
