"""The supernet against a plain reference implementation (loops over sources, edges and ops)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autodeeplab import decode, ops, space
from autodeeplab.supernet import (
    EdgePointwise2d,
    EdgePointwise3d,
    ReachableConv2d,
    ReachableConv3d,
    SearchNetwork,
    _reachable_taps,
)

# --------------------------------------------------------------------------- reference
# Written for images and volumes alike: the functions are picked by the input's dimensionality.


def conv(x, weight, **kw):
    return (F.conv2d if x.dim() == 4 else F.conv3d)(x, weight, **kw)


def resize(x, size):
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def avg_pool_by_sums(x):
    """3x3x3 average pooling without the padding: window sums over window sizes (a second
    formula; PyTorch's 3D pooling refuses maps smaller than the kernel)."""
    ones = torch.ones(x.shape[1], 1, 3, 3, 3, dtype=x.dtype)
    sums = F.conv3d(x, ones, padding=1, groups=x.shape[1])
    counts = F.conv3d(torch.ones_like(x[:, :1]), ones[:1], padding=1)
    return sums / counts


def ref_beta_weights(betas):
    """Per-node softmax over valid moves, written out with explicit loops."""
    out = torch.zeros_like(betas)
    for layer in range(betas.shape[0]):
        for s in range(4):
            moves = [m for m in range(3) if 0 <= s + m - 1 <= 3]
            w = torch.softmax(betas[layer, s, moves], dim=0)
            for i, m in enumerate(moves):
                out[layer, s, m] = w[i]
    return out


def ref_bn(x, bn, start, stop, training, update=True):
    rm = bn.running_mean[start:stop]
    rv = bn.running_var[start:stop]
    if not update:
        rm, rv = rm.clone(), rv.clone()
    return F.batch_norm(x, rm, rv, training=training, momentum=bn.momentum, eps=bn.eps)


def ref_edge(group, x, k, g, w, training, edge_scale=None, update=True, aux=0.0):
    """Edge ``k`` of fused edge group ``group``, source ``g``, with op weights ``w`` (8,);
    ``aux``: weight of the DARTS- auxiliary identity branch (added to the mixed channels).

    Input 0 is the same tensor for every source, so its per-source statistics are identical and
    stored once: only the first source updates them (``update``).
    """
    C = group.channels
    c = C // group.partial
    ec = group.num_edges * c
    off = g * ec + k * c  # position of (source g, edge k) in the per-group BN statistics
    xp = x[:, :c]
    rows = slice(k * c, (k + 1) * c)
    total = torch.zeros_like(xp)
    for op, name in enumerate(space.PRIMITIVES):
        if name == "none":
            y = torch.zeros_like(xp)
        elif name == "max_pool_3x3":
            y = (F.max_pool2d if xp.dim() == 4 else F.max_pool3d)(xp, 3, 1, 1)
        elif name == "avg_pool_3x3":
            y = (
                F.avg_pool2d(xp, 3, 1, 1, count_include_pad=False)
                if xp.dim() == 4
                else avg_pool_by_sums(xp)
            )
        elif name == "skip_connect":
            y = xp
        elif name.startswith("sep"):
            dw1, pw1, bn1, dw2, pw2, bn2 = group.sep[name]
            ks = dw1.kernel_size[0]
            y = conv(F.relu(xp), dw1.weight[rows], padding=ks // 2, groups=c)
            y = conv(y, pw1.weight[rows])
            y = ref_bn(y, bn1, off, off + c, training, update)
            y = conv(F.relu(y), dw2.weight[rows], padding=ks // 2, groups=c)
            y = conv(y, pw2.weight[rows])
            y = ref_bn(y, bn2, off, off + c, training, update)
        else:
            atr, bn = group.atr[name]
            ks = atr.kernel_size[0]
            y = conv(F.relu(xp), atr.weight[rows], padding=2 * (ks // 2), dilation=2)
            y = ref_bn(y, bn, off, off + c, training, update)
        total = total + w[op] * y
    total = total + aux * xp
    if group.partial > 1:
        total = torch.cat((total, x[:, c:]), dim=1)
        n, _, *sp = total.shape
        total = (
            total.view(n, group.partial, C // group.partial, *sp).transpose(1, 2).reshape(n, C, *sp)
        )
    if edge_scale is not None:
        total = total * edge_scale
    return total


def ref_cell(cell, s0, s1, g, alpha_w, edge_w, training, aux=0.0):
    states = [s0, s1]
    for b in range(cell.blocks):
        acc = 0
        for j in range(b + 2):
            e = space.edge_index(b, j)
            k = space.edges_from_input(j, cell.blocks).index(e)
            acc = acc + ref_edge(
                cell.edges[j],
                states[j],
                k,
                0 if j == 0 else g,
                alpha_w[e],
                training,
                None if edge_w is None else edge_w[e],
                update=j > 0 or g == 0,
                aux=aux,
            )
        states.append(acc)
    return torch.cat(states[2:], dim=1)


def ref_edge_weights(model):
    if model.edge_logits is None:
        return None
    out = []
    for b in range(model.blocks):
        start = space.block_edge_offset(b)
        out.append(torch.softmax(model.edge_logits[start : start + b + 2], 0))
    return torch.cat(out)


def ref_forward(model, x, aux=0.0):
    training = model.training
    alpha_w = torch.softmax(model.alphas, dim=-1)
    beta_w = ref_beta_weights(model.betas)
    edge_w = ref_edge_weights(model)
    half, quarter = model.stem(x)
    sizes = [quarter.shape[2:]]
    for _ in range(3):
        sizes.append(tuple((d + 1) // 2 for d in sizes[-1]))
    pprev, prev = {-1: half}, {0: quarter}
    for layer in range(model.layers):
        cur = {}
        for level in range(min(layer + 2, 4)):
            node = model.nodes[f"{layer}_{level}"]
            srcs = [0] if layer == 0 else [s for s in (level - 1, level, level + 1) if s in prev]
            if layer == 0:
                pp = pprev[-1]
            elif layer == 1:
                pp = pprev[0]
            else:
                pp = pprev[level] if level in pprev else pprev[max(pprev)]
            if tuple(pp.shape[2:]) != tuple(sizes[level]):
                pp = resize(pp, sizes[level])
            s0 = node.pre_prev_prev(pp)
            out = 0
            for g, src in enumerate(srcs):
                h = prev[src]
                if src > level:
                    h = resize(h, sizes[level])
                s1 = node.pre_prev[g](h)
                out = out + beta_w[layer, src, level - src + 1] * ref_cell(
                    node.cell, s0, s1, g, alpha_w, edge_w, training, aux
                )
            cur[level] = out
        pprev, prev = prev, cur
    logits = 0
    for level, head in enumerate(model.heads):
        logits = logits + resize(head(prev[level]), x.shape[2:])
    return logits


# --------------------------------------------------------------------------- tests


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(num_classes=3, layers=4, blocks=3, filter_multiplier=4, stem_channels=(8, 8, 16))
    cfg.update(kw)
    model = SearchNetwork(**cfg).double()
    with torch.no_grad():  # larger arch logits than the 1e-3 init make mixing errors visible
        for p in model.arch_parameters():
            p.normal_()
    return model


def _assert_step_matches(out, expected, probe, model, ref):
    """``out`` (of ``model``) equals ``expected`` (the plain reference ``ref`` on the same
    input); after a backward pass of both against ``probe``, every gradient and every running
    statistic of ``model`` equals ``ref``'s."""
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-10)
    (out * probe).sum().backward()
    (expected * probe).sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-10, msg=name)
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-8, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"checkpoint_cells": True},
        {"partial_channels": 2},
        {"partial_channels": 2, "checkpoint_cells": True},
        {"selective_checkpoint": True},
        {"partial_channels": 2, "selective_checkpoint": True},
    ],
    ids=["exact", "checkpoint", "pc", "pc+checkpoint", "selective", "pc+selective"],
)
def test_matches_plain_reference(options):
    model = _tiny(**options)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 37, 45, dtype=torch.float64)
    probe = torch.randn(2, 3, 37, 45, dtype=torch.float64)

    # training mode: outputs, gradients of every parameter, running statistics updated
    # exactly once per forward, per source
    _assert_step_matches(model(x), ref_forward(ref, x), probe, model, ref)

    # eval mode uses the per-source running statistics
    model.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_forward(ref, x), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "options",
    [{}, {"partial_channels": 2, "checkpoint_cells": True}],
    ids=["exact", "pc+checkpoint"],
)
def test_aux_skip_matches_plain_reference(options):
    """DARTS- auxiliary skip: the supernet with ``aux_skip=c`` against the reference that adds
    ``c * x`` to every edge by hand; ``aux_skip=0`` is bit-identical to the plain forward."""
    model = _tiny(**options)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 37, 45, dtype=torch.float64)
    out = model(x, aux_skip=0.7)
    expected = ref_forward(ref, x, aux=0.7)
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-10)
    out.sum().backward()
    expected.sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-10, msg=name)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, aux_skip=0.0), model(x))
        assert not torch.allclose(model(x, aux_skip=0.7), model(x))


