"""Reference fixtures for the decoder model's families other than GPT-Neo (lm/decoder_model.h,
docs/models.md): tiny random-init Hugging Face models saved with save_pretrained, and what
transformers computes on them, hook point by hook point.

    python3 scripts/gen_model_fixtures.py [--out tests/ref/models] [--only NAME ...]

Writes, for each model M below, tests/ref/models/M/ (config.json, model.safetensors, as
save_pretrained writes them) and tests/ref/models/M_expected.safetensors:
    seq{s}.input_ids                     I64 [T]       (seq0: 40 tokens, seq1: 64 = every position)
    seq0.hook.<hook name>                F32 [T, width] every TransformerLens hook point we read, per
                                         block: blocks.L.hook_resid_pre, attn.hook_z ([T, H*hd], heads
                                         side by side), hook_attn_out, hook_resid_mid (sequential
                                         blocks only), ln2.hook_normalized, hook_mlp_out, hook_resid_post
    seq{s}.hidden.{k}                    F32 [T, d]    output_hidden_states=True, k = 0..N
    seq{s}.logits                        F32 [T, V]
    gen.prompt, gen.greedy               I64           model.generate(do_sample=False), 24 new tokens
    gen.min_margin                       F64           the smallest top-1 minus top-2 logit over those steps
Models (vocabulary 300, 64 positions):
    gpt2          GPT2LMHeadModel, d 32, 4 blocks of 4 heads, gelu_new, tied
    gpt2_scaled   GPT2LMHeadModel, d 32, 3 blocks, scale_attn_by_inverse_layer_idx, n_inner 48, the erf
                  GELU, layer_norm_epsilon 1e-3, untied (lm_head.weight in the file)
    pythia        GPTNeoXForCausalLM as Pythia: d 32, 4 blocks of 2 heads (hd 16), rotary on 25% of each
                  head (4 dims), base 10000, use_parallel_residual, the erf GELU, untied
    neox_seq      GPTNeoXForCausalLM, d 32, 3 blocks, use_parallel_residual false, rotary on every dim,
                  base 500, no attention biases, gelu_new, untied
    llama         LlamaForCausalLM as Llama 3.2: d 32, 3 blocks of 4 heads sharing 2 key/value heads (hd 8),
                  SwiGLU of 48, RMSNorm eps 1e-5, rope_theta 1000 with rope_scaling llama3 (factor 8,
                  original context 48: wavelengths 6.3, 35, 199 and 1117 take every branch of its rule), tied
    llama_bias    LlamaForCausalLM with attention_bias and mlp_bias, head_dim 16 (4 heads: 64 wide, not d),
                  rope_scaling linear (factor 2), no key/value sharing, untied
    qwen2         Qwen2ForCausalLM: q/k/v biases (none on o_proj), 4 heads over 2 key/value heads, tied,
                  use_sliding_window with max_window_layers 1 (blocks 1.. attend to 16 keys)
    mistral       MistralForCausalLM: 4 heads over one key/value head, sliding_window 16, untied
    gemma2        Gemma2ForCausalLM: embeddings times sqrt(d), RMSNorm (1 + w) before and after attention
                  and MLP, GeGLU (gelu_pytorch_tanh), 4 heads over 2 key/value heads of 16 (64 wide),
                  query_pre_attn_scalar 24, attention soft-capping 5 and final soft-capping 10 (small, so
                  that tanh bends the values), sliding window 16 on even blocks, 4 blocks, tied, vocabulary
                  512 with a Gemma-style SentencePiece BPE tokenizer (scripts/gen_sp_tokenizer_fixtures.py's
                  pieces, the first 512 ids)
    gemma2_bf16   the gemma2 model's weights rounded to bfloat16 and saved so (torch_dtype bfloat16);
                  the expected values are transformers' in float32 from that file
The gpt2 and pythia folders also get a tokenizer of VOCAB ids trained with `tokenizers` on the
licences and Vim manual (scripts/gen_tokenizer_fixture.py's text), set up as each family's is: GPT-2's
(ByteLevel, <|endoftext|> last, tokenizer_config.json naming it as BOS and EOS) and Pythia's (NFC,
ByteLevel, <|endoftext|> and <|padding|> first, runs of 2 and 4 spaces as normalized added tokens), so
that the programs can run on them end to end (tests/experiments).
Hook values come from PyTorch hooks on Hugging Face's modules: resid_pre = a block's input; hook_z =
the input of the attention's output projection (c_proj / dense / o_proj); hook_attn_out = the attention
module's output (Gemma 2: after its post-attention norm, as TransformerLens hooks it); hook_resid_mid =
the MLP norm's input (sequential blocks); ln2.hook_normalized = that norm's input x as TransformerLens's
LayerNorm / RMSNorm hooks it, (x - mean) / sqrt(var + eps) or x / sqrt(mean(x^2) + eps), before the
weight (and bias); hook_mlp_out = the MLP's output (Gemma 2: after its post-feedforward norm);
hook_resid_post = the block's output.
Weights are drawn so that the model is far from uniform (embeddings N(0, 1), Linear weights
N(0, 1/fan_in), biases N(0, 0.1^2), LayerNorm weights 1 + N(0, 0.3^2), biases N(0, 0.2^2)), so that
every part matters and greedy decoding has clear margins (gen.min_margin; the script refuses < 1e-3).
"""
import argparse
import os
import shutil

