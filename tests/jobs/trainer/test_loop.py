"""The epoch plan of a time budget: it stops a run before the deadline, never before the epoch just done, and
gives the time after the last whole epoch to a partial one."""

from __future__ import annotations

import math

import torch

from jobs.trainer import loop
from jobs.trainer.loop import EpochPlan
from models.checkpoint import build_model


def test_without_a_deadline_the_plan_is_the_epochs():
    plan = EpochPlan(10, None, torch.device("cpu"))
    for epoch in range(3):
        plan.after_epoch(epoch, 2.0)
    assert plan.epochs == 10 and plan.eta_s(2) == 14.0


def test_a_deadline_plans_the_epochs_that_fit(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(loop.time, "time", lambda: now[0])
    plan = EpochPlan(100, 1000.0 + 35.0, torch.device("cpu"))
    now[0] += 10.0  # first epoch: 10 s, 25 s left -> 2 more fit
    plan.after_epoch(0, 10.0)
    assert plan.epochs == 3 and plan.eta_s(0) == 20.0
    now[0] += 14.0  # slower epoch: median 12 s, 11 s left -> nothing more fits
    plan.after_epoch(1, 14.0)
    assert plan.epochs == 2 and plan.eta_s(1) == 0.0


def test_the_plan_never_ends_before_the_epoch_done_nor_after_the_cap(monkeypatch):
    monkeypatch.setattr(loop.time, "time", lambda: 5000.0)
    late = EpochPlan(100, 4000.0, torch.device("cpu"))  # deadline already passed
    late.after_epoch(4, 1.0)
    assert late.epochs == 5
    early = EpochPlan(6, 10**9, torch.device("cpu"))  # plenty of time: the cap holds
    early.after_epoch(0, 1.0)
    assert early.epochs == 6
    assert math.isnan(EpochPlan(3, None, torch.device("cpu")).epoch_s)


def test_the_time_after_the_last_whole_epoch_goes_to_a_partial_one(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(loop.time, "time", lambda: now[0])
    plan = EpochPlan(100, 1000.0 + 35.0, torch.device("cpu"), steps_per_epoch=40)
    now[0] += 10.0  # first epoch 10 s; 25 s left: two whole epochs and half of one
    plan.after_epoch(0, 10.0)
    assert (plan.epochs, plan.last_steps) == (4, 20)
    assert [plan.steps_in(e) for e in range(4)] == [None, None, None, 20]
    assert plan.eta_s(0) == 25.0  # 2.5 epochs of 10 s
    now[0] += 14.5  # median 12.25 s, 10.5 s left: no whole epoch, 0.857 of one -> 34 steps
    plan.after_epoch(1, 14.5)
    assert (plan.epochs, plan.steps_in(2)) == (3, 34)
    now[0] += 10.0  # the partial epoch took 10 s: nothing is left, the plan ends with it
    plan.after_epoch(2, 10.0)
    assert (plan.epochs, plan.last_steps, plan.eta_s(2)) == (3, 0, 0.0)


def test_a_partial_epoch_needs_a_tenth_of_one_and_room_under_the_cap(monkeypatch):
    monkeypatch.setattr(loop.time, "time", lambda: 1000.0)
    sliver = EpochPlan(100, 1000.0 + 20.5, torch.device("cpu"), steps_per_epoch=40)
    sliver.after_epoch(0, 10.0)  # 2.05 epochs left: the 0.05 is not worth a checkpoint
    assert (sliver.epochs, sliver.last_steps) == (3, 0)
    capped = EpochPlan(3, 1000.0 + 25.0, torch.device("cpu"), steps_per_epoch=40)
    capped.after_epoch(0, 10.0)  # 2.5 epochs left, but the cap is 3 whole epochs
    assert (capped.epochs, capped.last_steps) == (3, 0)
    unknown = EpochPlan(100, 1000.0 + 25.0, torch.device("cpu"))  # steps per epoch unknown: whole only
    unknown.after_epoch(0, 10.0)
    assert (unknown.epochs, unknown.last_steps) == (3, 0)


def test_a_step_draws_the_cvae_epsilon_and_the_cgan_input():
    # a mixture prior samples with two extra dimensions, but its reparameterisation epsilon is the latent's
    cvae = build_model("cvae", {"arch": "conv", "image_size": 28, "latent_dim": 12, "prior": "class_mixture"})
    assert (cvae.noise_dim, loop.step_noise_dim(cvae)) == (14, 12)
    gaussian = build_model("cvae", {"latent_dim": 12, "prior": "class_gaussian"})
    assert loop.step_noise_dim(gaussian) == gaussian.noise_dim == 12
    cgan = build_model("cgan", {"z_dim": 24})
    assert loop.step_noise_dim(cgan) == 24
