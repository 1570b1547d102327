"""An independent numpy reference of GPT-Neo's forward pass, written from docs/gpt_neo.md (not from
transformers), plus the config.json checks the C++ loader is meant to make. Used by
scripts/verify_gpt_neo_facts.py and scripts/gen_gpt_neo_fixtures.py to show, by experiment, that
the description in docs/gpt_neo.md reproduces Hugging Face's GPTNeoForCausalLM. numpy only.

forward() has switches for the plausible misreadings (scaled scores, a window one wider or
narrower, the last hidden state without ln_f) so the verification can show each one is wrong.
"""
import json
import math

import numpy as np

SUPPORTED_ACTIVATION = "gelu_new"
ATTENTION_KINDS = ("global", "local")


class ConfigError(ValueError):
    pass


def parse_config(cfg):
    """config.json (a dict or a path) -> dict of what the forward pass needs; raises ConfigError on
    anything the C++ loader should refuse (docs/gpt_neo.md, "config.json")."""
    if not isinstance(cfg, dict):
        with open(cfg) as f:
            cfg = json.load(f)

    def need(key, kind):
        if key not in cfg or cfg[key] is None:
            raise ConfigError(f"config.json: missing {key!r}")
        value = cfg[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"config.json: {key!r} must be an integer, got {value!r}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"config.json: {key!r} must be a number, got {value!r}")
        return value

    if cfg.get("model_type") != "gpt_neo":
        raise ConfigError(f"config.json: model_type must be 'gpt_neo', got {cfg.get('model_type')!r}")
    act = cfg.get("activation_function", "gelu_new")
    if act != SUPPORTED_ACTIVATION:
        raise ConfigError(f"config.json: activation_function {act!r} is not supported (only 'gelu_new')")
    cfg = dict(cfg)
    for alias, key in (("num_attention_heads", "num_heads"), ("num_hidden_layers", "num_layers")):
        if alias in cfg:  # HF's GPTNeoConfig.attribute_map
            if key in cfg and cfg[key] != cfg[alias]:
                raise ConfigError(f"config.json: {alias!r} and {key!r} disagree")
            cfg[key] = cfg[alias]
    cfg.setdefault("window_size", 256)  # HF's defaults for the optional keys
    p = {k: need(k, int) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                                   "max_position_embeddings", "window_size")}
    for k, v in p.items():
        if v <= 0:
            raise ConfigError(f"config.json: {k!r} must be positive, got {v}")
    if p["hidden_size"] % p["num_heads"]:
        raise ConfigError("config.json: hidden_size must be divisible by num_heads")
    inter = cfg.get("intermediate_size")
    if inter is None:
        inter = 4 * p["hidden_size"]
    elif isinstance(inter, bool) or not isinstance(inter, int) or inter <= 0:
        raise ConfigError(f"config.json: intermediate_size must be null or a positive integer, got {inter!r}")
    p["intermediate_size"] = inter
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConfigError(f"config.json: layer_norm_epsilon must be a positive number, got {eps!r}")
    p["layer_norm_epsilon"] = float(eps)
    types = cfg.get("attention_types")
    saved_layers = cfg.get("attention_layers")
    if types is None and saved_layers is None:
        raise ConfigError("config.json: neither 'attention_types' nor 'attention_layers'")
    layers = []
    try:
        for kinds, repeat in (types if types is not None else [[saved_layers, 1]]):
            if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
                raise ConfigError(f"config.json: bad repeat count {repeat!r} in attention_types")
            if isinstance(kinds, str):
                raise ConfigError(f"config.json: attention_types entry {kinds!r} is not a list of types")
            for _ in range(repeat):
                for kind in kinds:
                    if kind not in ATTENTION_KINDS:
                        raise ConfigError(f"config.json: attention type {kind!r} is not 'global' or 'local'")
                    layers.append(kind)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"config.json: attention_types is not [[[types...], count], ...]: {types!r}") from e
    if len(layers) != p["num_layers"]:
        raise ConfigError(f"config.json: the attention types give {len(layers)} layers, num_layers is {p['num_layers']}")
    if saved_layers is not None and list(saved_layers) != layers:
        # HF 5.24 would silently use attention_layers (configuration_utils.py line 500 runs after the expansion)
        raise ConfigError("config.json: attention_layers disagrees with attention_types")
    p["attention_layers"] = layers
    tie = cfg.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        raise ConfigError("config.json: tie_word_embeddings must be a boolean")
    p["tie_word_embeddings"] = tie
    return p