import numpy as np
import torch
import transformers
from transformers import (Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig,
                          GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

from fixture_io import FixtureWriter

VOCAB, POSITIONS = 300, 64
GEMMA_VOCAB = 512  # 4 special tokens, 256 byte pieces, 250 trained pieces, 2 turn markers
WINDOW = 16
SEQ_LENGTHS = [40, 64]
PROMPT, NEW_TOKENS = 8, 24

MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=32, n_layer=4, n_head=4, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)),
    "gpt2_scaled": lambda: GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=32, n_layer=3, n_head=4, n_inner=48,
        activation_function="gelu", layer_norm_epsilon=1e-3, scale_attn_by_inverse_layer_idx=True,
        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
        eos_token_id=0)),
    "pythia": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=96,
        max_position_embeddings=POSITIONS, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
        hidden_act="gelu", tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    "neox_seq": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=POSITIONS, rotary_pct=1.0, rotary_emb_base=500, use_parallel_residual=False,
        attention_bias=False, hidden_act="gelu_new", tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=POSITIONS, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 1000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 48},
        bos_token_id=0, eos_token_id=0)),
    "llama_bias": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16, max_position_embeddings=POSITIONS, rms_norm_eps=1e-6,
        attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        bos_token_id=0, eos_token_id=0)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=POSITIONS, rms_norm_eps=1e-6, tie_word_embeddings=True,
        use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, bos_token_id=0, eos_token_id=0)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=POSITIONS, rms_norm_eps=1e-5, sliding_window=WINDOW,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=1, eos_token_id=2)),
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(
        vocab_size=GEMMA_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=POSITIONS, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24, sliding_window=WINDOW,
        attn_logit_softcapping=5.0, final_logit_softcapping=10.0, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=0, eos_token_id=1,
        bos_token_id=2)),
}
PART2 = ("llama", "llama_bias", "qwen2", "mistral", "gemma2")


def randomize(model, seed):
    """Redraws every parameter (see the module docstring); Conv1D stores [in, out]. RMSNorm weights are
    1 + N(0, 0.3^2), or N(0, 0.3^2) for Gemma 2, whose norms multiply by 1 + w."""
    gen = torch.Generator().manual_seed(seed)
    is_gpt2 = isinstance(model, GPT2LMHeadModel)
    if is_part2(model):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    one = 0.0 if isinstance(model, Gemma2ForCausalLM) else 1.0
                    p.copy_(one + torch.randn(p.shape, generator=gen) * 0.3)
                elif name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
                elif "embed_tokens" in name:
                    p.copy_(torch.randn(p.shape, generator=gen))
                else:  # Linear [out, in], lm_head [V, d]
                    p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))
        return
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "layernorm" in name or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) +
                        torch.randn(p.shape, generator=gen) * (0.3 if name.endswith("weight") else 0.2))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "wte" in name or "wpe" in name or "embed_in" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # Linear [out, in], Conv1D [in, out], lm_head [V, d]
                fan_in = p.shape[0] if (is_gpt2 and "lm_head" not in name) else p.shape[1]
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))


def is_part2(model):
    return isinstance(model, (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, Gemma2ForCausalLM))


