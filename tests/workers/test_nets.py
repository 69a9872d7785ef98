import pytest
import torch
from torch import nn

from workers import nets


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("shape", [(4, 3, 14, 14), (2, 5, 7, 7), (1, 1, 28, 28)])
def test_the_networks_max_pooling_gives_torchs_values_and_gradients(kernel, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0] = float("nan")  # a NaN stays a NaN, as in torch's pooling
    ours, torchs = nets.MaxPool2d(kernel), nn.MaxPool2d(kernel)
    with torch.no_grad():  # the fast path
        assert torch.equal(ours(x).nan_to_num(7.0), torchs(x).nan_to_num(7.0))
    assert ours(x).shape == torchs(x).shape
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()  # under autograd: torch's kernel
    ours(a).nan_to_num(7.0).sum().backward()
    torchs(b).nan_to_num(7.0).sum().backward()
    assert a.grad is not None and b.grad is not None and torch.equal(a.grad, b.grad)


def test_the_pinned_network_pools_with_it_and_computes_what_torchs_pooling_computes():
    net = nets.build(nets.pinned_spec()).eval()
    assert [type(m) for m in net if isinstance(m, nn.MaxPool2d)] == [nets.MaxPool2d, nets.MaxPool2d]
    reference = nn.Sequential(*[nn.MaxPool2d(m.kernel_size) if isinstance(m, nn.MaxPool2d) else m for m in net])
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
