"""The classic vanishing/exploding-gradient check on a scalar tanh chain.

h_t = tanh(w h_{t-1}), h_0 = 0.5. By the chain rule dh_T/dh_0 = prod_{t=1..T} (1 - h_t^2) w, and
dh_T/dw = sum_t (1 - h_t^2) h_{t-1} prod_{s>t} (1 - h_s^2) w. The tape must reproduce both to
round-off for every w in [-4, 4] (|w| < 1 vanishes, |w| > 1 saturates) and T up to 20.
"""
import numpy as np
import pytest

import graphgrad as gg

WS = np.linspace(-4.0, 4.0, 41)


def closed_form(w, T, h0=0.5):
    hs = [h0]
    for _ in range(T):
        hs.append(np.tanh(w * hs[-1]))
    d_h0, d_w = 1.0, 0.0
    for t in range(1, T + 1):        # forward-mode accumulation of both derivatives
        local = 1.0 - hs[t] ** 2
        d_w = local * (hs[t - 1] + w * d_w)
        d_h0 = local * w * d_h0
    return hs[-1], d_h0, d_w


def chain_loop(w, h0, T):
    h = h0
    for _ in range(T):
        h = gg.tanh(w * h)
    return h


def chain_recurrent(w, h0, T):
    def step(p, x_t, h):
        h = gg.tanh(p["w"] * h)
        return h, h
    model = gg.Recurrent(step, {"w": w})
    _, h_T = model(np.zeros((T, 1, 1)), h0)
    return h_T


@pytest.mark.parametrize("build", [chain_loop, chain_recurrent], ids=["loop", "Recurrent"])
@pytest.mark.parametrize("T", [1, 5, 20])
def test_tanh_chain_gradient_is_the_closed_form_product(build, T):
    worst = 0.0
    for w in WS:
        wt = gg.Tensor(np.array([[w]]), requires_grad=True)
        h0 = gg.Tensor(np.array([[0.5]]), requires_grad=True)
        h_T = build(wt, h0, T)
        h_T.sum().backward()
        want_h, want_dh0, want_dw = closed_form(w, T)
        assert h_T.data.item() == pytest.approx(want_h, rel=1e-14, abs=1e-300)
        for got, want in [(h0.grad.item(), want_dh0), (wt.grad.item(), want_dw)]:
            err = abs(got - want) / abs(want) if want != 0 else abs(got)
            worst = max(worst, err)
            assert err < 1e-12, (w, T, got, want)
    assert worst < 1e-12


def test_sweep_spans_many_orders_of_magnitude():
    # The relative-error check is only meaningful if the sweep reaches gradients that have all but
    # vanished (|w| small, and |w| large where tanh saturates) as well as O(0.1) ones near |w|~1.
    grads = np.array([abs(closed_form(w, 20)[1]) for w in WS])
    assert grads[WS == 0.0].item() == 0.0
    nonzero = grads[grads > 0]
    assert nonzero.min() < 1e-40 and nonzero.max() > 1e-2
    assert abs(closed_form(4.0, 20)[1]) < 1e-40      # saturation also vanishes


def test_gradient_at_zero_weight_is_exactly_zero_and_sign_follows_w():
    for w, T in [(0.0, 5), (-1.5, 3), (1.5, 3)]:
        wt = gg.Tensor(np.array([[w]]), requires_grad=True)
        h0 = gg.Tensor(np.array([[0.5]]), requires_grad=True)
        chain_loop(wt, h0, T).sum().backward()
        assert np.sign(h0.grad.item()) == np.sign(w) ** T
