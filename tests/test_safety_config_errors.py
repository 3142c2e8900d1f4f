"""Bad safety input: one line on stderr and exit 2, before any run directory is made."""

import pytest

from embodied.cli import main
from tests.test_train_e2e import TINY


@pytest.mark.parametrize(
    "args, needle",
    [
        (["safety.filters=[nope]"], "unknown safety filter 'nope'"),
        (
            [
                "safety.filters=[cbf]",
                "+task.barriers.x.h={missing_term: 1.0}",
                "+task.barriers.x.gain=[0,0,0,0,0,0,0,0,0,0,0,0]",
            ],
            "barrier 'x' h: the policy observation has no term 'missing_term'",
        ),
        (["algo=ppo_lagrangian", "safety.cost_limit=-1"], "safety.cost_limit must be a number >= 0"),
        (["algo=ppo_lagrangian", "algo.kp=fast"], "LagrangeConfig.kp must be a finite number >= 0"),
        (["algo=ppo_lagrangian", "task=ant"], "algo=ppo_lagrangian needs cost terms, and task ant has none"),
        (["safety.filters=[box]", "safety.intervention_penalty=-0.5"], "intervention_penalty must be >= 0"),
    ],
)
def test_bad_safety_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", *TINY, "train.max_iterations=1", f"run_dir={run}", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and needle in err[0], err
    assert not (run / "config.yaml").exists()
