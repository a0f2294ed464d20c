"""Target selection and the ADMM state (pure PyTorch, no Lightning)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from nxm_lightning.sparsity.admm import ADMMState, check_admm_args
from nxm_lightning.sparsity.nxm import NxMPattern, is_nxm, nxm_project
from nxm_lightning.sparsity.saliency import FisherEstimate
from nxm_lightning.sparsity.targets import describe_targets, select_targets


def test_default_targets_are_the_encoder_linears(tiny_bert: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    names = [t.name for t in select_targets(model)]
    assert len(names) == 2 * 6
    assert all(".encoder.layer." in n for n in names)
    assert not any("classifier" in n or "pooler" in n for n in names)
    assert {n.split(".", 4)[-1].split(".", 1)[-1] for n in names} >= {"self.query", "self.key", "self.value"}
    table = describe_targets(model, select_targets(model))
    assert "12 layers" in table and "% of all" in table


def test_teacher_and_heads_are_never_targeted(tiny_bert: Path) -> None:
    wrapper = nn.Module()
    wrapper.student = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    wrapper.teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    names = [t.name for t in select_targets(wrapper, include=[r"."])]
    assert names and all(n.startswith("student.") for n in names)
    assert not any("classifier" in n or "pooler" in n for n in names)


def test_pattern_overrides_and_excludes(tiny_bert: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    targets = select_targets(model, pattern="2:4", exclude=["value"], pattern_overrides={"intermediate|output.dense": "1:4"})
    patterns = {t.name: t.pattern for t in targets}
    assert not any("value" in n for n in patterns)
    assert patterns["bert.encoder.layer.0.intermediate.dense"] == NxMPattern(1, 4)
    assert patterns["bert.encoder.layer.0.attention.self.query"] == NxMPattern(2, 4)


def test_layer_width_not_multiple_of_m_warns_or_errors() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(6, 8))
    with pytest.warns(UserWarning, match="in_features=6"):
        assert [t.name for t in select_targets(model, include=[r"\d"])] == ["0"]
    with pytest.raises(ValueError, match="in_features=6"):
        select_targets(model, include=[r"\d"], strict=True)


def test_a_pattern_whose_m_divides_no_width_says_so() -> None:
    """Not "no Linear matched include": they matched, and each is too narrow for M (it used to say the former)."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"M does not divide.*0 \(in_features=8, 2:16\)"):
        select_targets(model, "2:16", include=[r"\d"])


def test_no_match_lists_candidates() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"Candidate nn.Linear names: 0"):
        select_targets(model, include=["nothing_like_this"])
    with pytest.raises(ValueError, match="Invalid regular expression"):
        select_targets(model, include=["("])


def _toy_targets() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    return model, select_targets(model, "2:4", include=[r"\d"])


def test_z_step_is_projection_and_u_integrates_the_violation() -> None:
    model, targets = _toy_targets()
    admm = ADMMState(targets, rho=0.1)
    admm.initialize()
    assert all(torch.equal(admm.z[t.name], nxm_project(t.module.weight.detach(), 2, 4)) for t in targets)
    with torch.no_grad():
        for t in targets:
            t.module.weight.add_(0.05)
    w0 = {t.name: t.module.weight.detach().clone() for t in targets}
    u0 = {k: v.clone() for k, v in admm.u.items()}
    stats = admm.z_step()
    for t in targets:
        expected_z = nxm_project(w0[t.name] + u0[t.name], 2, 4)
        assert torch.equal(admm.z[t.name], expected_z)
        assert torch.allclose(admm.u[t.name], u0[t.name] + w0[t.name] - expected_z)
        assert is_nxm(admm.z[t.name], 2, 4)
    assert 0 < stats.primal_residual < 1 and 0 <= stats.mask_flip_rate <= 1 and stats.dual_residual > 0


