import numpy as np

from keycld_gym.diagnostics import state_bias


def test_state_bias_takes_the_smooth_part_of_the_error_and_leaves_the_noise():
    """A keypoint that leans with the pole angle is bias; frame-to-frame scatter is noise."""
    rng = np.random.default_rng(0)
    n = 2000
    angle, cart = rng.uniform(-np.pi, np.pi, n), rng.uniform(-1, 1, n)
    points = np.stack([np.stack([cart, np.zeros(n)], -1),  # on a rail: one coordinate constant
                       np.stack([cart + np.sin(angle), np.cos(angle)], -1)], 1)  # (N, 2, 2)
    lean = 0.4 * np.stack([np.sin(angle) * np.cos(angle), np.sin(angle) ** 2], -1)  # smooth in the points
    noise = rng.normal(0, 0.1, (n, 2, 2))
    errors = np.stack([lean, -lean], 1) + noise
    bias = state_bias(errors, points)
    assert np.sqrt(((errors - bias - noise) ** 2).mean()) < 0.01
    assert abs(np.sqrt(((errors - bias) ** 2).mean()) - 0.1) < 0.01
