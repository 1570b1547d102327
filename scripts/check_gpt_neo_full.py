"""Compares a GPT-Neo output file written by the C++ model with Hugging Face transformers, run here.

    python3 scripts/check_gpt_neo_full.py OUT.safetensors                 # TinyStories-33M config,
                                                                          # hashed weights
    python3 scripts/check_gpt_neo_full.py OUT.safetensors --config DIR_OR_CONFIG_JSON   # another config,
                                                                          # hashed weights
    python3 scripts/check_gpt_neo_full.py OUT.safetensors --model-dir DIR # a real HF model folder
                                                                          # (e.g. TinyStories-33M's)
    options: --rtol 1e-4  --threads 2  --save-reference REF.safetensors

OUT.safetensors uses the names of the fixtures (docs/gpt_neo.md, "Fixtures"); everything optional
except the input ids:

    seq{s}.input_ids        I64 or I32 [T]        the tokens (one sequence per s, batch 1, no padding)
    seq{s}.hidden.{k}       F32 [R, d]            hidden_states[k]; R == T (every position) or
                                                  R == len(seq{s}.positions) (those rows)
    seq{s}.hidden.{k}.full  F32 [T, d]            hidden_states[k] at every position
    seq{s}.positions        I64 [R]
    seq{s}.logits           F32 [R', vocab]       R' == T or len(seq{s}.logit_positions)
    seq{s}.logit_positions  I64 [R']

(F16/BF16 outputs are accepted too and widened.) For every output tensor it prints the max absolute
error, that error relative to the largest |HF value| of the tensor, and the RMS error relative to
the RMS of the HF values; a tensor fails when max abs error > rtol * max |HF value|. Exit status 1 if
any tensor fails or the file has no comparable outputs, 2 on a usage error. Needs torch, transformers,
safetensors, numpy; HF runs in float32, eval mode, torch.no_grad().

Self-test (the HF half): run it on the fixture itself; every error must be 0 (or ~1e-7 relative when
the thread count differs from the generator's single thread):

    python3 scripts/check_gpt_neo_full.py tests/ref/gpt_neo/tinystories33m_hashed_expected.safetensors
    python3 scripts/check_gpt_neo_full.py tests/ref/gpt_neo/tiny_expected.safetensors --model-dir tests/ref/gpt_neo/tiny
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hashed_weights as hw  # noqa: E402

DEFAULT_CONFIG = os.path.join(HERE, "..", "tests", "ref", "gpt_neo", "tinystories33m_hashed", "config.json")


def load_outputs(path):
    from safetensors import safe_open

    out = {}
    with safe_open(path, "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            out[k] = t.float().numpy() if t.is_floating_point() else t.numpy()
    return out


def build_model(args):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    if args.model_dir:
        model = GPTNeoForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        source = f"weights from {args.model_dir}"
    else:
        cfg_path = args.config if args.config.endswith(".json") else os.path.join(args.config, "config.json")
        with open(cfg_path) as fh:
            cfg = json.load(fh)
        model = GPTNeoForCausalLM(GPTNeoConfig.from_dict(cfg))
        hw.fill_model(model)
        source = f"hashed weights (scripts/hashed_weights.py), config {os.path.relpath(cfg_path)}"
    return model.float().eval(), source


def rows_for(outputs, name, s, array, T, kind):
    """The HF rows an output tensor holds, or raises ValueError."""
    if name.endswith(".full"):
        if array.shape[0] != T:
            raise ValueError(f"{name}: {array.shape[0]} rows, the sequence has {T}")
        return np.arange(T)
    key = f"seq{s}.positions" if kind == "hidden" else f"seq{s}.logit_positions"
    if key in outputs:
        rows = outputs[key].astype(np.int64)
        if array.shape[0] != len(rows):
            raise ValueError(f"{name}: {array.shape[0]} rows but {key} lists {len(rows)}")
        if rows.min() < 0 or rows.max() >= T:
            raise ValueError(f"{key}: a position outside 0..{T - 1}")
        return rows
    if array.shape[0] != T:
        raise ValueError(f"{name}: {array.shape[0]} rows, the sequence has {T} and there is no {key}")
    return np.arange(T)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outputs", help="the C++ model's output file (safetensors)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--model-dir", help="a Hugging Face GPT-Neo folder (config.json + weights)")
    group.add_argument("--config", default=DEFAULT_CONFIG,
                       help="config.json (or its folder) to build with hashed weights (default: TinyStories-33M's)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="fail when max abs error > rtol * max |HF value|")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-reference", help="also write HF's outputs, same names and rows, to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    outputs = load_outputs(args.outputs)
    seqs = sorted(int(m.group(1)) for k in outputs if (m := re.fullmatch(r"seq(\d+)\.input_ids", k)))
    if not seqs:
        print(f"{args.outputs}: no seq<N>.input_ids tensor", file=sys.stderr)
        return 2
    model, source = build_model(args)
    import transformers

    print(f"HF transformers {transformers.__version__}, torch {torch.__version__}, {args.threads} threads; {source}")
    print(f"{'tensor':26s} {'shape':>14s} {'max|HF|':>10s} {'max abs err':>12s} {'rel to max':>11s} "
          f"{'rms rel':>9s}  verdict")
    failures, compared, reference = 0, 0, {}
    pattern = re.compile(r"seq(\d+)\.(hidden\.(\d+)(\.full)?|logits)")
    for s in seqs:
        ids = outputs[f"seq{s}.input_ids"].astype(np.int64).reshape(-1)
        T = len(ids)
        with torch.no_grad():
            out = model(torch.from_numpy(ids).unsqueeze(0), output_hidden_states=True)
        hidden = [h[0].numpy() for h in out.hidden_states]
        logits = out.logits[0].numpy()
        reference[f"seq{s}.input_ids"] = ids
        names = [k for k in outputs if (m := pattern.fullmatch(k)) and int(m.group(1)) == s]
        # order: hidden.0, hidden.1, ..., then logits (so the first bad layer shows first)
        names.sort(key=lambda k: (k.endswith("logits"), int(pattern.fullmatch(k).group(3) or 0), k))
        for name in names:
            m = pattern.fullmatch(name)
            array = outputs[name]
            if m.group(2) == "logits":
                kind, full = "logits", logits
            else:
                k = int(m.group(3))
                if k >= len(hidden):
                    print(f"{name}: the model has only {len(hidden)} hidden_states entries")
                    failures += 1
                    continue
                kind, full = "hidden", hidden[k]
            try:
                rows = rows_for(outputs, name, s, array, T, kind)
            except ValueError as e:
                print(e)
                failures += 1
                continue
            expect = full[rows]
            if array.shape != expect.shape:
                print(f"{name}: shape {list(array.shape)}, HF gives {list(expect.shape)}")
                failures += 1
                continue
            reference[name] = np.ascontiguousarray(expect)
            for key in (f"seq{s}.positions", f"seq{s}.logit_positions"):
                if key in outputs:
                    reference[key] = outputs[key].astype(np.int64)
            err = np.abs(array.astype(np.float64) - expect)
            scale = float(np.abs(expect).max())
            max_err = float(err.max()) if np.isfinite(array).all() else float("inf")
            rms_rel = float(np.sqrt((err ** 2).mean()) / max(np.sqrt((expect.astype(np.float64) ** 2).mean()), 1e-30))
            ok = max_err <= args.rtol * scale
            failures += not ok
            compared += 1
            print(f"{name:26s} {str(list(array.shape)):>14s} {scale:10.4g} {max_err:12.3e} "
                  f"{max_err / max(scale, 1e-30):11.3e} {rms_rel:9.2e}  {'ok' if ok else 'FAIL'}")
    if args.save_reference:
        from safetensors.numpy import save_file

        save_file(reference, args.save_reference, metadata={"source": source})
        print(f"wrote HF's outputs to {args.save_reference}")
    if compared == 0:
        print("no output tensors to compare")
        return 1
    print(f"{compared} tensors compared, {failures} failed (rtol {args.rtol:g} of each tensor's max |HF value|)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
