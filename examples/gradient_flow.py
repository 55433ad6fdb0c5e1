"""Gradient flow in a vanilla RNN, an LSTM and a GRU on the same long sequence.

    python examples/gradient_flow.py [--T 150] [--out docs/img]

All models get PyTorch's default initialization; the gated ones are shown twice, once as
initialized and once with a chrono-initialized carry gate (forget / update bias log U(1, T-1)),
which is what lets the LSTM's cell-state path keep the gradient alive over the whole sequence
while the RNN's hidden-state chain loses it within a few dozen steps. Prints the table of the
`graphgrad flow` CLI and writes the pictures used in docs/flow.md.
"""
import argparse
import os

import numpy as np

from graphgrad import flow
from graphgrad.flow import cli, plots, paths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=150)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--out", default="docs/img")
    a = ap.parse_args()
    xs = np.random.default_rng(0).standard_normal((a.T, 1, 8))
    models = {"RNN": cli.build_model("rnn", 8, a.hidden, T=a.T),
              "LSTM": cli.build_model("lstm", 8, a.hidden, T=a.T),
              "LSTM chrono": cli.build_model("lstm", 8, a.hidden, forget_bias="chrono", T=a.T),
              "GRU chrono": cli.build_model("gru", 8, a.hidden, forget_bias="chrono", T=a.T)}
    flows = {k: flow.from_tape(m, xs) for k, m in models.items()}
    chains = {k: f.chains() for k, f in flows.items()}
    args = argparse.Namespace(T=a.T, hidden=a.hidden, batch=1, init_scale=1.0,
                              forget_bias="0 / chrono", loss="last", seed=0)
    print(cli.table(flows, chains, args))

    # the cell-state highway in numbers: how much of dL/dc_k still arrives from the loss
    for k in ("LSTM", "LSTM chrono"):
        r = flows[k].routes()["l0"].norms()
        print(f"{k:12s} ||dL/dc_0|| = {r['total'][0, 0]:.3g}: cell path {r['cell'][0, 0]:.3g}, "
              f"hidden path {r['hidden'][0, 0]:.3g}")
    rnn = flows["RNN"].norms()["l0"]["h"][:, 0]
    print(f"RNN          ||dL/dh_0|| = {rnn[0]:.3g} (||dL/dh_T-1|| = {rnn[-1]:.3g})")
    print("paths from weight_hh to the loss, by T:",
          {T: f"{n:.3g}" for T, n in paths.path_growth(models["LSTM"], xs, "weight_hh_l0",
                                                       Ts=(1, 2, 4, 8, 16, 32)).items()})

    os.makedirs(a.out, exist_ok=True)
    plots.plot_norms(flows, os.path.join(a.out, "flow_norms.png"))
    plots.plot_lags(flows, os.path.join(a.out, "flow_lags.png"), max_lag=a.T)
    plots.plot_chains({k: c["l0"] for k, c in chains.items()},
                      os.path.join(a.out, "flow_chains.png"))
    plots.plot_sweep(os.path.join(a.out, "flow_sweep.png"))
    print(f"wrote {a.out}/flow_norms.png, flow_lags.png, flow_chains.png, flow_sweep.png")


if __name__ == "__main__":
    main()
