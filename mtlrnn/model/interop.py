"""Parameter exchange with PyTorch's ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (no torch import).

PyTorch keeps, per layer ``k`` and direction (``_reverse`` for the backward one)::

    weight_ih_l{k}[_reverse]  [G*H, I]        bias_ih_l{k}[_reverse]  [G*H]
    weight_hh_l{k}[_reverse]  [G*H, H]        bias_hh_l{k}[_reverse]  [G*H]

and :class:`mtlrnn.model.trunk.Trunk` keeps the transposes under ``layer_{k}_{fwd|bwd}`` as
``w_ih [I, G*H]``, ``w_hh [H, G*H]``, ``b_ih [G*H]``, ``b_hh [G*H]``. Gate order along the
``G*H`` axis is PyTorch's in both (see :mod:`mtlrnn.model.cells`), so conversion is a transpose.

Pass numpy arrays (anything ``np.asarray`` accepts), e.g.::

    sd = {k: v.detach().cpu().numpy() for k, v in torch_lstm.state_dict().items()}
    params = trunk_params_from_torch(sd, cell="lstm")
    cfg = trunk_config_from_torch(sd, cell="lstm")
    trunk = Trunk(ModelConfig(cell="lstm", dropout=0.0, **cfg))
    outputs, last, finals = trunk.apply({"params": params}, x, lengths)

Not representable, and refused with a ValueError: LSTMs with ``proj_size != 0``
(``weight_hr_l*`` keys). Not detectable from a state dict, and the caller's responsibility:
``nn.RNN(nonlinearity="relu")`` (mtlrnn's ``rnn`` cell is tanh), ``batch_first`` (it does
not change parameters) and ``dropout`` (a module setting, ``ModelConfig.dropout``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mtlrnn.model.cells import CLASSIC_CELLS
from mtlrnn.model.cells import get_cell

_TORCH_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_OUR_LAYER = re.compile(r"^layer_(\d+)_(fwd|bwd)$")
# PyTorch name stem -> our name; weights are transposed on the way.
_NAMES = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}
_GATES_TO_CELL = {4: "lstm", 3: "gru", 1: "rnn"}


def _as_array(value: Any, key: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"state_dict[{key!r}] is not convertible to a numpy array ({err}); "
            "pass {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}"
        ) from err


def _cell_hint(rows: int, hidden: int) -> str:
    """A hint naming the cell whose gate count fits ``rows = G*H``, if any."""
    if hidden > 0 and rows % hidden == 0 and rows // hidden in _GATES_TO_CELL:
        return f"; this looks like a {_GATES_TO_CELL[rows // hidden]} state dict"
    return ""


def _check_shape(key: str, got: tuple[int, ...], expected: tuple[int, ...], why: str) -> None:
    if tuple(got) != tuple(expected):
        raise ValueError(f"{key!r} has shape {tuple(got)}, expected {tuple(expected)} ({why})")


# (stem, layer, "_reverse" or None) of a PyTorch key -> its array.
_Parsed = dict[tuple[str, str, str | None], np.ndarray]


def _select_torch_keys(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state_dict`` whose keys start with ``prefix``, which is stripped;
    ValueError unless there are some and all are RNN keys of PyTorch without projections."""
    selected = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        sample = ", ".join(repr(k) for k in list(state_dict)[:4])
        raise ValueError(f"no state_dict key starts with prefix {prefix!r}; keys are like {sample}")
    projections = sorted(k for k in selected if k.startswith("weight_hr_l"))
    if projections:
        raise ValueError(
            f"LSTMs with proj_size != 0 are not supported (found key {prefix + projections[0]!r});"
            " use proj_size=0"
        )
    unexpected = sorted(prefix + k for k in selected if not _TORCH_KEY.match(k))
    if unexpected:
        hint = "" if prefix else "; pass prefix= to select the RNN's keys in a larger model"
        raise ValueError(f"unexpected state_dict keys {unexpected}{hint}")
    return selected


def _torch_layout(parsed: _Parsed, prefix: str) -> tuple[int, tuple[str, ...], bool]:
    """``(num_layers, suffixes, has_bias)`` told by the keys of ``parsed`` (suffixes:
    ``("",)`` or ``("", "_reverse")``); ValueError naming every missing key."""
    num_layers = 1 + max(int(layer) for _, layer, _ in parsed)
    bidirectional = any(rev for _, _, rev in parsed)
    has_bias = any(stem.startswith("bias") for stem, _, _ in parsed)
    suffixes = ("", "_reverse") if bidirectional else ("",)
    stems = tuple(_NAMES) if has_bias else ("weight_ih", "weight_hh")
    missing = [
        f"{prefix}{stem}_l{layer}{suffix}"
        for layer in range(num_layers)
        for suffix in suffixes
        for stem in stems
        if (stem, str(layer), suffix or None) not in parsed
    ]
    if missing:
        raise ValueError(f"missing state_dict keys {missing}")
    return num_layers, suffixes, has_bias


