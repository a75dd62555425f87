"""Cost of float64 rotary tables in a Wan transformer training step (forward + backward), CPU.

diffusers' ``WanRotaryPosEmbed`` computes its cos/sin tables in float64; diffusers 0.42.1 returns
them in float32, older code paths and ``Module.to(torch.float64)``-style casts leave them in float64,
which runs the rotary products of every attention in float64. The adapter stores them in float32
(``t2v_turbo.adapters.wan.rotary_tables_in_float32``). This measures a step with each table dtype on
the same weights and inputs, interleaved, and the largest output difference.

    python bench/bench_wan_rotary.py                    # tiny config, 21 latent frames of 16x16
    python bench/bench_wan_rotary.py --heads 4 --head-dim 64 --layers 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    import torch
    from diffusers import WanTransformer3DModel

    from t2v_turbo.adapters.wan import rotary_tables_in_float32
    from t2v_turbo.testing import tiny_wan_transformer_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent-frames", type=int, default=21, help="21 = 81 pixel frames")
    parser.add_argument("--latent-size", type=int, default=16, help="latent height = width (16 = 128 pixels)")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=12)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = dict(tiny_wan_transformer_config(), num_attention_heads=args.heads, attention_head_dim=args.head_dim,
                  num_layers=args.layers, ffn_dim=4 * args.heads * args.head_dim)
    model = WanTransformer3DModel(**config)
    rotary_tables_in_float32(model)
    tables32 = (model.rope.freqs_cos.clone(), model.rope.freqs_sin.clone())
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, args.latent_frames, args.latent_size, args.latent_size, generator=g)
    text = torch.randn(1, 16, config["text_dim"], generator=g)
    t = torch.tensor([700.0])

    def step(dtype):
        model.rope.freqs_cos, model.rope.freqs_sin = (x.to(dtype) for x in tables32)
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(hidden_states=z, timestep=t, encoder_hidden_states=text).sample
        out.square().mean().backward()
        return time.perf_counter() - start, out.detach()

    step(torch.float32), step(torch.float64)  # warm-up
    times = {"float32": [], "float64": []}
    for _ in range(args.repeats):
        for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            seconds, out = step(dtype)
            times[name].append(seconds)
            if name == "float64":
                reference = out
    difference = float((out - reference).abs().max())
    tokens = args.latent_frames * (args.latent_size // 2) ** 2
    result = {
        "benchmark": "wan_rotary", "tokens": tokens, "config": config, "torch_threads": torch.get_num_threads(),
        "step_s_float64_tables": statistics.median(times["float64"]),
        "step_s_float32_tables": statistics.median(times["float32"]),
        "max_abs_output_difference": difference,
    }
    result["speedup"] = result["step_s_float64_tables"] / result["step_s_float32_tables"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