@pytest.mark.parametrize("partial", [1, 2])
def test_aux_skip_adds_c_times_the_input_to_every_edge(partial):
    """At ``aux_skip = c`` every edge output differs from the plain one by exactly ``c * x``
    (on the channels that go through the operations; the bypassed ones are the input already)."""
    model = _tiny(partial_channels=partial).eval()
    cell = model.nodes["2_1"].cell
    group = cell.edges[1]  # the edges leaving H^{l-1}
    x = torch.randn(2 * cell.sources, group.channels, 9, 11, dtype=torch.float64)
    weights = torch.softmax(torch.randn(group.num_edges, 8, dtype=torch.float64), dim=-1)
    with torch.no_grad():
        plain = group(x, weights)  # (M, E, C, H, W)
        assert torch.equal(group(x, weights, aux_skip=0.0), plain)
        for c in (0.25, 1.0):
            diff = group(x, weights, aux_skip=c) - plain
            expected = torch.zeros_like(plain)
            mixed = group.channels // partial
            for e in range(group.num_edges):
                shifted = torch.cat((c * x[:, :mixed], torch.zeros_like(x[:, mixed:])), dim=1)
                if partial > 1:  # the channel shuffle of PC-DARTS, written out
                    ch = shifted.shape[1]
                    order = [j * partial + i for i in range(partial) for j in range(ch // partial)]
                    shuffled = torch.empty_like(shifted)
                    shuffled[:, order] = shifted
                    shifted = shuffled
                expected[:, e] = shifted
            torch.testing.assert_close(diff, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pointwise_matrix_product_equals_grouped_convolution(spatial_dims):
    """The per-edge 1x1 convolutions computed as a batched matrix product against PyTorch's
    grouped convolution with the same weight, values and gradients."""
    torch.manual_seed(0)
    edges, c = 3, 4
    sp = (5, 6) if spatial_dims == 2 else (3, 4, 5)
    conv_nd = EdgePointwise2d if spatial_dims == 2 else EdgePointwise3d
    conv = conv_nd(edges * c, edges * c, 1, groups=edges, bias=False).double()
    x = torch.randn(2, edges * c, *sp, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(2, edges * c, *sp, dtype=torch.float64)
    out = conv(x)
    expected = (F.conv2d if spatial_dims == 2 else F.conv3d)(x, conv.weight, groups=edges)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((out * probe).sum(), (x, conv.weight))
    expected_grads = torch.autograd.grad((expected * probe).sum(), (x, conv.weight))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("size", "kernel", "dilation", "depthwise"),
    [
        ((2, 2), 5, 2, False),  # only the centre tap reaches: a 1x1 convolution
        ((2, 2), 5, 1, True),  # the central 3x3
        ((1, 1), 3, 1, True),  # the centre tap of a depthwise kernel: a per-channel scale
        ((1, 1), 5, 2, False),
        ((3, 3), 5, 2, False),  # the central 3x3 taps (dilation 2)
        ((2, 7), 5, 1, True),  # cropped along one axis only
        ((1, 6), 3, 2, False),
        ((4, 4), 3, 24, False),  # an ASPP rate larger than the map
        ((2, 1, 3), 3, 1, True),  # volumes
        ((3, 2, 2), 5, 2, False),
    ],
)
def test_reachable_conv_equals_the_full_convolution(size, kernel, dilation, depthwise):
    """The convolution that leaves out the taps which read only padding gives the full
    convolution's output and gradients (those of the left-out taps are zero), in float64."""
    torch.manual_seed(0)
    c_in, c_out = (6, 6) if depthwise else (4, 5)
    groups = c_in if depthwise else 1
    cls = ReachableConv2d if len(size) == 2 else ReachableConv3d
    conv = cls(
        c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation, groups=groups
    ).double()  # with a bias
    assert _reachable_taps(conv, size) is not None  # the cropped path runs
    x = torch.randn(2, c_in, *size, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(2, c_out, *size, dtype=torch.float64)
    out = conv(x)
    full = conv_nd_full(x, conv)
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((out * probe).sum(), (x, conv.weight, conv.bias))
    want = torch.autograd.grad((full * probe).sum(), (x, conv.weight, conv.bias))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    # the taps that read only padding: zero gradient in both
    reach = _reachable_taps(conv, size)
    outside = torch.ones_like(conv.weight, dtype=torch.bool)
    centre = [slice(kernel // 2 - r, kernel // 2 + r + 1) for r in reach]
    outside[(slice(None), slice(None), *centre)] = False
    assert outside.any() and got[1][outside].abs().max() == 0


def conv_nd_full(x, conv):
    """``conv``'s plain convolution with its whole kernel."""
    return (F.conv2d if x.dim() == 4 else F.conv3d)(
        x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )


def test_reachable_taps_leaves_other_convolutions_alone():
    """Every tap reaches, or the convolution is not a stride-1 "same" one with odd kernels and
    zero padding: no cropping, and the module is a plain ``Conv2d`` (same state_dict)."""
    conv = ReachableConv2d(4, 4, 5, padding=4, dilation=2)
    assert _reachable_taps(conv, (5, 5)) is None  # 4 pixels away still exist at 5 pixels
    assert _reachable_taps(conv, (4, 9)) == (1, 2)
    assert _reachable_taps(ReachableConv2d(4, 4, 3, stride=2, padding=1), (1, 1)) is None
    assert _reachable_taps(ReachableConv2d(4, 4, 4, padding=2), (1, 1)) is None
    assert _reachable_taps(ReachableConv2d(4, 4, 3, padding=0), (1, 1)) is None
    assert (
        _reachable_taps(ReachableConv2d(4, 4, 3, padding=1, padding_mode="reflect"), (1, 1)) is None
    )
    plain = torch.nn.Conv2d(4, 4, 5, padding=4, dilation=2)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(1, 4, 6, 6)
    plain.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x), plain(x), rtol=0, atol=0)  # the plain path itself


def test_memory_option_errors(monkeypatch):
    spec = ops.get_op("sep_conv_3x3")
    unfused = ops.OpSpec("sep_unfused", spec.factory, False, None, spec.spatial_dims)
    monkeypatch.setitem(ops.OP_REGISTRY, unfused.name, unfused)
    with pytest.raises(ValueError, match=r"selective_checkpoint needs .* \['sep_unfused'\]"):
        _tiny(selective_checkpoint=True, op_names=(*space.PRIMITIVES, "sep_unfused"))
    with pytest.raises(ValueError, match="checkpoint_cells and selective_checkpoint exclude"):
        _tiny(checkpoint_cells=True, selective_checkpoint=True)
    with pytest.raises(ValueError, match="selective_checkpoint must be True or False, got 'yes'"):
        _tiny(selective_checkpoint="yes")
    with pytest.raises(ValueError, match="checkpoint_cells must be True or False, got 1"):
        _tiny(checkpoint_cells=1)


def test_float32_matches_reference_within_1e5():
    model = _tiny().float()
    ref = copy.deepcopy(model)
    x = torch.randn(1, 3, 40, 40)
    torch.testing.assert_close(model(x), ref_forward(ref, x), rtol=1e-5, atol=1e-5)


def test_arch_parameter_shapes_and_registration():
    model = SearchNetwork(5, layers=3, blocks=5, filter_multiplier=2, stem_channels=(4, 4, 8))
    alphas, betas = model.arch_parameters()
    assert alphas.shape == (20, 8) and betas.shape == (3, 4, 3)
    state = model.state_dict()
    assert "alphas" in state and "betas" in state
    ids = {id(p) for p in model.weight_parameters()}
    assert id(alphas) not in ids and id(betas) not in ids
    assert len(ids) + 2 == len(list(model.parameters()))
    assert float(alphas.detach().abs().max()) < 0.01  # N(0, 1) x 1e-3


def test_gradients_reach_every_alpha_and_every_used_beta():
    torch.manual_seed(0)
    model = SearchNetwork(4, layers=4, blocks=5, filter_multiplier=2, stem_channels=(4, 4, 8))
    x = torch.randn(1, 3, 64, 64)  # batch size 1 in training mode
    loss = F.cross_entropy(model(x), torch.randint(0, 4, (1, 64, 64)))
    loss.backward()
    assert torch.all(model.alphas.grad[:, 1:] != 0)  # `none` gets gradient only via the softmax
    used = model.used_beta_mask()
    assert torch.all(model.betas.grad[used] != 0)
    assert torch.all(model.betas.grad[~used] == 0)
    # used entries by hand: layer 0 from the stem (level 0) only; layer 1 from levels 0, 1
    assert used[0].nonzero().tolist() == [[0, 1], [0, 2]]
    assert used[1].nonzero().tolist() == [[0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert int(used.sum()) == 2 + 5 + 8 + 10  # layer 2 has no level-3 source


def test_invalid_betas_have_no_influence():
    model = _tiny().eval()
    x = torch.randn(1, 3, 33, 33, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        model.betas[:, 0, 0] = 1e4
        model.betas[:, 3, 2] = -1e4
        after = model(x)
    torch.testing.assert_close(before, after)


@pytest.mark.parametrize("size", [(33, 33), (65, 47), (64, 96)])
def test_logits_at_input_size(size):
    model = _tiny()
    assert model(torch.randn(1, 3, *size, dtype=torch.float64)).shape == (1, 3, *size)


def test_genotype_decodes_arch_parameters():
    model = _tiny(layers=5, blocks=5)
    g = model.genotype()
    a = model.alphas.detach().numpy()
    b = model.betas.detach().numpy()
    assert g.cell == decode.decode_cell(a)
    assert g.path == decode.decode_path(b)
    np.testing.assert_allclose(
        model.beta_weights().detach().numpy(), decode.transition_probs(b), atol=1e-12
    )


def test_bad_input_shapes():
    model = _tiny()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 16, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisor"):
        SearchNetwork(3, filter_multiplier=6, partial_channels=4)


def test_paper_sized_supernet_forward_backward():
    """F=8, L=12, B=5 at 64x64, batch 2 (the configuration of the issue)."""
    torch.manual_seed(0)
    model = SearchNetwork(19)
    x = torch.randn(2, 3, 64, 64)
    loss = F.cross_entropy(model(x), torch.randint(0, 19, (2, 64, 64)))
    loss.backward()
    assert model.alphas.grad is not None and torch.isfinite(model.alphas.grad).all()
    assert model.betas.grad[model.used_beta_mask()].abs().min() > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_layout_matches_plain_reference(spatial_dims):
    """The supernet with its parameters and input in channels-last layout (the layout lever of
    ``benchmarks/supernet.py --modes channels-last``) against the plain reference: outputs,
    gradients and running statistics."""
    layout = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    size = (37, 45) if spatial_dims == 2 else (33, 35, 34)
    kw = (
        {}
        if spatial_dims == 2
        else {"layers": 2, "filter_multiplier": 2, "stem_channels": (4, 4, 8)}
    )
    model = _tiny(spatial_dims=spatial_dims, **kw)
    ref = copy.deepcopy(model)
    model = model.to(memory_format=layout)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    probe = torch.randn(2, 3, *size, dtype=torch.float64)
    out = model(x.contiguous(memory_format=layout))
    _assert_step_matches(out, ref_forward(ref, x), probe, model, ref)


def _cosine(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("seed", [0, 1])
def test_bfloat16_autocast_stays_within_its_tolerance_of_the_reference(seed):
    """The search's ``amp`` (bfloat16 autocast of the forward pass) against the plain float64
    reference. The tolerance it is held to (docs/supernet.md): logits within 5 % of their
    largest magnitude, and gradients pointing the same way (cosine >= 0.9 for the alphas, the
    betas and every weight). Parameters, gradients and running statistics stay float32."""
    model = _tiny().float()
    ref = copy.deepcopy(model).double()
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 37, 45)
    probe = torch.randn(2, 3, 37, 45)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    expected = ref_forward(ref, x.double())
    error = (out.double() - expected).abs().max()
    assert error <= 0.05 * expected.abs().max()
    assert error > 1e-4 * expected.abs().max()  # bfloat16 did run: float32 is within 1e-6
    (out.float() * probe).sum().backward()
    (expected * probe.double()).sum().backward()
    assert _cosine(model.alphas.grad, ref.alphas.grad) >= 0.9
    used = model.used_beta_mask()
    assert _cosine(model.betas.grad[used], ref.betas.grad[used]) >= 0.9
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
        if q.grad.abs().max() > 0:
            assert _cosine(p.grad, q.grad) >= 0.9, name
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers(), strict=True):
        assert b.dtype in (torch.float32, torch.int64), name
        torch.testing.assert_close(b.double(), c.double(), rtol=0.05, atol=0.02, msg=name)


@pytest.mark.slow
def test_supernet_compiles_as_one_graph_matching_plain_reference():
    """The whole supernet is captured by ``torch.compile`` as one graph (``fullgraph=True``: a
    graph break raises; ``benchmarks/supernet.py --modes compiled`` compiles it so) and the captured graph, run with
    eager kernels (``aot_eager``: forward and backward traced by AOTAutograd), equals the plain
    reference in float64: outputs, every gradient, every running statistic, over two training
    steps (the second reuses the graph and reads the updated running statistics)."""
    model = _tiny(layers=2, blocks=2)
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    torch.manual_seed(1)
    for _ in range(2):
        x = torch.randn(2, 3, 37, 45, dtype=torch.float64)
        probe = torch.randn(2, 3, 37, 45, dtype=torch.float64)
        _assert_step_matches(compiled(x), ref_forward(ref, x), probe, model, ref)
        model.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
    model.eval()
    ref.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 37, 45, dtype=torch.float64)
        torch.testing.assert_close(compiled(x), ref_forward(ref, x), rtol=1e-8, atol=1e-10)
