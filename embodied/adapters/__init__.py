"""Adapters that let other libraries use every registered task.

``embodied.adapters.gymnasium``: one env as a ``gymnasium.Env`` (and gymnasium ids via
``register_gymnasium_envs``). ``embodied.adapters.sb3``: a whole batch as a stable-baselines3
``VecEnv``. Import the submodule you need; this package imports nothing heavy.
"""
