"""PyTorch interop: our Trunk loaded from torch state dicts computes what torch computes.

Reference: torch.nn.LSTM / GRU / RNN (torch 2.13, CPU, float32) run on packed padded
sequences; equations in https://pytorch.org/docs/stable/generated/torch.nn.LSTM.html (and
GRU, RNN). Our trunk must match outputs, h_n/c_n and gradients of the same scalar loss.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_spec

from mtlrnn.model.interop import trunk_config_from_torch
from mtlrnn.model.interop import trunk_params_from_torch
from mtlrnn.model.interop import trunk_params_to_torch
from mtlrnn.model.trunk import Trunk

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

B, L, IN, H = 4, 7, 3, 5  # batch, time, input width, hidden
LENGTHS = [7, 3, 1, 5]
MODULES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
CASES = list(itertools.product(MODULES, [1, 2], [False, True]))


def _torch_module(cell, num_layers, bidirectional, *, bias=True, seed=0):
    torch.manual_seed(seed)
    module = getattr(torch.nn, MODULES[cell])(
        IN, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, bias=bias
    )
    return module


def _numpy_sd(module):
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _inputs(seed=0):
    return np.random.default_rng(seed).normal(size=(B, L, IN)).astype(np.float32)


def _torch_run(module, x, w_out_full, w_h):
    """Outputs, h_n, c_n (or None) and grads of ``sum(out * w_out) + sum(h_n * w_h)``."""
    xt = torch.tensor(x, requires_grad=True)
    lengths = torch.tensor(LENGTHS)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        xt, lengths, batch_first=True, enforce_sorted=False
    )
    out_packed, state = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed, batch_first=True, total_length=L)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    loss = (out * torch.tensor(w_out_full)).sum() + (h_n * torch.tensor(w_h)).sum()
    module.zero_grad()
    loss.backward()
    return (
        out.detach().numpy(),
        h_n.detach().numpy(),
        None if c_n is None else c_n.detach().numpy(),
        xt.grad.numpy(),
        module.weight_hh_l0.grad.numpy(),
    )


def _ours(cell, num_layers, bidirectional):
    return Trunk(model_spec(
        cell=cell, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional))


@pytest.mark.parametrize("cell,num_layers,bidirectional", CASES)
def test_matches_torch_outputs_states_and_grads(cell, num_layers, bidirectional):
    module = _torch_module(cell, num_layers, bidirectional)
    sd = _numpy_sd(module)
    dirs = 2 if bidirectional else 1
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, L, IN)).astype(np.float32)
    w_out = rng.normal(size=(B, L, dirs * H)).astype(np.float32)
    w_h = rng.normal(size=(num_layers * dirs, B, H)).astype(np.float32)
    t_out, t_h, t_c, t_dx, t_dwhh = _torch_run(module, x, w_out, w_h)

    params = trunk_params_from_torch(sd, cell=cell)
    trunk = _ours(cell, num_layers, bidirectional)
    lengths = jnp.array(LENGTHS)
    directions = ("fwd", "bwd")[:dirs]

    def run(params, x):
        outputs, last, finals = trunk.apply({"params": params}, x, lengths)
        # torch's h_n order: index layer * num_dirs + direction.
        h_n = jnp.stack([finals[layer][d][0] for layer in range(num_layers) for d in directions])
        loss = jnp.sum(outputs * w_out) + jnp.sum(h_n * w_h)
        return loss, (outputs, last, finals, h_n)

    grad_fn = jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))
    (_, (outputs, last, finals, h_n)), (g_params, g_x) = grad_fn(params, jnp.asarray(x))

    np.testing.assert_allclose(outputs, t_out, atol=1e-5)
    mask = np.arange(L)[None, :] < np.array(LENGTHS)[:, None]
    assert np.all(np.asarray(outputs)[~mask] == 0.0)  # padding exactly zero in ours
    np.testing.assert_allclose(h_n, t_h, atol=1e-5)
    if cell == "lstm":
        c_n = np.stack([finals[layer][d][1] for layer in range(num_layers) for d in directions])
        np.testing.assert_allclose(c_n, t_c, atol=1e-5)
    else:
        assert all(len(finals[layer][d]) == 1 for layer in range(num_layers) for d in directions)
    # `last` is the top layer's final h per direction, [fwd, bwd] concatenated.
    top = np.concatenate([t_h[(num_layers - 1) * dirs + k] for k in range(dirs)], axis=-1)
    np.testing.assert_allclose(last, top, atol=1e-5)
    np.testing.assert_allclose(g_x, t_dx, atol=1e-4)
    assert np.all(np.asarray(g_x)[~mask] == 0.0)
    np.testing.assert_allclose(g_params["layer_0_fwd"]["w_hh"], t_dwhh.T, atol=1e-4)


@pytest.mark.parametrize("cell,num_layers,bidirectional", CASES)
def test_round_trip_is_identity(cell, num_layers, bidirectional):
    sd = _numpy_sd(_torch_module(cell, num_layers, bidirectional))
    back = trunk_params_to_torch(trunk_params_from_torch(sd, cell=cell), cell=cell)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value)
    # And the exported dict loads into a fresh torch module.
    fresh = _torch_module(cell, num_layers, bidirectional, seed=123)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), sd[key])


@pytest.mark.parametrize("cell,num_layers,bidirectional", [("gru", 2, True), ("lstm", 1, False)])
def test_config_from_torch(cell, num_layers, bidirectional):
    sd = _numpy_sd(_torch_module(cell, num_layers, bidirectional))
    cfg = trunk_config_from_torch(sd, cell=cell)
    assert cfg == {
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "hidden_size": H,
        "input_size": IN,
    }
    params = trunk_params_from_torch(sd, cell=cell)
    # The inferred config builds a Trunk whose initialised params have the loaded shapes.
    trunk = Trunk(model_spec(cell=cell, **{k: v for k, v in cfg.items() if k != "input_size"}))
    init = jax.eval_shape(trunk.init, jax.random.key(0), jnp.zeros((1, 2, IN)), jnp.array([2]))
    assert jax.tree.map(np.shape, init["params"]) == jax.tree.map(np.shape, params)


def test_bias_false_fills_zero_biases_and_matches_torch():
    module = _torch_module("lstm", 2, True, bias=False)
    sd = _numpy_sd(module)
    assert not any(k.startswith("bias") for k in sd)
    params = trunk_params_from_torch(sd, cell="lstm")
    assert np.all(params["layer_1_bwd"]["b_hh"] == 0) and params["layer_1_bwd"]["b_hh"].shape == (
        4 * H,
    )
    x = _inputs()
    xt = torch.tensor(x)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        xt, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            module(packed)[0], batch_first=True, total_length=L
        )
    ours, _, _ = jax.jit(_ours("lstm", 2, True).apply)({"params": params}, x, jnp.array(LENGTHS))
    np.testing.assert_allclose(ours, out.numpy(), atol=1e-5)


def test_prefix_selects_submodule():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Module()
            self.encoder.rnn = torch.nn.GRU(IN, H, num_layers=2)
            self.head = torch.nn.Linear(H, 2)

    torch.manual_seed(0)
    model = Model()
    sd = _numpy_sd(model)
    params = trunk_params_from_torch(sd, cell="gru", prefix="encoder.rnn.")
    np.testing.assert_array_equal(params["layer_1_fwd"]["w_ih"], sd["encoder.rnn.weight_ih_l1"].T)
    assert trunk_config_from_torch(sd, cell="gru", prefix="encoder.rnn.")["num_layers"] == 2
    back = trunk_params_to_torch(params, cell="gru", prefix="encoder.rnn.")
    assert set(back) == {k for k in sd if k.startswith("encoder.rnn.")}
    with pytest.raises(ValueError, match=r"unexpected state_dict keys.*head\.weight.*prefix="):
        trunk_params_from_torch(sd, cell="gru")
    with pytest.raises(ValueError, match="no state_dict key starts with prefix 'decoder.'"):
        trunk_params_from_torch(sd, cell="gru", prefix="decoder.")


def test_lstm_state_dict_loaded_as_gru_names_key_and_shapes():
    sd = _numpy_sd(_torch_module("lstm", 1, False))
    msg = r"'weight_ih_l0' has shape \(20, 3\), expected \(15, 3\).*looks like a lstm"
    with pytest.raises(ValueError, match=msg):
        trunk_params_from_torch(sd, cell="gru")
    with pytest.raises(ValueError, match=r"expected \(5, 3\)"):
        trunk_params_from_torch(sd, cell="rnn")


def test_missing_and_unexpected_keys_are_named():
    sd = _numpy_sd(_torch_module("gru", 2, True))
    partial = {k: v for k, v in sd.items() if k not in ("weight_hh_l1", "bias_ih_l0_reverse")}
    with pytest.raises(ValueError, match=r"missing.*'bias_ih_l0_reverse'.*'weight_hh_l1'"):
        trunk_params_from_torch(partial, cell="gru")
    with pytest.raises(ValueError, match=r"unexpected state_dict keys \['weight_xx_l0'\]"):
        trunk_params_from_torch({**sd, "weight_xx_l0": sd["weight_hh_l0"]}, cell="gru")


def test_layer_input_width_is_checked():
    sd = _numpy_sd(_torch_module("rnn", 2, True))
    sd["weight_ih_l1"] = sd["weight_ih_l1"][:, :H]  # as if layer 1 saw one direction only
    with pytest.raises(ValueError, match=r"'weight_ih_l1' has shape \(5, 5\), expected \(5, 10\)"):
        trunk_params_from_torch(sd, cell="rnn")


def test_proj_size_is_refused():
    torch.manual_seed(0)
    sd = _numpy_sd(torch.nn.LSTM(IN, H, proj_size=2))
    with pytest.raises(ValueError, match=r"proj_size != 0 .*not supported.*'weight_hr_l0'"):
        trunk_params_from_torch(sd, cell="lstm")


def test_unknown_cell_and_unconvertible_value():
    sd = _numpy_sd(_torch_module("rnn", 1, False))
    with pytest.raises(ValueError, match="unknown cell 'elman'"):
        trunk_params_from_torch(sd, cell="elman")
    module = _torch_module("rnn", 1, False)
    raw = dict(module.named_parameters())  # tensors that require grad
    with pytest.raises(ValueError, match=r"detach\(\)\.cpu\(\)\.numpy\(\)"):
        trunk_params_from_torch(raw, cell="rnn")


def test_to_torch_errors():
    params = trunk_params_from_torch(_numpy_sd(_torch_module("lstm", 2, True)), cell="lstm")
    wrapped = trunk_params_to_torch({"params": params}, cell="lstm")
    assert "weight_hh_l1_reverse" in wrapped
    with pytest.raises(ValueError, match=r"missing params layers \['layer_1_bwd'\]"):
        trunk_params_to_torch({k: v for k, v in params.items() if k != "layer_1_bwd"}, cell="lstm")
    with pytest.raises(ValueError, match=r"unexpected params keys \['head'\]"):
        trunk_params_to_torch({**params, "head": {}}, cell="lstm")
    with pytest.raises(ValueError, match=r"layer_0_fwd/w_ih' has shape \(3, 20\), expected"):
        trunk_params_to_torch(params, cell="gru")
