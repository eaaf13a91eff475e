"""The warning a preference job gives when it starts to collapse, on the reward curves of two real runs.

Both curves are rewards/chosen as TRL logged them, step by step (beta 0.1), for DPO on the Fair winds pairs
on top of the Ahoy adapter on the default model (README, "Show it works"): at lr 1e-3 the adapter ended up
answering everything with "Fair winds!" (factual questions 63 % -> 0 %); at lr 2e-4 it did not.
"""
from __future__ import annotations

from training.config import TrainConfig
from training.preference import DriftWatch, drift_warning

COLLAPSED_LR_1E3 = [0.0, 0.0, 0.72, 1.03, 0.6, 0.32, 0.98, 0.27, -0.03, -0.61, -0.96, 0.25, -1.18, -1.5, -0.84, -3.03,
                    -4.03, -2.06, -3.3, -3.14, -2.14, -4.58, -2.81, -1.58]
HEALTHY_LR_2E4 = [0.0, 0.0, 0.15, 0.42, 0.45, 0.63, 0.89, 0.87, 1.08, 0.72, 1.3, 1.45, 1.23, 1.15, 1.49, 1.05, 0.68,
                  1.13, 1.72, 1.2, 1.34, 1.25, 1.54, 1.02, 1.26, 1.25, 1.21, 1.17, 1.31, 0.63]


def logged(curve: list[float], key: str = "rewards/chosen") -> list[dict]:
    return [{"step": step, key: value, "rewards/margins": 1.0} for step, value in enumerate(curve, start=1)]


def first_warning(curve: list[float], objective: str = "dpo") -> int | None:
    metrics = logged(curve)
    return next((n for n in range(1, len(metrics) + 1) if drift_warning(metrics[:n], objective, 0.1)), None)


def test_the_collapsing_run_is_flagged_halfway_and_the_healthy_one_never():
    assert first_warning(COLLAPSED_LR_1E3) == 11, "step 11 of 24, while reward accuracy still read 1.0"
    assert first_warning(HEALTHY_LR_2E4) is None
    text = drift_warning(logged(COLLAPSED_LR_1E3), "dpo", 0.1)
    assert text.startswith("the chosen answers are 29.9 nats less likely than under the reference (steps 22-24)")
    assert "lower the learning rate" in text


def test_orpo_rewards_are_log_likelihoods_and_are_not_read_as_a_collapse():
    assert first_warning([-3.0] * 10, "orpo") is None
    assert first_warning([-3.0] * 10, "kto") == 3


def test_the_job_log_says_it_once(capsys):
    watch = DriftWatch(TrainConfig(name="x", dataset="pairs.json", objective="dpo", beta=0.1))

    class State:
        global_step = 0

    for step, value in enumerate(COLLAPSED_LR_1E3, start=1):
        State.global_step = step
        watch.on_log(None, State, None, logs={"loss": 0.1, "rewards/chosen": value})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "(steps 9-11)" in lines[0] and watch.warning in lines[0]