def blocks_of(model):
    if isinstance(model, Gemma2ForCausalLM):  # TransformerLens hooks attn_out and mlp_out after the post-norms
        return [dict(block=b, attn=b.post_attention_layernorm, out_proj=b.self_attn.o_proj,
                     norm2=b.pre_feedforward_layernorm, mlp=b.post_feedforward_layernorm) for b in model.model.layers]
    if is_part2(model):
        return [dict(block=b, attn=b.self_attn, out_proj=b.self_attn.o_proj, norm2=b.post_attention_layernorm,
                     mlp=b.mlp) for b in model.model.layers]
    if isinstance(model, GPT2LMHeadModel):
        return [dict(block=b, attn=b.attn, out_proj=b.attn.c_proj, norm2=b.ln_2, mlp=b.mlp)
                for b in model.transformer.h]
    return [dict(block=b, attn=b.attention, out_proj=b.attention.dense, norm2=b.post_attention_layernorm, mlp=b.mlp)
            for b in model.gpt_neox.layers]


def hooked_forward(model, ids):
    """Runs the model once with hooks on every block; returns {hook name: [T, width]}, hidden states, logits."""
    cfg = model.config
    parallel = getattr(cfg, "use_parallel_residual", False)
    captured, handles = {}, []

    def first(x):
        return x[0] if isinstance(x, tuple) else x

    def pre(name, transform=None):
        def fn(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            captured[name] = (transform(module, x) if transform else x).detach()[0].clone()
        return fn

    def post(name):
        def fn(module, args, output):
            captured[name] = first(output).detach()[0].clone()
        return fn

    def normalized(module, x):  # TransformerLens's LayerNorm: hook_normalized before weight and bias
        if is_part2(model):  # RMSNorm: x / sqrt(mean(x^2) + eps), as HF computes it (x * rsqrt(...))
            eps = module.eps if hasattr(module, "eps") else module.variance_epsilon
            x = x.float()
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
        return x / scale

    for i, b in enumerate(blocks_of(model)):
        p = f"blocks.{i}."
        handles.append(b["block"].register_forward_pre_hook(pre(p + "hook_resid_pre"), with_kwargs=True))
        handles.append(b["out_proj"].register_forward_pre_hook(pre(p + "attn.hook_z"), with_kwargs=True))
        handles.append(b["attn"].register_forward_hook(post(p + "hook_attn_out")))
        if not parallel:
            handles.append(b["norm2"].register_forward_pre_hook(pre(p + "hook_resid_mid"), with_kwargs=True))
        handles.append(b["norm2"].register_forward_pre_hook(pre(p + "ln2.hook_normalized", normalized),
                                                            with_kwargs=True))
        handles.append(b["mlp"].register_forward_hook(post(p + "hook_mlp_out")))
        handles.append(b["block"].register_forward_hook(post(p + "hook_resid_post")))
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    for h in handles:
        h.remove()
    hidden = [h[0].clone() for h in out.hidden_states]
    # Checks of the hooks' meaning that do not depend on our code.
    n = len(blocks_of(model))
    for i in range(n):
        p = f"blocks.{i}."
        pre_ = captured[p + "hook_resid_pre"]
        assert torch.equal(pre_, hidden[i]), f"resid_pre {i} is hidden_states[{i}]"
        total = (pre_ + captured[p + "hook_attn_out"] + captured[p + "hook_mlp_out"])
        assert torch.allclose(total, captured[p + "hook_resid_post"], atol=1e-5), "resid_post = pre + attn + mlp"
        if not parallel:
            assert torch.allclose(pre_ + captured[p + "hook_attn_out"], captured[p + "hook_resid_mid"], atol=1e-6)
        if i + 1 < n:
            assert torch.equal(captured[p + "hook_resid_post"], hidden[i + 1])
    # hidden_states[N] is the final norm's output, not the last block's.
    if is_part2(model):
        final = model.model.norm
    else:
        final = model.transformer.ln_f if isinstance(model, GPT2LMHeadModel) else model.gpt_neox.final_layer_norm
    with torch.no_grad():
        assert torch.allclose(final(captured[f"blocks.{n - 1}.hook_resid_post"]), hidden[n], atol=1e-6)
    return captured, hidden, out.logits[0]


def greedy(model, prompt):
    """HF's greedy generate and the smallest top-2 margin over its steps."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    margins = []
    for step in out.logits:
        top = torch.topk(step[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    return out.sequences[0, len(prompt):].tolist(), min(margins)


def write_tokenizer(name, folder):
    """A VOCAB-id byte-level BPE in the family's set-up (see the module docstring)."""
    import json
    import sys
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gen_tokenizer_fixture import training_files
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    specials = ["<|endoftext|>"] if name == "gpt2" else ["<|endoftext|>", "<|padding|>"]
    extra = 0 if name == "gpt2" else 2
    if name != "gpt2":
        tok.normalizer = normalizers.NFC()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - extra - (len(specials) if name == "gpt2" else 0), min_frequency=2,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[] if name == "gpt2" else specials)
    tok.train(training_files(), trainer)
    if name == "gpt2":
        tok.add_special_tokens(specials)
    else:
        tok.add_tokens([AddedToken(" " * n, normalized=True, special=False) for n in (4, 2)])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}, f, indent=2)