def parameter_shapes(p):
    """{safetensors name: shape} of every parameter GPTNeoForCausalLM saves (lm_head only if untied)."""
    d, f, v = p["hidden_size"], p["intermediate_size"], p["vocab_size"]
    shapes = {"transformer.wte.weight": (v, d), "transformer.wpe.weight": (p["max_position_embeddings"], d)}
    for i in range(p["num_layers"]):
        b = f"transformer.h.{i}."
        shapes.update({
            b + "ln_1.weight": (d,), b + "ln_1.bias": (d,),
            b + "attn.attention.k_proj.weight": (d, d),
            b + "attn.attention.v_proj.weight": (d, d),
            b + "attn.attention.q_proj.weight": (d, d),
            b + "attn.attention.out_proj.weight": (d, d), b + "attn.attention.out_proj.bias": (d,),
            b + "ln_2.weight": (d,), b + "ln_2.bias": (d,),
            b + "mlp.c_fc.weight": (f, d), b + "mlp.c_fc.bias": (f,),
            b + "mlp.c_proj.weight": (d, f), b + "mlp.c_proj.bias": (d,),
        })
    shapes["transformer.ln_f.weight"] = (d,)
    shapes["transformer.ln_f.bias"] = (d,)
    if not p["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def layer_norm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased (divide by d)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(weights, p, ids, *, dtype=np.float64, scale_scores=False, window_delta=0, last_hidden_raw=False,
            logit_rows=None):
    """hidden_states (list of num_layers + 1 arrays [T, d]) and logits [rows, vocab] for one sequence.

    weights: {name: array}; p: parse_config(); ids: 1-D token ids (0 <= id < vocab, T <= max positions).
    The switches are deliberate misreadings, for the verification only."""
    W = {k: np.asarray(v, dtype=dtype) for k, v in weights.items()}
    ids = np.asarray(ids, dtype=np.int64)
    T, d, H = len(ids), p["hidden_size"], p["num_heads"]
    hd = d // H
    eps = p["layer_norm_epsilon"]
    if T > p["max_position_embeddings"] or ids.min() < 0 or ids.max() >= p["vocab_size"]:
        raise ValueError("sequence too long or token id out of range")
    x = W["transformer.wte.weight"][ids] + W["transformer.wpe.weight"][:T]
    hidden = [x]
    i_idx = np.arange(T)[:, None]
    j_idx = np.arange(T)[None, :]
    for layer, kind in enumerate(p["attention_layers"]):
        b = f"transformer.h.{layer}."
        a = layer_norm(x, W[b + "ln_1.weight"], W[b + "ln_1.bias"], eps)
        q = (a @ W[b + "attn.attention.q_proj.weight"].T).reshape(T, H, hd).transpose(1, 0, 2)
        k = (a @ W[b + "attn.attention.k_proj.weight"].T).reshape(T, H, hd).transpose(1, 0, 2)
        v = (a @ W[b + "attn.attention.v_proj.weight"].T).reshape(T, H, hd).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1)  # [H, T, T]; NOT divided by sqrt(hd)
        if scale_scores:
            scores = scores / math.sqrt(hd)
        allowed = j_idx <= i_idx
        if kind == "local":
            allowed = allowed & (i_idx - j_idx < p["window_size"] + window_delta)
        scores = np.where(allowed[None], scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        o = (probs @ v).transpose(1, 0, 2).reshape(T, d)  # head h -> columns h*hd .. h*hd+hd-1
        x = x + (o @ W[b + "attn.attention.out_proj.weight"].T + W[b + "attn.attention.out_proj.bias"])
        m = layer_norm(x, W[b + "ln_2.weight"], W[b + "ln_2.bias"], eps)
        m = gelu_new(m @ W[b + "mlp.c_fc.weight"].T + W[b + "mlp.c_fc.bias"])
        x = x + (m @ W[b + "mlp.c_proj.weight"].T + W[b + "mlp.c_proj.bias"])
        hidden.append(x)
    final = layer_norm(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps)
    if not last_hidden_raw:
        hidden[-1] = final
    head = W["transformer.wte.weight"] if p["tie_word_embeddings"] else W["lm_head.weight"]
    rows = final if logit_rows is None else final[np.asarray(logit_rows)]
    return hidden, rows @ head.T
