import pytest
import torch
import torch.nn.functional as F

from mmsae.models.losses import (auxk_loss, explained_variance, group_l21, normalized_mse, reconstruction_loss,
                          total_variance)


def test_reconstruction_loss_by_hand():
    u = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    uh = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # (1 + 4 + 1 + 1) / 2 samples
    assert reconstruction_loss(u, uh).item() == 3.5


def _l21(x: dict, y: dict) -> torch.Tensor:
    """group_l21 of one pair given as {latent: value} per member (K-sparse form)."""
    t = lambda d: (torch.tensor([list(d.values())]), torch.tensor([list(d.keys())]))  # noqa: E731
    (vx, ix), (vy, iy) = t(x), t(y)
    return group_l21(vx, ix, vy, iy)


def test_group_l21_value_by_hand():
    # z_x = (3, 0, 1), z_y = (4, 2, 0); y's slots in another order than x's
    # groups: sqrt(9+16)=5, sqrt(0+4)=2, sqrt(1+0)=1
    assert _l21({0: 3.0, 2: 1.0}, {1: 2.0, 0: 4.0}).item() == 8.0
    # batch mean: a second pair with all-zero codes
    vx, ix = torch.tensor([[3.0, 1.0], [0.0, 0.0]]), torch.tensor([[0, 2], [0, 1]])
    vy, iy = torch.tensor([[2.0, 4.0], [0.0, 0.0]]), torch.tensor([[1, 0], [1, 0]])
    assert group_l21(vx, ix, vy, iy).item() == 4.0
    with pytest.raises(ValueError, match="shapes differ"):
        group_l21(vx, ix[:, :1], vy, iy)


def test_group_l21_gradient_by_hand():
    vx = torch.tensor([[3.0, 0.0]], requires_grad=True)  # latents 0, 2 (latent 2 holds 0)
    vy = torch.tensor([[2.0, 4.0]], requires_grad=True)  # latents 1, 0
    group_l21(vx, torch.tensor([[0, 2]]), vy, torch.tensor([[1, 0]])).backward()
    # d/dzx sqrt(zx^2+zy^2) = zx / norm; a zero group -> subgradient 0 (no NaN); |z| alone -> sign
    torch.testing.assert_close(vx.grad, torch.tensor([[0.6, 0.0]]))
    torch.testing.assert_close(vy.grad, torch.tensor([[1.0, 0.8]]))


def test_group_l21_prefers_shared_latents():
    # the same activation mass on one shared latent costs less than on two split latents
    shared = _l21({0: 1.0}, {0: 1.0})
    split = _l21({0: 1.0}, {1: 1.0})
    assert shared.item() < split.item()


def test_explained_variance():
    u = torch.randn(64, 5)
    assert explained_variance(u, u).item() == 1.0
    assert abs(explained_variance(u, u.mean(0, keepdim=True).expand_as(u)).item()) < 1e-6


def test_total_variance_by_hand():
    u = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1); squared deviations 2 and 2
    assert total_variance(u).item() == 2.0
    uh = torch.tensor([[0.5, 0.0], [2.0, 1.0]])
    # normalised MSE (1 - explained variance) = reconstruction loss / total variance
    assert (reconstruction_loss(u, uh) / total_variance(u)).item() == pytest.approx(normalized_mse(u, uh).item())


def test_auxk_loss_by_hand():
    u = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # TV(u) = 2
    e = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # mean (0.5, 0): TV(e) = (0.25 + 0.25) / 2 = 0.25
    e_hat = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # squared errors 0 and 1: mean 0.5
    # TV(u) * mean ||e - e_hat||^2 / TV(e) = 2 * 0.5 / 0.25
    assert auxk_loss(e, e_hat, u).item() == pytest.approx(4.0, rel=1e-6)
    assert auxk_loss(e, e, u).item() == 0.0
    # normalised by the residual's variance: scaling the residual (and its fit) changes nothing
    assert auxk_loss(10 * e, 10 * e_hat, u).item() == pytest.approx(4.0, rel=1e-6)
    # in the main loss' units: scaling the embeddings scales the term like ||u - u_hat||^2
    assert auxk_loss(10 * e, 10 * e_hat, 10 * u).item() == pytest.approx(400.0, rel=1e-6)
    # two modalities stacked [x; y]: each block normalised by its own variances, then summed
    u2 = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # TV = 1
    e2 = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # TV = 1
    e2_hat = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # mean squared error 1
    both = auxk_loss(torch.cat([e, e2]), torch.cat([e_hat, e2_hat]), torch.cat([u, u2]), n_blocks=2)
    assert both.item() == pytest.approx(4.0 + 1.0 * 1.0 / 1.0, rel=1e-6)
    # pooled into one block the variances mix and the value differs
    pooled = auxk_loss(torch.cat([e, e2]), torch.cat([e_hat, e2_hat]), torch.cat([u, u2]))
    assert abs(pooled.item() - both.item()) > 0.1
    # a block of one row has no variance: it contributes 0 (no division by zero)
    assert auxk_loss(e[:1], e_hat[:1] + 1.0, u[:1]).item() == 0.0


def test_auxk_loss_keeps_gao_relative_weight():
    """rec + alpha * auxk_loss == TV(u) * (NMSE(u, u_hat) + alpha * NMSE(e, e_hat)), with NMSE as in
    Gao et al.'s code: element-mean squared error over that of the target's batch mean."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(32, 6, generator=g) * 3 + 1
    u_hat = u + 0.5 * torch.randn(32, 6, generator=g)
    e = u - u_hat
    e_hat = 0.3 * e + 0.1 * torch.randn(32, 6, generator=g)
    alpha = 1 / 32

    def nmse(pred, target):
        return F.mse_loss(pred, target) / F.mse_loss(target.mean(0, keepdim=True).expand_as(target), target)

    ours = reconstruction_loss(u, u_hat) + alpha * auxk_loss(e, e_hat, u)
    gao = nmse(u_hat, u) + alpha * nmse(e_hat, e)
    assert ours.item() == pytest.approx((total_variance(u) * gao).item(), rel=1e-5)
    # relative to the main loss' squared error, the AuxK squared error weighs alpha * TV(u) / TV(e)
    w = alpha * auxk_loss(e, e_hat, u) / (e - e_hat).pow(2).sum(1).mean()
    assert w.item() == pytest.approx((alpha * total_variance(u) / total_variance(e)).item(), rel=1e-5)


def test_auxk_loss_gradient_only_through_the_fit():
    g = torch.Generator().manual_seed(1)
    u, e = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g).requires_grad_()
    e_hat = torch.randn(8, 3, generator=g, requires_grad=True)
    auxk_loss(e, e_hat, u).backward()
    assert e.grad is None  # the residual (and both variances) are constants
    want = total_variance(u) / total_variance(e.detach()) * 2 * (e_hat.detach() - e.detach()) / 8
    torch.testing.assert_close(e_hat.grad, want)


def test_auxk_loss_bad_input():
    e = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="n_blocks=2"):
        auxk_loss(e, e, e, n_blocks=2)
    with pytest.raises(ValueError, match="shapes differ"):
        auxk_loss(e, e, torch.zeros(3, 4))
