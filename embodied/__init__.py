"""The workflow: tasks, the batched env contract, algorithms, runner, CLI, export and deploy.

Importing this package imports nothing heavy: ``embodied.deploy`` runs on robots without torch.
"""

import os

# torch's OpenMP workers otherwise spin after each parallel region and steal the cores the
# simulator's native threads need (measured 20-40x slower PPO on 2 cores). Read at torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