def write_gemma_tokenizer(folder):
    """A Gemma-style SentencePiece BPE of GEMMA_VOCAB ids (scripts/gen_sp_tokenizer_fixtures.py)."""
    import json
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gen_sp_tokenizer_fixtures import spec_for, train
    pieces, merges = train(GEMMA_VOCAB - 4 - 256 - 2 + 1)
    spec, config = spec_for("gemma", pieces, merges)
    assert len(spec["model"]["vocab"]) == GEMMA_VOCAB, len(spec["model"]["vocab"])
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False, indent=1)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def save_folder(model, folder, tokenizer_of=None):
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in os.listdir(folder):  # keep config.json and model.safetensors (and the tokenizer below)
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(folder, extra))
    if tokenizer_of in ("gpt2", "pythia"):
        write_tokenizer(tokenizer_of, folder)
    elif tokenizer_of == "gemma2":
        write_gemma_tokenizer(folder)


def write_expected(name, model_class, folder, out_dir, seed, vocab):
    # Reload as a user would (float32), to measure what the saved files give.
    model = model_class.from_pretrained(folder, dtype=torch.float32).eval()
    rng = np.random.RandomState(seed)
    w = FixtureWriter()
    for s, length in enumerate(SEQ_LENGTHS):
        ids = rng.randint(0, vocab, size=length).tolist()
        captured, hidden, logits = hooked_forward(model, ids)
        w.put(f"seq{s}.input_ids", np.asarray(ids, dtype=np.int64))
        if s == 0:
            for hook, value in sorted(captured.items()):
                w.put(f"seq0.hook.{hook}", value.float())
        for k, h in enumerate(hidden):
            w.put(f"seq{s}.hidden.{k}", h.float())
        w.put(f"seq{s}.logits", logits.float())
        if s == 0:
            prompt = ids[:PROMPT]
    generated, margin = greedy(model, prompt)
    if margin < 1e-3:
        raise SystemExit(f"{name}: greedy margins too small ({margin}); pick another seed")
    w.put("gen.prompt", np.asarray(prompt, dtype=np.int64))
    w.put("gen.greedy", np.asarray(generated, dtype=np.int64))
    w.put("gen.min_margin", float(margin))
    w.put_text("torch", torch.__version__)
    w.put_text("transformers", transformers.__version__)
    w.put_text("model", name)
    path = os.path.join(out_dir, f"{name}_expected.safetensors")
    w.save(path)
    print(f"{name}: {folder} ({os.path.getsize(os.path.join(folder, 'model.safetensors'))} bytes), {path} "
          f"({os.path.getsize(path)} bytes), greedy margin {margin:.3g}")


def write_model(name, out_dir, seed):
    torch.manual_seed(seed)
    model = MODELS[name]().eval()
    randomize(model, seed)
    folder = os.path.join(out_dir, name)
    save_folder(model, folder, name)
    vocab = model.config.vocab_size
    write_expected(name, type(model), folder, out_dir, seed, vocab)
    if name == "gemma2":  # the same weights stored as bfloat16
        bf16 = os.path.join(out_dir, "gemma2_bf16")
        save_folder(model.to(torch.bfloat16), bf16)
        write_expected("gemma2_bf16", type(model), bf16, out_dir, seed, vocab)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "ref", "models"))
    ap.add_argument("--only", nargs="*", choices=list(MODELS), help="write only these models (default: all)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for seed, name in enumerate(MODELS):  # seeds by position: adding models keeps the others' files
        if not args.only or name in args.only:
            write_model(name, args.out, 1000 + seed)


if __name__ == "__main__":
    main()