def _torch_sizes(parsed: _Parsed, prefix: str) -> tuple[int, int]:
    """``(hidden, input_size)`` from the first layer's weights, which must be 2-D."""
    w_hh0 = parsed[("weight_hh", "0", None)]
    w_ih0 = parsed[("weight_ih", "0", None)]
    if w_hh0.ndim != 2 or w_ih0.ndim != 2:
        raise ValueError(
            f"{prefix}weight_ih_l0 and {prefix}weight_hh_l0 must be 2-D [G*H, I] and [G*H, H], "
            f"got shapes {w_ih0.shape} and {w_hh0.shape}"
        )
    return w_hh0.shape[1], w_ih0.shape[1]


def _from_torch_direction(
    parsed: _Parsed,
    layer: int,
    suffix: str,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    prefix: str,
    has_bias: bool,
    hidden: int,
    why: str,
) -> dict[str, np.ndarray]:
    """One ``layer_{k}_{fwd|bwd}`` entry of Trunk params from the PyTorch arrays of
    ``layer`` and ``suffix``, each checked against ``shapes[stem]`` and transposed."""
    key = f"{prefix}{{}}_l{layer}{suffix}"
    entry: dict[str, np.ndarray] = {}
    for stem, shape in shapes.items():
        name = _NAMES[stem]
        if not has_bias and stem.startswith("bias"):
            # bias=False modules: zero biases compute the same function.
            entry[name] = np.zeros(shape, parsed[("weight_hh", "0", None)].dtype)
            continue
        value = parsed[(stem, str(layer), suffix or None)]
        hint = _cell_hint(value.shape[0], hidden) if value.ndim >= 1 else ""
        _check_shape(key.format(stem), value.shape, shape, why + hint)
        entry[name] = np.ascontiguousarray(value.T) if value.ndim == 2 else value
    return entry


