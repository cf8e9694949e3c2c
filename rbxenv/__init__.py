"""rbxenv: train AI drivers for Roblox racing games with reinforcement learning.

The game (Roblox, or the headless simulator in ``rbxenv.sim``) and the trainer talk over one
WebSocket; see PROTOCOL.md.
"""
