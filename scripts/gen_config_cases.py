"""How transformers reads config.json spellings the model fixtures do not use (the Hub's older
files, keys left out, keys that disagree): each case edits a fixture's config.json
(tests/ref/models/M/config.json, written by gen_model_fixtures.py), loads it with AutoConfig, and
records what the model will run with, so that tests/lm/test_models.cpp can check that our reader
(lm/llama.cpp) agrees.

    python3 scripts/gen_config_cases.py [--out tests/ref/models/config_cases.json]

Each case: {"name", "model", "set": {key: value} (null: the key written as null), "erase": [keys],
"windows": [per block: the attention window, 0 = global], "rope": {"type", "theta", "factor",
"original_positions"}, "biases": {"qkv", "out", "mlp"}} where windows are what the HF model masks
with (layer_types and sliding_window; Mistral's MistralForCausalLM slides every block when
sliding_window is set; LlamaModel never slides), rope is config.rope_parameters as the model runs
it (read after AutoModelForCausalLM.from_config built the model: building it standardises the
parameters again, and a top-level original_max_position_embeddings then wins over the dict's), and
biases says which of block 0's q_proj, o_proj and MLP gate_proj the built model has.
Needs transformers (the installed version is recorded in the file).
"""
import argparse
import json
import os
import tempfile

import transformers
from transformers import AutoConfig, AutoModelForCausalLM

CASES = [
    # rope: rope_scaling wins over rope_parameters (convert_rope_params_to_dict)
    ("rope_scaling_beats_rope_parameters", "llama",
     {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
      "rope_scaling": {"rope_type": "linear", "factor": 4.0}}, []),
    # the Hub's older spelling: rope_scaling with "type" and a top-level rope_theta
    ("hub_rope_scaling_and_rope_theta", "llama",
     {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 500000.0}, ["rope_parameters"]),
    # llama3 without original_max_position_embeddings: max_position_embeddings stands in
    ("llama3_without_original_positions", "llama",
     {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "rope_theta": 1000.0}}, []),
    # a top-level original_max_position_embeddings beside the rope dict's, and alone
    ("llama3_top_level_original_positions", "llama", {"original_max_position_embeddings": 40}, []),
    ("llama3_original_positions_only_at_top_level", "llama",
     {"original_max_position_embeddings": 40,
      "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "rope_theta": 1000.0}}, []),
    # a null top-level rope_theta beside rope_parameters' own
    ("null_rope_theta_beside_rope_parameters", "llama", {"rope_theta": None}, []),
    # Mistral: sliding_window left out is MistralConfig's 4096; null turns it off
    ("mistral_without_sliding_window", "mistral", {}, ["sliding_window"]),
    ("mistral_null_sliding_window", "mistral", {"sliding_window": None}, []),
    # Qwen 2: max_window_layers left out is 28; 0 slides every block; sliding_window left out is 4096
    ("qwen2_without_max_window_layers", "qwen2", {}, ["max_window_layers", "layer_types"]),
    ("qwen2_max_window_layers_0", "qwen2", {"max_window_layers": 0}, ["layer_types"]),
    ("qwen2_without_sliding_window", "qwen2", {}, ["sliding_window", "layer_types"]),
    ("qwen2_use_sliding_window_false", "qwen2", {"use_sliding_window": False}, ["layer_types"]),
    ("qwen2_null_sliding_window", "qwen2", {"sliding_window": None}, ["layer_types"]),
    # Gemma 2: no layer_types (even blocks slide), sliding_window left out is 4096
    ("gemma2_without_sliding_window", "gemma2", {}, ["sliding_window", "layer_types"]),
    # layer_types' older name "attention" is full_attention (PreTrainedConfig maps it)
    ("gemma2_layer_types_older_attention_name", "gemma2",
     {"layer_types": ["sliding_attention", "attention", "sliding_attention", "attention"]}, []),
    # LlamaModel has no sliding-window attention, whatever layer_types and sliding_window say
    ("llama_layer_types_do_not_slide", "llama",
     {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}, []),
    # which classes read attention_bias / mlp_bias (Llama both, Gemma 2 attention_bias, Mistral and Qwen 2
    # neither: Qwen 2 always has q, k, v biases)
    ("llama_biases", "llama", {"attention_bias": True, "mlp_bias": True}, []),
    ("mistral_ignores_bias_keys", "mistral", {"attention_bias": True, "mlp_bias": True}, []),
    # a mistral config with layer_types: AutoConfig reads it as Ministral, whose blocks follow layer_types
    ("mistral_layer_types_read_as_ministral", "mistral",
     {"layer_types": ["full_attention", "sliding_attention", "full_attention"]}, []),
    ("qwen2_ignores_bias_keys", "qwen2", {"attention_bias": True, "mlp_bias": True}, ["layer_types"]),
    ("gemma2_attention_bias_only", "gemma2", {"attention_bias": True, "mlp_bias": True}, []),
]


def windows_of(built):
    """The windows of the model transformers built, by its class: LlamaModel never slides, MistralModel
    slides every block when sliding_window is set; the others (Qwen 2, Gemma 2, and Ministral, which
    AutoConfig makes of a mistral config that has layer_types) follow layer_types."""
    config = built.config
    layers = config.num_hidden_layers
    window = getattr(config, "sliding_window", None) or 0
    kind = type(built.model).__name__
    if kind == "LlamaModel":
        return [0] * layers
    if kind == "MistralModel":
        return [window] * layers
    types = getattr(config, "layer_types", None)
    if types is None:
        return [0] * layers
    return [window if t == "sliding_attention" else 0 for t in types]


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(repo, "tests", "ref", "models", "config_cases.json"))
    args = parser.parse_args()
    out = []
    for name, model, set_keys, erase in CASES:
        with open(os.path.join(repo, "tests", "ref", "models", model, "config.json")) as f:
            config = json.load(f)
        for key in erase:
            config.pop(key, None)
        config.update(set_keys)
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "config.json"), "w") as f:
                json.dump(config, f)
            hf = AutoConfig.from_pretrained(folder)
        built = AutoModelForCausalLM.from_config(hf)
        rope = built.config.rope_parameters
        block = built.model.layers[0]
        case = {"name": name, "model": model, "set": set_keys, "erase": erase, "windows": windows_of(built),
                "rope": {"type": rope.get("rope_type", "default"), "theta": rope["rope_theta"],
                         "factor": rope.get("factor", 0.0),
                         "original_positions": rope.get("original_max_position_embeddings", 0)},
                "biases": {"qkv": block.self_attn.q_proj.bias is not None,
                           "out": block.self_attn.o_proj.bias is not None,
                           "mlp": block.mlp.gate_proj.bias is not None}}
        print(name, case["windows"], case["rope"])
        out.append(case)
    with open(args.out, "w") as f:
        json.dump({"generator": "scripts/gen_config_cases.py", "transformers": transformers.__version__,
                   "cases": out}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