def _parse_torch(
    state_dict: Mapping[str, Any], cell: str, prefix: str
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Validate a PyTorch RNN state dict; return ``(config, params)``."""
    num_gates = get_cell(cell, among=CLASSIC_CELLS).num_gates
    selected = _select_torch_keys(state_dict, prefix)
    parsed = {_TORCH_KEY.match(k).groups(): _as_array(v, prefix + k) for k, v in selected.items()}
    num_layers, suffixes, has_bias = _torch_layout(parsed, prefix)
    hidden, input_size = _torch_sizes(parsed, prefix)
    width = num_gates * hidden
    why = f"cell={cell!r} has G={num_gates} gates, H={hidden}"
    params: dict[str, dict[str, np.ndarray]] = {}
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else hidden * len(suffixes)
        shapes = {
            "weight_ih": (width, layer_in),
            "weight_hh": (width, hidden),
            "bias_ih": (width,),
            "bias_hh": (width,),
        }
        for suffix in suffixes:
            direction = "bwd" if suffix else "fwd"
            params[f"layer_{layer}_{direction}"] = _from_torch_direction(
                parsed,
                layer,
                suffix,
                shapes,
                prefix=prefix,
                has_bias=has_bias,
                hidden=hidden,
                why=why,
            )
    config = {
        "num_layers": num_layers,
        "bidirectional": len(suffixes) == 2,
        "hidden_size": int(hidden),
        "input_size": int(input_size),
    }
    return config, params


def trunk_params_from_torch(
    state_dict: Mapping[str, Any], *, cell: str, prefix: str = ""
) -> dict[str, dict[str, np.ndarray]]:
    """Trunk parameters from the state dict of a PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN``.

    Layer count, bidirectionality, hidden and input size are inferred from keys and shapes
    (see :func:`trunk_config_from_torch`). Modules built with ``bias=False`` get zero biases.

    Args:
      state_dict: ``{name: array}`` with ``weight_ih_l{k}[_reverse]: [G*H, I]``,
        ``weight_hh_l{k}[_reverse]: [G*H, H]`` and (unless ``bias=False``)
        ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]: [G*H]``. Values are anything
        ``np.asarray`` accepts; from torch pass ``v.detach().cpu().numpy()``.
      cell: ``lstm`` (G=4), ``gru`` (G=3) or ``rnn`` (G=1, tanh).
      prefix: keep only keys starting with it and strip it, e.g. ``"encoder.rnn."`` to pick
        the RNN out of a larger model's state dict.
    Returns:
      The ``params`` collection of :class:`mtlrnn.model.trunk.Trunk`:
      ``{"layer_{k}_{fwd|bwd}": {"w_ih": [I, G*H], "w_hh": [H, G*H], "b_ih": [G*H],
      "b_hh": [G*H]}}`` as numpy arrays of the input dtype; use as ``{"params": result}``.
    Raises:
      ValueError: unknown cell; no key with ``prefix``; unexpected or missing keys (named);
        a shape that does not fit ``cell`` (names the key, expected and got shape);
        ``proj_size != 0`` LSTMs.
    """
    return _parse_torch(state_dict, cell, prefix)[1]


def trunk_config_from_torch(
    state_dict: Mapping[str, Any], *, cell: str, prefix: str = ""
) -> dict[str, Any]:
    """Trunk settings inferred from a PyTorch RNN state dict (validated as in
    :func:`trunk_params_from_torch`).

    Returns:
      ``{"num_layers": int, "bidirectional": bool, "hidden_size": H, "input_size": I}``;
      all but ``input_size`` are :class:`mtlrnn.model.trunk.Trunk` fields.
    """
    return _parse_torch(state_dict, cell, prefix)[0]


def _our_layout(params: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    """``(num_layers, directions)`` of Trunk ``params`` (directions: ``("fwd",)`` or
    ``("fwd", "bwd")``); ValueError for unexpected keys or missing layers."""
    unexpected = sorted(k for k in params if not _OUR_LAYER.match(k))
    if unexpected:
        raise ValueError(f"unexpected params keys {unexpected}; expected layer_{{k}}_{{fwd|bwd}}")
    layers = {(int(m.group(1)), m.group(2)) for m in map(_OUR_LAYER.match, params)}
    if not layers:
        raise ValueError("params is empty; expected keys layer_{k}_{fwd|bwd}")
    num_layers = 1 + max(layer for layer, _ in layers)
    directions = ("fwd", "bwd") if any(d == "bwd" for _, d in layers) else ("fwd",)
    expected = {(layer, d) for layer in range(num_layers) for d in directions}
    if layers != expected:
        names = sorted(f"layer_{layer}_{d}" for layer, d in expected - layers)
        raise ValueError(f"missing params layers {names}")
    return num_layers, directions


def _to_torch_direction(
    params: Mapping[str, Any],
    layer: int,
    direction: str,
    *,
    num_directions: int,
    hidden: int,
    width: int,
    why: str,
    prefix: str,
) -> dict[str, np.ndarray]:
    """The PyTorch state dict entries of ``params["layer_{layer}_{direction}"]``, its keys
    and shapes checked (``width = G*H``) and its weights transposed."""
    name = f"layer_{layer}_{direction}"
    entry = params[name]
    if set(entry) != set(_NAMES.values()):
        raise ValueError(
            f"params[{name!r}] has keys {sorted(entry)}, expected {sorted(_NAMES.values())}"
        )
    suffix = "_reverse" if direction == "bwd" else ""
    w_ih = np.asarray(entry["w_ih"])
    layer_in = w_ih.shape[0] if layer == 0 and w_ih.ndim == 2 else hidden * num_directions
    shapes = {
        "w_ih": (layer_in, width),
        "w_hh": (hidden, width),
        "b_ih": (width,),
        "b_hh": (width,),
    }
    out: dict[str, np.ndarray] = {}
    for stem, ours in _NAMES.items():
        value = np.asarray(entry[ours])
        _check_shape(f"{name}/{ours}", value.shape, shapes[ours], why)
        out[f"{prefix}{stem}_l{layer}{suffix}"] = (
            np.ascontiguousarray(value.T) if value.ndim == 2 else value
        )
    return out


def trunk_params_to_torch(
    params: Mapping[str, Any], *, cell: str, prefix: str = ""
) -> dict[str, np.ndarray]:
    """The inverse of :func:`trunk_params_from_torch`: a state dict PyTorch can load.

    Load it with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``
    into ``nn.LSTM``/``nn.GRU``/``nn.RNN`` built with the matching sizes and ``bias=True``
    (biases are always written, zeros included). bfloat16 arrays come back as ml_dtypes
    bfloat16, which ``torch.from_numpy`` refuses: cast them to float32 first.

    Args:
      params: the Trunk ``params`` collection (``{"layer_{k}_{fwd|bwd}": {"w_ih": [I, G*H],
        "w_hh": [H, G*H], "b_ih": [G*H], "b_hh": [G*H]}}``), or ``{"params": that}``.
      cell: ``lstm``, ``gru`` or ``rnn``.
      prefix: prepended to every key.
    Returns:
      ``{prefix + "weight_ih_l{k}[_reverse]": [G*H, I], "weight_hh_l{k}[_reverse]": [G*H, H],
      "bias_ih_l{k}[_reverse]": [G*H], "bias_hh_l{k}[_reverse]": [G*H]}`` as numpy arrays.
    Raises:
      ValueError: unknown cell, unexpected or missing layers/parameters, or inconsistent shapes.
    """
    num_gates = get_cell(cell, among=CLASSIC_CELLS).num_gates
    if set(params) == {"params"}:
        params = params["params"]
    num_layers, directions = _our_layout(params)
    layer0 = params["layer_0_fwd"]
    if "w_hh" not in layer0 or np.ndim(layer0["w_hh"]) != 2:
        raise ValueError("params['layer_0_fwd']['w_hh'] must be a 2-D [H, G*H] array")
    hidden = np.shape(layer0["w_hh"])[0]
    why = f"cell={cell!r} has G={num_gates} gates, H={hidden}"
    out: dict[str, np.ndarray] = {}
    for layer in range(num_layers):
        for direction in directions:
            out.update(
                _to_torch_direction(
                    params,
                    layer,
                    direction,
                    num_directions=len(directions),
                    hidden=hidden,
                    width=num_gates * hidden,
                    why=why,
                    prefix=prefix,
                )
            )
    return out
