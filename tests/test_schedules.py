"""pyro_vae.schedules: the learning-rate and KL-weight schedules in closed form, and the rate
each epoch of a configuration gets."""

import pytest

from pyro_vae.config import TrainConfig
from pyro_vae.schedules import beta_at, burda_learning_rate, learning_rate


def test_burda_schedule_closed_form():
    full = 3280
    assert burda_learning_rate(0, full) == pytest.approx(1e-3)
    for i, first_epoch in enumerate([0, 1, 4, 13, 40, 121, 364, 1093]):
        assert burda_learning_rate(first_epoch, full) == pytest.approx(1e-3 * 10 ** (-i / 7))
        if first_epoch:
            assert burda_learning_rate(first_epoch - 1, full) == pytest.approx(
                1e-3 * 10 ** (-(i - 1) / 7))
    assert burda_learning_rate(3279, full) == pytest.approx(1e-4)
    # a budget of 328 epochs shrinks every pass tenfold
    # (the last pass starts at 1093 of 3280, i.e. after epoch 109.3 of 328)
    assert burda_learning_rate(110, 328) == pytest.approx(1e-3 * 10 ** (-7 / 7))
    assert burda_learning_rate(109, 328) == pytest.approx(1e-3 * 10 ** (-6 / 7))


def test_burda_even_schedule_gives_each_rate_an_equal_share():
    rates = [burda_learning_rate(e, 80, 2e-3, even=True) for e in range(80)]
    for i in range(8):
        assert rates[10 * i : 10 * i + 10] == [pytest.approx(2e-3 * 10 ** (-i / 7))] * 10
    # the same rates as the paper's schedule, in the same order
    assert sorted(set(rates), reverse=True) == pytest.approx(
        sorted({burda_learning_rate(e, 3280, 2e-3) for e in range(3280)}, reverse=True))


@pytest.mark.parametrize("schedule, even", [("burda", False), ("burda-even", True)])
def test_learning_rate_of_epoch_e_counted_from_1_is_the_schedules_at_e_minus_1(schedule, even):
    config = TrainConfig(epochs=24, lr=3e-3, lr_schedule=schedule)
    assert [learning_rate(config, e) for e in range(1, 25)] == [
        burda_learning_rate(e, 24, 3e-3, even=even) for e in range(24)]
    assert learning_rate(config, 1) == 3e-3
    assert learning_rate(config, 24) == pytest.approx(3e-4)


def test_a_constant_learning_rate_is_the_configurations_in_every_epoch():
    config = TrainConfig(epochs=5, lr=2e-4)
    assert [learning_rate(config, e) for e in range(1, 6)] == [2e-4] * 5


def test_beta_warmup_rises_linearly_to_beta():
    config = TrainConfig(beta=0.5, beta_warmup_epochs=4)
    assert [beta_at(config, e) for e in range(1, 7)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert beta_at(TrainConfig(beta=2.0), 1) == 2.0
