#!/usr/bin/env python3
"""The cost model of a distributed run (docs/distributed.md §7), on paper: memory per rank, bytes
each rank hands to the collectives per step (as sae/arch and sae/arch/sae_step.cpp call them), the
bytes a ring algorithm sends, the predicted step time and where it stops scaling.

  python3 scripts/distributed_cost_model.py            the largest case (d 8192, F 16M, k 64,
                                                       128k-token batches, 64 H100s)
  python3 scripts/distributed_cost_model.py --check D F N K K_AUX S R STEPS
                                                       the payload a run of those sizes should count
                                                       (sae_train prints what it counted)

Every byte count follows the code: float32 tensors, TopK candidates as (float value, int32 index)
pairs, host sums as doubles/int64. Times are a model: no overlap of communication and computation.
"""
import sys

F32 = 4


def per_step_payload(D, F, N, k, k_aux, S, R, auxk=True, unit="topk"):
    """Bytes one rank hands over per training step, by collective, and the ring bytes it sends."""
    n = N // R               # this replica's tokens (the split is within one row)
    Fs = F // S              # this shard's latents
    calls = []               # (what, payload bytes, kind, group size)

    def add(what, payload, kind, group):
        if group > 1:
            calls.append((what, payload, kind, group))

    add("batch tokens over replicas", 8, "allreduce", R)
    if unit == "topk":
        add("TopK candidates n k (value, index)", n * k * 8, "allgather", S)
    add("x_hat partial sums n D", n * D * F32, "allreduce", S)
    add("step sums (rec, aux, tokens) over replicas", 24, "allreduce", R)
    add("step sums (l1, active, aux) over all", 24, "allreduce", S * R)
    if auxk:
        add("AuxK firing counts over replicas (floats)", Fs * F32, "allreduce", R)
        add("AuxK n_dead over shards", 8, "allreduce", S)
        add("AuxK candidates n k_aux (value, index)", n * k_aux * 8, "allgather", S)
        add("AuxK entries over all", 8, "allreduce", S * R)
        add("AuxK e_hat partial sums n D", n * D * F32, "allreduce", S)
        add("AuxK column means over replicas", D * F32, "allreduce", R)
        add("AuxK Z over replicas", 8, "allreduce", R)
    add("gradients over replicas (W_enc, W_dec, b_enc, b_dec)", (2 * D * Fs + Fs + D) * F32, "allreduce", R)
    add("firing counts over replicas (trainer)", Fs * F32, "allreduce", R)
    payload = sum(c[1] for c in calls)
    ring = 0.0
    for what, b, kind, g in calls:
        ring += 2 * (g - 1) / g * b if kind == "allreduce" else (g - 1) * b
    return calls, payload, ring


def gb(x):
    return x / 1e9


