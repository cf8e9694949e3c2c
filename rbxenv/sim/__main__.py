"""``python -m rbxenv.sim --url ws://...``: run the headless simulator as a game (see client.py)."""

from rbxenv.sim.client import main

main()