def test_penalty_gradient_equals_autograd_of_penalty_value() -> None:
    model, targets = _toy_targets()
    admm = ADMMState(targets, rho=0.3)
    admm.initialize()
    admm.u = {k: torch.randn_like(v) for k, v in admm.u.items()}
    admm.penalty_value().backward()
    autograd = [t.module.weight.grad.clone() for t in targets]
    for t in targets:
        t.module.weight.grad.zero_()
    admm.add_penalty_grad()
    for t, expected in zip(targets, autograd):
        assert torch.allclose(t.module.weight.grad, expected, atol=1e-6)


def test_decoupled_pull_drives_weights_to_nxm() -> None:
    model, targets = _toy_targets()
    admm = ADMMState(targets, rho=0.2, penalty="decoupled")
    admm.initialize()
    residuals = []
    for step in range(200):
        admm.apply_decoupled_pull()
        if step % 10 == 9:
            residuals.append(admm.z_step().primal_residual)
    assert residuals[-1] < 1e-6 < residuals[0]


def test_rho_schedule_rescales_u_and_caps() -> None:
    model, targets = _toy_targets()
    admm = ADMMState(targets, rho=0.01, rho_factor=2.0, rho_max=0.03)
    admm.initialize()
    with torch.no_grad():
        for t in targets:
            t.module.weight.add_(0.05)  # so that U becomes non-zero
    admm.z_step()
    assert admm.rho == pytest.approx(0.02)
    # The scaled dual U = y / rho: when rho doubles, U halves, so that the unscaled dual rho * U is unchanged.
    unscaled = {k: 0.02 * v.clone() for k, v in admm.u.items()}
    assert any(v.abs().sum() > 0 for v in unscaled.values())
    w = {t.name: t.module.weight.detach() for t in targets}
    admm.z_step()
    assert admm.rho == pytest.approx(0.03)
    for t in targets:
        expected_u = (unscaled[t.name] / 0.02 + w[t.name] - admm.z[t.name]) * (0.02 / 0.03)
        assert torch.allclose(admm.u[t.name], expected_u, atol=1e-7)
        assert torch.allclose(admm.z[t.name], nxm_project(w[t.name] + unscaled[t.name] / 0.02, 2, 4), atol=1e-7)


def test_w_step_progress_is_the_share_of_the_pull_completed() -> None:
    model, targets = _toy_targets()
    admm = ADMMState(targets, rho=0.1, penalty="decoupled")
    admm.initialize()
    with torch.no_grad():
        for t in targets:
            t.module.weight.add_(0.05)
    assert admm.z_step().w_step_progress < 0  # W moved away from Z - U since initialize()
    for _ in range(5):
        admm.apply_decoupled_pull()  # each pull removes 10% of W - Z + U, and nothing else moves W
    assert admm.z_step().w_step_progress == pytest.approx(1 - 0.9**5, rel=1e-5)


def test_fisher_saliency_keeps_the_weights_the_loss_needs() -> None:
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 0.4, 0.1, 0.05]]))
    targets = select_targets(nn.Sequential(layer), "2:4", include=[r"0"])
    magnitude = ADMMState(targets, rho=0.1, saliency="magnitude")
    fisher = ADMMState(targets, rho=0.1, saliency="fisher")
    for admm in (magnitude, fisher):
        admm.initialize()
    layer.weight.grad = torch.tensor([[0.0, 0.01, 10.0, 10.0]])  # the two small weights carry the loss
    for _ in range(10):
        fisher.accumulate_fisher()
    assert magnitude.z_step().mask_flip_rate == 0  # magnitude keeps 0.5 and 0.4
    assert fisher.z_step().mask_flip_rate == 1.0  # fisher swaps both: F w^2 is 0, 1.6e-4*.., 1e2*0.01, 1e2*0.0025
    assert fisher.mask["0"].tolist() == [[False, False, True, True]]
    assert fisher.cut_masks()["0"].tolist() == [[False, False, True, True]]
    assert magnitude.cut_masks()["0"].tolist() == [[True, True, False, False]]