def largest_case():
    D, F, k, N, P = 8192, 2 ** 24, 64, 131072, 64
    print(f"d {D}, F {F} (16M), k {k}, N {N} tokens per batch, {P} H100 (80 GB HBM3, 3.35 TB/s)")
    print("links: NVLink 4 within a node of 8 (NCCL all-reduce bus bandwidth ~ 360 GB/s),")
    print("       InfiniBand NDR 400 Gb/s per GPU across the 8 nodes (bus bandwidth ~ 45 GB/s): a ring")
    print("       over 64 GPUs on 8 nodes runs at the InfiniBand rate")
    busbw_ib, busbw_nvl = 45e9, 360e9
    hbm = 3.0e12                  # sustained HBM bytes/s
    tf32, fp32 = 400e12, 50e12    # sustained GEMM flop/s: TF32 tensor cores (--tf32) and plain float32
    print()
    print("memory per rank (float32), S latent shards x R replicas, S R = 64:")
    print(f"{'S x R':>8} {'params':>9} {'Adam m,v':>9} {'grads':>8} {'pre N F/S':>10} {'N-D bufs':>9} {'total':>9}")
    for S, R in [(64, 1), (32, 2), (8, 8)]:
        n = N // R
        params = 2 * D * F / S * F32
        adam = 2 * params
        grads = params  # SaeStep's gradient buffers (made whole even when Adam is fused)
        pre = n * F / S * F32
        nd = 6 * n * D * F32  # x, x_hat, 2 n rows of dL/dx_hat (and e_hat), scratch, x stacked twice
        total = params + adam + grads + pre + nd
        print(f"{S:>4} x {R:<2} {gb(params):8.1f}G {gb(adam):8.1f}G {gb(grads):7.1f}G {gb(pre):9.1f}G {gb(nd):8.1f}G "
              f"{gb(total):8.1f}G")
    print("  -> only S = 64 (pure latent sharding) keeps the parameters and Adam in 80 GB (51.5 GB), and even")
    print("     then the step's whole-batch pre-activations (137 GB) and gradient buffers (17 GB) do not fit:")
    print("     128k-token batches need micro-batches of <= 8k tokens (gradient accumulation: not implemented)")
    mem_f = (4 * 2 * D * F * F32 + N * F * F32)
    for P_fit in range(64, 4097, 4):
        if mem_f / P_fit + 6 * N * D * F32 <= 75e9:
            break
    print(f"     or >= {P_fit} GPUs (S = P) to hold a 128k-token batch whole.")
    print()
    print("bytes per step per rank at S = 64, R = 1 (what the code hands over; a ring sends 2(G-1)/G of an")
    print("all-reduce's bytes and (G-1) times an all-gather's share):")
    for k_aux in (0, 512, 4096):
        calls, payload, ring = per_step_payload(D, F, N, k, k_aux, 64, 1, auxk=k_aux > 0)
        label = "no AuxK" if k_aux == 0 else f"AuxK k_aux {k_aux}" + (" (the default d/2)" if k_aux == D // 2 else "")
        print(f"  {label}: payload {gb(payload):.2f} GB, ring {gb(ring):.1f} GB")
        if k_aux == 512:
            for what, b, kind, g in calls:
                print(f"      {what:48s} {gb(b):8.3f} GB {kind} over {g}")
    print()
    flops = 2 * N * D * F  # the encoder GEMM, the only dense product
    print(f"compute: encoder GEMM 2 N D F = {flops:.3g} flop per step in all")
    print(f"{'P=S':>5} {'GEMM tf32':>10} {'GEMM f32':>9} {'memory':>7} {'comm':>7} {'step tf32':>10} {'comm share':>11}")
    rows = []
    for P in (8, 16, 32, 64, 128, 256, 512, 1024):
        busbw = busbw_nvl if P <= 8 else busbw_ib
        gemm_t, gemm_f = flops / P / tf32, flops / P / fp32
        # memory-bound passes: the selection over pre (read), Adam over params + m + v (read, write)
        mem = (N * F / P * F32 + 6 * 2 * D * F / P * F32) / hbm
        calls, payload, ring = per_step_payload(D, F, N, k, 512, P, 1)
        comm = ring / busbw
        step = gemm_t + mem + comm
        rows.append((P, step, comm))
        print(f"{P:>5} {gemm_t:9.2f}s {gemm_f:8.2f}s {mem:6.3f}s {comm:6.2f}s {step:9.2f}s {100 * comm / step:10.0f}%")
    print("  (AuxK k_aux 512; the all-reduces of n D cost the same at every P, the candidate all-gathers grow")
    print("   with S; compute shrinks as 1/P)")
    best = min(rows, key=lambda r: r[1])
    at64 = [r for r in rows if r[0] == 64][0]
    print(f"  -> with TF32 the step stops getting faster near P = {best[0]} ({best[1]:.2f} s); at 64 GPUs")
    print(f"     communication is {100 * at64[2] / at64[1]:.0f}% of the step; with plain float32 GEMMs (the default)")
    print("     compute dominates to a few hundred GPUs.")


def check(D, F, N, k, k_aux, S, R, steps):
    calls, payload, ring = per_step_payload(D, F, N, k, k_aux, S, R, auxk=k_aux > 0)
    for what, b, kind, g in calls:
        print(f"  {what:48s} {b:12d} B  {kind} over {g}")
    print(f"per step: payload {payload} B, ring {ring:.0f} B; x {steps} steps: payload {payload * steps / 1e6:.3f} MB, "
          f"ring {ring * steps / 1e6:.3f} MB (+ the logged steps' metric sums)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        check(*[int(a) for a in sys.argv[2:10]])
    else:
        largest_case()
