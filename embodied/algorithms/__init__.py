"""Learning algorithms with the rsl_rl surface: act, process_env_step, compute_returns, update."""

from embodied.algorithms.ppo import PPO, PPOConfig

__all__ = ["PPO", "PPOConfig"]
