"""AdamW parameter groups and the warm-up + cosine schedule (crrelu_lightning.models.optim)."""
import math

import pytest
import torch
from torch import nn

from crrelu_lightning.activations import CRReLU
from crrelu_lightning.models.optim import WarmupCosineLR, param_groups, warmup_cosine_lambda, warmup_cosine_scheduler


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.act = CRReLU()
        self.fc2 = nn.Linear(8, 3, bias=False)
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)


def test_param_groups_exclude_eps_biases_and_norm_weights():
    m = Tiny()
    groups = param_groups(m, 0.05)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert by_id[id(m.fc1.weight)] == 0.05 and by_id[id(m.fc2.weight)] == 0.05
    for p in (m.fc1.bias, m.norm.weight, m.norm.bias, m.act.eps):
        assert by_id[id(p)] == 0.0
    assert id(m.frozen) not in by_id  # requires_grad=False stays out of the optimizer
    assert len(by_id) == sum(1 for p in m.parameters() if p.requires_grad)


def test_param_groups_rejects_negative_decay():
    with pytest.raises(ValueError, match="-1"):
        param_groups(Tiny(), -1)


def _closed_form(step, lr, w, t, min_lr):
    # Independent restatement: linear warm-up to lr over w steps, then half-cosine from lr to min_lr.
    if step < w:
        return lr * (step + 1) / w
    frac = min(1.0, (step - w) / (t - w))
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * frac)) / 2


@pytest.mark.parametrize("w,t", [(5, 50), (0, 20), (10, 11)])
def test_scheduler_lr_matches_closed_form_per_optimizer_step(w, t):
    lr, min_lr = 1e-3, 1e-5
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=lr)
    sched = warmup_cosine_scheduler(opt, w, t, min_lr / lr)
    seen = []
    for step in range(t + 3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [_closed_form(s, lr, w, t, min_lr) for s in range(t + 3)]
    assert seen == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert seen[-1] == pytest.approx(min_lr)  # holds at min lr after total_steps


def test_schedule_landmarks():
    f = warmup_cosine_lambda(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # halfway through the cosine: (1 + r) / 2
    assert f(110) == pytest.approx(0.1)


@pytest.mark.parametrize("args,bad", [((-1, 10, 0.0), "-1"), ((0, 0, 0.0), "0"), ((1, 10, 1.5), "1.5")])
def test_schedule_rejects_bad_arguments(args, bad):
    with pytest.raises(ValueError, match=bad):
        warmup_cosine_lambda(*args)


def test_param_groups_without_decay_leave_it_to_the_optimizer():
    m = Tiny()
    opt = torch.optim.SGD(param_groups(m), lr=0.1, weight_decay=0.01)
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(m.fc1.weight)] == 0.01 and by_id[id(m.act.eps)] == 0.0 and by_id[id(m.norm.weight)] == 0.0


@pytest.mark.parametrize("w,t", [(5, 50), (0, 20), (10, 11)])
def test_warmup_cosine_lr_class_matches_closed_form(w, t):
    lr, min_lr = 1e-3, 1e-5
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=lr)
    sched = WarmupCosineLR(opt, warmup_steps=w, min_lr=min_lr)  # length unknown until the run says
    sched.fit_to_run(total_steps=t, steps_per_epoch=t)
    seen = []
    for _ in range(t + 3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([_closed_form(s, lr, w, t, min_lr) for s in range(t + 3)], rel=1e-9, abs=1e-15)


def test_warmup_epochs_convert_with_steps_per_epoch_and_state_survives_resume():
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupCosineLR(opt, warmup_epochs=0.5, min_lr_ratio=0.1)
    sched.fit_to_run(total_steps=40, steps_per_epoch=10)  # 0.5 epochs -> 5 warm-up steps
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    again = WarmupCosineLR(opt2, warmup_epochs=0.5, min_lr_ratio=0.1)
    again.fit_to_run(total_steps=40, steps_per_epoch=10)
    again.load_state_dict(state)
    opt2.param_groups[0]["lr"] = again.get_lr()[0]
    assert opt2.param_groups[0]["lr"] == pytest.approx(_closed_form(7, 1.0, 5, 40, 0.1))


def test_warmup_cosine_lr_rejects_a_floor_above_the_peak():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match="min_lr=0.1"):
        WarmupCosineLR(opt, min_lr=0.1)
