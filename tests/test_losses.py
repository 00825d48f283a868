import torch

from mmsae.losses import auxk_loss, explained_variance, group_l21, reconstruction_loss


def test_reconstruction_loss_by_hand():
    u = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    uh = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # (1 + 4 + 1 + 1) / 2 samples
    assert reconstruction_loss(u, uh).item() == 3.5


def test_group_l21_value_by_hand():
    zx = torch.tensor([[3.0, 0.0, 1.0]])
    zy = torch.tensor([[4.0, 2.0, 0.0]])
    # groups: sqrt(9+16)=5, sqrt(0+4)=2, sqrt(1+0)=1
    assert group_l21(zx, zy).item() == 8.0
    # batch mean
    assert group_l21(torch.cat([zx, 0 * zx]), torch.cat([zy, 0 * zy])).item() == 4.0


def test_group_l21_gradient_by_hand():
    zx = torch.tensor([[3.0, 0.0, 0.0]], requires_grad=True)
    zy = torch.tensor([[4.0, 2.0, 0.0]], requires_grad=True)
    group_l21(zx, zy).backward()
    # d/dzx sqrt(zx^2+zy^2) = zx / norm; zero group -> subgradient 0 (no NaN)
    torch.testing.assert_close(zx.grad, torch.tensor([[0.6, 0.0, 0.0]]))
    torch.testing.assert_close(zy.grad, torch.tensor([[0.8, 1.0, 0.0]]))


def test_group_l21_prefers_shared_latents():
    # the same activation mass on one shared latent costs less than on two split latents
    shared = group_l21(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    split = group_l21(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert shared.item() < split.item()


def test_explained_variance_and_auxk():
    u = torch.randn(64, 5)
    assert explained_variance(u, u).item() == 1.0
    assert abs(explained_variance(u, u.mean(0, keepdim=True).expand_as(u)).item()) < 1e-6
    r = torch.randn(32, 5)
    assert auxk_loss(r, r).item() == 0.0
    assert auxk_loss(r, torch.zeros_like(r)).item() > 0.9
    assert auxk_loss(torch.zeros(4, 5), torch.ones(4, 5)).item() == 0.0  # nothing to fit
