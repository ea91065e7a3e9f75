"""DPO: loss and metrics vs hand computation, response-only log-probs, frozen reference."""
import math

import pytest
import torch

from crrelu_lightning.models.dpo import DPO, dpo_loss, sequence_logprobs
from crrelu_lightning.models.gpt import GPTConfig

TINY = dict(gpt=GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8, activation="crrelu",
                          activation_kwargs={"impl": "reference"}))


def test_dpo_loss_and_metrics_match_hand_computation():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # chosen rewards 0.5*[0.5, 0] = [0.25, 0]; rejected 0.5*[-1, 1] = [-0.5, 0.5]; margins [0.75, -0.5]
    want_loss = (math.log1p(math.exp(-0.75)) + math.log1p(math.exp(0.5))) / 2
    assert out["loss"].item() == pytest.approx(want_loss, rel=1e-6)
    assert out["reward_accuracy"].item() == pytest.approx(0.5)
    assert out["reward_margin"].item() == pytest.approx(0.125)
    assert out["rewards_chosen"].item() == pytest.approx(0.125)
    assert out["rewards_rejected"].item() == pytest.approx(0.0)


def test_sequence_logprobs_count_only_response_tokens():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    ids = torch.randint(5, (2, 7), generator=g)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    got = sequence_logprobs(logits, ids, mask)
    want = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        for t in range(1, 7):
            if mask[b, t]:  # token t is predicted from position t-1
                want[b] += logits[b, t - 1].log_softmax(-1)[ids[b, t]]
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    # logits at positions that predict prompt or padding tokens do not matter
    changed = logits.clone()
    changed[0, [0, 1, 5, 6]] += 10 * torch.randn(4, 5, dtype=torch.float64, generator=g)
    torch.testing.assert_close(sequence_logprobs(changed, ids, mask), got)
    changed[0, 3] += 5.0 * torch.arange(5, dtype=torch.float64)
    assert not torch.allclose(sequence_logprobs(changed, ids, mask)[0], got[0])


def _batch(seed=0, B=3, T=12, V=11):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for k in ("chosen", "rejected"):
        batch[f"{k}_input_ids"] = torch.randint(V, (B, T), generator=g)
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, 5:] = True
        batch[f"{k}_loss_mask"] = mask
    return batch


def test_policy_equal_to_reference_gives_ln2():
    model = DPO(beta=0.7, **TINY)
    loss = model._step(_batch(), "val")
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_reference_is_frozen_hidden_and_never_saved(tmp_path):
    model = DPO(beta=0.5, optimizer="adamw", lr=1e-2, warmup_steps=1, **TINY)
    assert all(not n.startswith("_reference") for n, _ in model.named_parameters())
    assert all(k.startswith("policy.") for k in model.state_dict())
    assert model.reference not in list(model.modules())
    ref_before = {k: v.clone() for k, v in model.reference.state_dict().items()}
    opt = torch.optim.AdamW(model.policy.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        loss = model._step(_batch(), "val")
        loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in model.reference.parameters())
    for k, v in model.reference.state_dict().items():
        assert torch.equal(v, ref_before[k]), k
    assert not torch.equal(model.policy.transformer.wte.weight, ref_before["transformer.wte.weight"])
    assert model._step(_batch(), "val").item() < math.log(2) - 1e-4  # the policy moved, the reference did not
    # ε of the reference stays at its initial value while the policy's is trained
    assert model.reference.transformer.h[0].mlp.act.eps.item() == pytest.approx(0.01)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="beta"):
        DPO(beta=0.0, **TINY)
    with pytest.raises(ValueError, match="sgd"):
        DPO(optimizer="sgd", **TINY)
