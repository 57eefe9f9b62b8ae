"""What FP32 can reach on this machine for a VLM answer: the FLOP rate of a GEMM in each engine, the
memory read bandwidth, and the bounds they set on time to first token and decode, against transformers.

A first token costs at least its FLOPs (torch's FlopCounterMode over the reference's own call: every
matmul, the attention's included) at the best FP32 GEMM rate measured here (softmax, norms and
activations are left out, so the bound is optimistic). A decode step of an FP32 decoder reads every decoder
weight once, so it costs at least those bytes at the measured read bandwidth (the KV cache is left out),
and at least the time onnxruntime takes for those weights' MatMuls alone, one row each.
The best speed-up any FP32 runtime can have over transformers is the reference time divided by that
bound: when it is under a target, the target cannot be met in FP32 on this machine.

Run: ``.venv/bin/python benchmarks/ceilings.py --model arch:smolvlm-256m`` (one run; keep the machine idle).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from vqa import best_ms  # benchmarks/ is the script's folder

from edgevlp._machine import cpu_name

#: GEMM shapes (M, K, N) of SigLIP-B/16 at one 512 px tile: the MLP's up projection and the attention's
#: QKV projection, 1024 patches.
GEMMS = ((1024, 768, 3072), (1024, 768, 768))


def gemm_rates(threads: int, repeats: int) -> dict[str, dict[tuple[int, int, int], float]]:
    """GFLOP/s of an FP32 ``A @ B`` per engine and shape."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    torch.set_num_threads(threads)
    rates: dict[str, dict[tuple[int, int, int], float]] = {"torch": {}, "onnxruntime": {}, "openvino f32": {}}
    rng = np.random.default_rng(0)
    for m, k, n in GEMMS:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        gflop = 2 * m * k * n / 1e9
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        rates["torch"][(m, k, n)] = gflop / best_ms(lambda: ta @ tb, repeats) * 1e3
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])], [numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        rates["onnxruntime"][(m, k, n)] = gflop / best_ms(lambda: sess.run(None, {"a": a}), repeats) * 1e3
        try:
            import openvino as ov

            core = ov.Core()
            compiled = core.compile_model(core.read_model(model.SerializeToString()), "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
            request = compiled.create_infer_request()
            rates["openvino f32"][(m, k, n)] = gflop / best_ms(lambda: request.infer({0: a}), repeats) * 1e3
        except ImportError:
            rates.pop("openvino f32", None)
    return rates


def read_bandwidth(threads: int, repeats: int, mib: int = 1024) -> float:
    """GB/s of a sum over ``mib`` MiB of float32 (torch, ``threads`` threads): the rate an FP32 decode
    step can stream its weights at."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    ms = best_ms(lambda: x.sum(), repeats)
    return x.numel() * 4 / ms / 1e6


def answer_work(model: str, photo: str, question: str, threads: int) -> dict[str, float]:
    """FLOPs of a first token (one tile, unsplit) and the bytes an FP32 decode step reads, with the
    transformers reference's TTFT and decode rate measured on the same call."""
    import torch
    from skimage import data
    from torch.utils.flop_counter import FlopCounterMode

    from edgevlp.models import load_model

    torch.set_num_threads(threads)
    adapter = load_model(model)
    rgb = getattr(data, photo)()
    ref = lambda k: adapter.answer_ids(rgb, question, k, splitting=False, min_new_tokens=k)  # noqa: E731
    # counted with eager attention: torch's counter does not see the CPU flash-attention kernel, so the
    # attention's two batched matmuls would be left out
    default = adapter.model.config._attn_implementation
    adapter.model.set_attn_implementation("eager")
    counter = FlopCounterMode(display=False)
    with counter:
        ref(1)
    adapter.model.set_attn_implementation(default)
    n = 32
    t1 = best_ms(lambda: ref(1), 3)
    tn = best_ms(lambda: ref(n), 2)
    text = adapter.model.model.text_model
    embed = text.get_input_embeddings().weight
    head = adapter.model.get_output_embeddings()
    decoder_params = sum(p.numel() for p in text.parameters()) - embed.numel() + head.weight.numel()
    linears = [(m.in_features, m.out_features) for m in text.modules() if isinstance(m, torch.nn.Linear)]
    return {"ttft_flop": float(counter.get_total_flops()), "decode_bytes": decoder_params * 4.0,
            "decode_matmuls": [*linears, (head.in_features, head.out_features)],
            "ref_ttft_ms": t1, "ref_decode_tok_s": (n - 1) / (tn - t1) * 1e3}


def matmul_chain_ms(shapes: list[tuple[int, int]], threads: int, repeats: int) -> float:
    """onnxruntime's time for one row through every FP32 weight of ``shapes`` (K x N each), one MatMul
    each and nothing else: what a decode step's weight reads cost through its GEMV kernels."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = sorted({k for k, _ in shapes})
    nodes, inits, outputs = [], [], []
    for i, (k, n) in enumerate(shapes):
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32) * 0.01, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{k}", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "decode_weights",
                              [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]) for k in dims],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {f"x{k}": np.ones((1, k), np.float32) for k in dims}
    return best_ms(lambda: sess.run(None, feeds), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="arch:smolvlm-256m", help="a vqa model (dir, hub id in the cache, arch:NAME)")
    p.add_argument("--photo", default="chelsea")
    p.add_argument("--question", default="What colour is the animal on the left of the picture?")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--target", type=float, default=3.0, help="the speed-up to check (default 3x)")
    args = p.parse_args()

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; {args.threads} threads\n")
    rates = gemm_rates(args.threads, args.repeats)
    print("| FP32 GEMM (M x K x N) | " + " | ".join(rates) + " |")
    print("|---|" + "---|" * len(rates))
    for shape in GEMMS:
        print(f"| {' x '.join(map(str, shape))} | " + " | ".join(f"{r[shape]:.0f} GFLOP/s" for r in rates.values()) + " |")
    peak = max(max(r.values()) for r in rates.values())
    bandwidth = read_bandwidth(args.threads, args.repeats // 2 + 1)
    print(f"\nbest FP32 GEMM rate: {peak:.0f} GFLOP/s; read bandwidth: {bandwidth:.1f} GB/s\n")

    w = answer_work(args.model, args.photo, args.question, args.threads)
    ttft_floor = w["ttft_flop"] / (peak * 1e9) * 1e3
    decode_ceiling = bandwidth * 1e9 / w["decode_bytes"]
    gemv_ceiling = 1e3 / matmul_chain_ms(w["decode_matmuls"], args.threads, args.repeats)
    best_ttft, best_decode = w["ref_ttft_ms"] / ttft_floor, decode_ceiling / w["ref_decode_tok_s"]
    best_gemv = gemv_ceiling / w["ref_decode_tok_s"]
    print(f"| {args.model}, one tile | work | transformers | FP32 bound on this machine | best FP32 speed-up | "
          f"{args.target:g}x possible |")
    print("|---|---|---|---|---|---|")
    print(f"| time to first token | {w['ttft_flop'] / 1e9:.0f} GFLOP | {w['ref_ttft_ms']:.0f} ms | >= {ttft_floor:.0f} ms | "
          f"{best_ttft:.2f}x | {'yes' if best_ttft >= args.target else 'no'} |")
    print(f"| decode | {w['decode_bytes'] / 1e6:.0f} MB read a token | {w['ref_decode_tok_s']:.1f} tok/s | "
          f"<= {decode_ceiling:.1f} tok/s | {best_decode:.2f}x | {'yes' if best_decode >= args.target else 'no'} |")
    print(f"| decode, its {len(w['decode_matmuls'])} weight MatMuls alone through onnxruntime | | | "
          f"<= {gemv_ceiling:.1f} tok/s | {best_gemv:.2f}x | {'yes' if best_gemv >= args.target else 'no'} |")


if __name__ == "__main__":
    main()