def test_fisher_state_roundtrip_and_refusal() -> None:
    model, targets = _toy_targets()
    fisher = ADMMState(targets, rho=0.1, saliency="fisher")
    fisher.initialize()
    for t in targets:
        t.module.weight.grad = torch.ones_like(t.module.weight)
    fisher.accumulate_fisher()
    restored = ADMMState(targets, rho=0.1, saliency="fisher")
    restored.load_state_dict(fisher.state_dict())
    assert all(torch.equal(restored.fisher[k], fisher.fisher[k]) for k in fisher.fisher)
    magnitude = ADMMState(targets, rho=0.1)
    magnitude.initialize()
    with pytest.raises(ValueError, match="no Fisher estimate"):
        ADMMState(targets, rho=0.1, saliency="fisher").load_state_dict(magnitude.state_dict())


def test_bad_rho_values() -> None:
    with pytest.raises(ValueError, match="rho"):
        ADMMState([], rho=0.0)
    with pytest.raises(ValueError, match="decoupled"):
        ADMMState([], rho=1.5, penalty="decoupled")
    with pytest.raises(ValueError, match="rho_factor"):
        ADMMState([], rho=0.1, rho_factor=0.5)
    # NaN compares False with every bound: it used to pass and diverge in training.
    with pytest.raises(ValueError, match="rho_factor=nan must be a finite number >= 1"):
        ADMMState([], rho=0.1, rho_factor=math.nan)
    for rho_max in (math.nan, math.inf, 0.0):
        with pytest.raises(ValueError, match=f"rho_max={rho_max} must be a positive finite number"):
            ADMMState([], rho=0.01, rho_factor=1.5, rho_max=rho_max)
    with pytest.raises(ValueError, match="penalty"):
        ADMMState([], rho=0.1, penalty="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"saliency='size' is not one of \('magnitude', 'fisher'\)"):
        ADMMState([], rho=0.1, saliency="size")  # type: ignore[arg-type]


def test_state_roundtrip_and_mismatch() -> None:
    model, targets = _toy_targets()
    admm = ADMMState(targets, rho=0.1)
    admm.initialize()
    admm.z_step()
    state = admm.state_dict()
    restored = ADMMState(targets, rho=0.5)
    restored.load_state_dict(state)
    assert restored.rho == admm.rho and restored.zstep_count == 1
    assert all(torch.equal(restored.u[k], admm.u[k]) for k in admm.u)
    other_model = nn.Sequential(nn.Linear(16, 12), nn.Linear(12, 4))
    other = ADMMState(select_targets(other_model, "2:4", include=[r"\d"]), rho=0.1)
    with pytest.raises(ValueError, match=r"another model or N:M pattern.*shape or pattern differs: 0"):
        other.load_state_dict(state)


def test_one_fisher_estimate_sums_or_keeps_a_running_mean() -> None:
    layer = nn.Linear(4, 2, bias=False)
    targets = select_targets(nn.Sequential(layer), "2:4", include=[r"0"])
    summed, averaged = FisherEstimate(targets), FisherEstimate(targets, decay=0.5)
    for grad in (1.0, 3.0):
        layer.weight.grad = torch.full((2, 4), grad)
        assert summed.update() and averaged.update()
    assert torch.equal(summed.values["0"], torch.full((2, 4), 10.0))  # 1 + 9
    assert torch.equal(averaged.values["0"], torch.full((2, 4), 4.75))  # 0.5 * (0.5 * 1) + 0.5 * 9
    layer.weight.grad = None
    assert not summed.update() and summed.steps == 2  # no gradient: nothing to add, not counted
    with pytest.raises(ValueError, match=r"decay=1.0 must be in \[0, 1\)"):
        FisherEstimate(targets, decay=1.0)


def test_a_choice_is_refused_in_one_form_listing_what_is_valid() -> None:
    with pytest.raises(
        ValueError, match=r"penalty='sideways' is not one of \('gradient', 'decoupled'\)\. Valid values: gradient, decoupled\."
    ):
        check_admm_args(0.1, 1.0, None, "sideways")  # type: ignore[arg-type]
