"""The diffusers/PyTorch side of `likeness bench`: the same work at SD 1.5 shape with random
weights, printed as the same table so the two can be set side by side.

    python tests/bench/diffusers_ref.py --device cpu --size 512 --steps 30 --iters 3
    python tests/bench/diffusers_ref.py --device cpu --only db-step --size 256 [--gradient-checkpointing]
    python tests/bench/diffusers_ref.py --only ops          # single layers, as `likeness bench --only ops`
    python tests/bench/diffusers_ref.py --only unet --profile   # layer-by-layer UNet forward
    python tests/bench/diffusers_ref.py --only db-step --profile  # + one step by phase and op
    python tests/bench/diffusers_ref.py --only dpo-step     # one Diffusion-DPO step on a pair

Needs torch, diffusers==0.35.2, transformers==4.57.1 (tests/fixtures/requirements.txt), and
peft==0.17.1 for db-step. No hub
access: every part is built from its public config with random weights.
"""

import argparse
import json
import time

import torch
from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
)
SD15_SCHED = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1, use_karras_sigmas=True,
)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--only", default="all",
                    choices=["unet", "generate", "all", "ops", "db-step", "dpo-step"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--tokenizer", default="tests/fixtures/data/tokenizer")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.precision]
    torch.manual_seed(0)
    dev = a.device
    label = f"{dev}/{a.precision} torch {torch.__version__}"
    if dev.startswith("cuda"):
        label += f" ({torch.cuda.get_device_name()})"
        torch.cuda.reset_peak_memory_stats()
    if a.only == "ops":
        print_rows(a, ops(a, dtype), label)
        return
    unet = UNet2DConditionModel(**SD15_UNET).to(dev, dtype).eval()
    if a.only == "db-step":
        db_step(a, unet, dtype, label)
        return
    if a.only == "dpo-step":
        dpo_step(a, unet, dtype, label)
        return
    rows = []
    lat = a.size // 8
    with torch.no_grad():
        if a.only != "generate":
            x = torch.randn(2, 4, lat, lat, device=dev, dtype=dtype)
            t = torch.tensor([981.0, 981.0], device=dev)
            ctx = torch.randn(2, 77, 768, device=dev, dtype=dtype)
            times = []
            for i in range(a.iters + 1):
                sync(dev)
                t0 = time.perf_counter()
                unet(x, t, ctx).sample.float().cpu()
                sync(dev)
                ms = (time.perf_counter() - t0) * 1e3
                print(f"unet forward {i}: {ms:.1f} ms", flush=True)
                times.append(ms)
            rows.append((f"UNet forward, batch 2, {a.size}px", times))
            if a.profile:
                rows += profile_unet(unet, x, t, ctx, dev)
        if a.only != "unet":
            vae = AutoencoderKL(**SD15_VAE).to(dev, dtype).eval()
            te = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).to(dev, dtype).eval()
            tok = CLIPTokenizer.from_pretrained(a.tokenizer)
            sched = DPMSolverMultistepScheduler(**SD15_SCHED)
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                           scheduler=sched, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            # A two-step warm-up first, as on the Likeness side.
            times = []
            for steps in (2, a.steps):
                sync(dev)
                t0 = time.perf_counter()
                pipe("a photo of a dog on the beach", num_inference_steps=steps,
                     guidance_scale=7.5, height=a.size, width=a.size, output_type="np")
                sync(dev)
                times.append((time.perf_counter() - t0) * 1e3)
            rows.append((f"generate {a.steps} steps (CFG, DPM++ 2M, decode), {a.size}px", times))
    print_rows(a, rows, label)


def profile_unet(unet, x, t, ctx, dev):
    """One forward timed layer by layer with the device synchronised around every layer, by the
    same kinds as `likeness bench --profile` (attention = scaled_dot_product_attention)."""
    table = {}

    def kind(m):
        if isinstance(m, torch.nn.Conv2d):
            return "conv1x1" if m.kernel_size == (1, 1) else "conv3x3"
        return {torch.nn.GroupNorm: "group_norm", torch.nn.LayerNorm: "layer_norm",
                torch.nn.Linear: "linear"}.get(type(m))

    def add(name, ms):
        calls, total = table.get(name, (0, 0.0))
        table[name] = (calls + 1, total + ms)

    starts = {}

    def pre(m, _args):
        sync(dev)
        starts[id(m)] = time.perf_counter()

    def post(m, _args, _out):
        sync(dev)
        add(kind(m), (time.perf_counter() - starts.pop(id(m))) * 1e3)

    hooks = []
    for m in unet.modules():
        if kind(m):
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    F = torch.nn.functional
    sdpa = F.scaled_dot_product_attention

    def timed_sdpa(*args, **kw):
        sync(dev)
        t0 = time.perf_counter()
        out = sdpa(*args, **kw)
        sync(dev)
        add("attention", (time.perf_counter() - t0) * 1e3)
        return out

    F.scaled_dot_product_attention = timed_sdpa
    try:
        sync(dev)
        t0 = time.perf_counter()
        unet(x, t, ctx).sample.float().cpu()
        sync(dev)
        total = (time.perf_counter() - t0) * 1e3
    finally:
        F.scaled_dot_product_attention = sdpa
        for h in hooks:
            h.remove()
    # One-element rows: the profile has no warm-up of its own (the timed forwards were it).
    rows = [(f"profile: {k} ({c} calls)", [ms, ms]) for k, (c, ms) in sorted(table.items())]
    rows.append(("profile: other", [total - sum(ms for _, ms in table.values())] * 2))
    rows.append(("profile: total (synchronised)", [total, total]))
    return rows


def ops(a, dtype):
    """The layers that dominate SD1.5 at its largest latent, batch 2, as `likeness bench --only
    ops` times them: forward, and forward + backward of the sum."""
    dev, lat = a.device, a.size // 8
    rows = []

    def bench(name, f):
        times = []
        for _ in range(max(a.iters, 2) + 1):
            sync(dev)
            t0 = time.perf_counter()
            f()
            sync(dev)
            times.append((time.perf_counter() - t0) * 1e3)
        print(f"{name}: {sum(times[1:]) / (len(times) - 1):.2f} ms", flush=True)
        rows.append((name, times))

    F = torch.nn.functional
    norm = torch.nn.GroupNorm(32, 320, eps=1e-5).to(dev, dtype)
    x = torch.randn(2, 320, lat, lat, device=dev, dtype=dtype)
    with torch.no_grad():
        bench(f"op: GroupNorm(32, 320) + SiLU fwd [2, 320, {lat}, {lat}]",
              lambda: F.silu(norm(x)).float().sum().item())
    xg = x.clone().requires_grad_(True)

    def gn_bwd():
        xg.grad = None
        F.silu(norm(xg)).float().sum().backward()
    bench(f"op: GroupNorm(32, 320) + SiLU fwd+bwd [2, 320, {lat}, {lat}]", gn_bwd)
    ln = torch.nn.LayerNorm(320, eps=1e-5).to(dev, dtype)
    tokens = torch.randn(2, lat * lat, 320, device=dev, dtype=dtype)
    with torch.no_grad():
        bench(f"op: LayerNorm(320) fwd [2, {lat * lat}, 320]",
              lambda: ln(tokens).float().sum().item())
    tg = tokens.clone().requires_grad_(True)

    def ln_bwd():
        tg.grad = None
        ln(tg).float().sum().backward()
    bench(f"op: LayerNorm(320) fwd+bwd [2, {lat * lat}, 320]", ln_bwd)
    seq = lat * lat
    q = torch.randn(2, 8, seq, 40, device=dev, dtype=dtype)
    k, v = q * 0.5, q * 0.25
    with torch.no_grad():
        bench(f"op: attention fwd [2, 8, {seq}, 40]",
              lambda: F.scaled_dot_product_attention(q, k, v).float().sum().item())
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

    def attn_bwd():
        qg.grad = kg.grad = vg.grad = None
        F.scaled_dot_product_attention(qg, kg, vg).float().sum().backward()
    bench(f"op: attention fwd+bwd [2, 8, {seq}, 40]", attn_bwd)
    # SD 1.5's other attentions: levels 2 and 3 (head dims 80, 160), level 1's cross-attention.
    for n_q, n_k, d in [(seq // 4, seq // 4, 80), (seq // 16, seq // 16, 160), (seq, 77, 40)]:
        q2, k2, v2 = (torch.randn(2, 8, n, d, device=dev, dtype=dtype) for n in (n_q, n_k, n_k))
        with torch.no_grad():
            bench(f"op: attention fwd [2, 8, {n_q}×{n_k}, {d}]",
                  lambda: F.scaled_dot_product_attention(q2, k2, v2).float().sum().item())
        q2g, k2g, v2g = (t.clone().requires_grad_(True) for t in (q2, k2, v2))

        def attn2_bwd():
            q2g.grad = k2g.grad = v2g.grad = None
            F.scaled_dot_product_attention(q2g, k2g, v2g).float().sum().backward()
        bench(f"op: attention fwd+bwd [2, 8, {n_q}×{n_k}, {d}]", attn2_bwd)
    w = torch.randn(320, 320, 3, 3, device=dev, dtype=dtype) * 0.02
    with torch.no_grad():
        bench(f"op: conv3x3 320→320 fwd [2, 320, {lat}, {lat}]",
              lambda: F.conv2d(x, w, padding=1).float().sum().item())
    wg = w.clone().requires_grad_(True)

    def conv_bwd():
        wg.grad = None
        xg.grad = None
        F.conv2d(xg, wg, padding=1).float().sum().backward()
    bench(f"op: conv3x3 320→320 fwd+bwd [2, 320, {lat}, {lat}]", conv_bwd)
    w1 = torch.randn(320, 320, 1, 1, device=dev, dtype=dtype) * 0.05
    with torch.no_grad():
        bench(f"op: conv1x1 320→320 fwd [2, 320, {lat}, {lat}]",
              lambda: F.conv2d(x, w1).float().sum().item())
    w1g = w1.clone().requires_grad_(True)

    def conv1_bwd():
        w1g.grad = None
        xg.grad = None
        F.conv2d(xg, w1g).float().sum().backward()
    bench(f"op: conv1x1 320→320 fwd+bwd [2, 320, {lat}, {lat}]", conv1_bwd)
    tokens = torch.randn(2 * seq, 320, device=dev, dtype=dtype)
    lw = torch.randn(320, 2560, device=dev, dtype=dtype) * 0.05
    with torch.no_grad():
        bench(f"op: matmul [{2 * seq}, 320] × [320, 2560] fwd",
              lambda: (tokens @ lw).float().sum().item())
    lwg = lw.clone().requires_grad_(True)

    def mm_bwd():
        lwg.grad = None
        (tokens @ lwg).float().sum().backward()
    bench(f"op: matmul [{2 * seq}, 320] × [320, 2560] fwd+bwd", mm_bwd)
    return rows


def peak_mib(dev):
    """Peak memory: allocated CUDA memory on a GPU, else the process's resident high-water mark."""
    if dev.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def train_lora(unet, lr, checkpointing=False):
    """The UNet frozen with PEFT rank-4 LoRA on its attention projections (as Likeness trains),
    in training mode; returns the adapters' parameters and their AdamW (PyTorch's defaults but
    weight decay 1e-2, as the training scripts)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    unet.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    return params, opt


def timed_steps(step, a, what):
    """`a.iters + 1` calls of `step` (the first a warm-up), synchronised, in ms."""
    times = []
    for i in range(a.iters + 1):
        sync(a.device)
        t0 = time.perf_counter()
        step()
        sync(a.device)
        ms = (time.perf_counter() - t0) * 1e3
        print(f"{what} {i}: {ms:.1f} ms", flush=True)
        times.append(ms)
    return times


def db_step(a, unet, dtype, label):
    """One DreamBooth LoRA step as train_dreambooth_lora.py takes it, latents given (random,
    standing in for cached VAE latents): text encoder without grad, noise at random timesteps,
    UNet with PEFT rank-4 attention LoRA, MSE to the noise, backward, clip 1.0, AdamW."""
    from diffusers import DDPMScheduler

    dev = a.device
    # The VAE is loaded as the training script loads it, so peak memory holds the same parts.
    vae = AutoencoderKL(**SD15_VAE).to(dev, dtype).eval().requires_grad_(False)
    te = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).to(dev, dtype).eval().requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(a.tokenizer)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000)
    params, opt = train_lora(unet, 1e-4, a.gradient_checkpointing)
    lat = a.size // 8
    latents = torch.randn(a.batch, 4, lat, lat, device=dev, dtype=dtype)
    ids = tok(["a photo of sks dog"] * a.batch, padding="max_length", max_length=77,
              truncation=True, return_tensors="pt").input_ids.to(dev)
    def step(mark=lambda phase: None):
        with torch.no_grad():
            ctx = te(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (a.batch,), device=dev).long()
        noisy = sched.add_noise(latents, noise, t)
        mark("text encoder, noise")
        pred = unet(noisy, t, ctx).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
        mark("UNet forward + loss")
        loss.backward()
        mark("backward")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        mark("clipping + AdamW")

    times = timed_steps(step, a, "db step")
    ck = ", grad ckpt" if a.gradient_checkpointing else ""
    name = f"DreamBooth LoRA step (r4, text enc + UNet fwd/bwd + AdamW{ck}), batch {a.batch}, {a.size}px"
    rows = [(name, times)]
    if a.profile:
        try:
            rows += profile_step(step, dev)
        except Exception as e:  # the timed rows above stand without it
            print(f"step profile failed: {type(e).__name__}: {e}", flush=True)
            rows.append((f"step profile: failed ({type(e).__name__})", [0.0, 0.0]))
    print_rows(a, rows, label)


def dpo_step(a, unet, dtype, label, beta=5000.0):
    """One Diffusion-DPO step on one pair, as diffusers' train_diffusion_dpo.py takes it and as
    `likeness bench --only dpo-step` times it: winner and loser latents (random) noised with the
    same noise and timestep, the LoRA model on both with gradients, the reference (the adapters
    off) on both without, the sigmoid loss on the difference of differences, backward, clip 1.0,
    AdamW on PEFT rank-4 attention LoRA."""
    from diffusers import DDPMScheduler

    dev = a.device
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000)
    params, opt = train_lora(unet, 1e-5)
    lat = a.size // 8
    latents = torch.randn(2, 4, lat, lat, device=dev, dtype=dtype)  # winner, loser
    ctx = torch.randn(1, 77, 768, device=dev, dtype=dtype).repeat(2, 1, 1)

    def per_sample(pred, target):
        return ((pred.float() - target.float()) ** 2).mean(dim=[1, 2, 3])

    def step():
        noise = torch.randn_like(latents[:1]).repeat(2, 1, 1, 1)
        t = torch.randint(0, 1000, (1,), device=dev).long().repeat(2)
        noisy = sched.add_noise(latents, noise, t)
        err = per_sample(unet(noisy, t, ctx).sample, noise)
        with torch.no_grad():
            unet.disable_adapters()
            ref = per_sample(unet(noisy, t, ctx).sample, noise)
            unet.enable_adapters()
        inside = -0.5 * beta * ((err[0] - err[1]) - (ref[0] - ref[1]))
        loss = -torch.nn.functional.logsigmoid(inside)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    times = timed_steps(step, a, "dpo step")
    name = f"DPO step (4 UNet passes + backward + AdamW, LoRA r4), 1 pair, {a.size}px"
    print_rows(a, [(name, times)], label)


def profile_step(step, dev):
    """One more training step under torch.profiler, as `likeness bench --only db-step --profile`
    reports it: wall time per phase (device synchronised at each mark), then the device time of
    each kind of op — forward by aten op (conv split 3x3 / 1x1 by the weight's shape; linear
    includes PEFT's LoRA linears, and the forward kinds the text encoder's layers too, a few ms
    at 77 tokens), backward by autograd function (the linears' matmuls as Addmm/Mm backward) —
    and what no kind covers."""
    from torch.profiler import ProfilerActivity, profile

    phases = []
    last = [time.perf_counter()]

    def mark(phase):
        sync(dev)
        now = time.perf_counter()
        phases.append((phase, (now - last[0]) * 1e3))
        last[0] = now

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
    sync(dev)
    t0 = time.perf_counter()
    with profile(activities=acts, record_shapes=True) as prof:
        last[0] = time.perf_counter()
        step(mark)
    total = (time.perf_counter() - t0) * 1e3
    fwd_kinds = {"aten::scaled_dot_product_attention": "attention",
                 "aten::group_norm": "group_norm", "aten::layer_norm": "layer_norm",
                 "aten::linear": "linear"}
    bwd_kinds = [("ConvolutionBackward", "conv bwd"), ("ScaledDotProduct", "attention bwd"),
                 ("NativeGroupNormBackward", "group_norm bwd"),
                 ("NativeLayerNormBackward", "layer_norm bwd"), ("AddmmBackward", "linear bwd"),
                 ("MmBackward", "linear bwd"), ("BmmBackward", "linear bwd")]
    table = {}

    def add(kind, us, n):
        calls, ms = table.get(kind, (0, 0.0))
        table[kind] = (calls + n, ms + us / 1e3)

    def device_us(evt):
        for attr in ("device_time_total", "cuda_time_total", "cpu_time_total"):
            if hasattr(evt, attr):
                return getattr(evt, attr)
        return 0.0

    bwd_all = 0.0
    for evt in prof.key_averages(group_by_input_shape=True):
        key, n = evt.key, evt.count
        if key == "aten::convolution":
            shapes = evt.input_shapes or []
            w = shapes[1] if len(shapes) > 1 else []
            kind = "fwd conv1x1" if len(w) == 4 and w[-1] == 1 else "fwd conv3x3"
        elif key in fwd_kinds:
            kind = "fwd " + fwd_kinds[key]
        elif key.startswith("autograd::engine::evaluate_function: "):
            bwd_all += device_us(evt)
            fn = key.split(": ", 1)[1]
            kind = next((k for prefix, k in bwd_kinds if fn.startswith(prefix)), None)
        else:
            kind = None
        if kind:
            add(kind, device_us(evt), n)
    phase_ms = dict(phases)
    rows = [(f"step profile: {p}", [ms, ms]) for p, ms in phases]
    fwd_sum = sum(ms for k, (_, ms) in table.items() if k.startswith("fwd "))
    bwd_sum = sum(ms for k, (_, ms) in table.items() if k.endswith(" bwd"))
    rows += [(f"step profile: {k} ({c} calls, device time)", [ms, ms])
             for k, (c, ms) in sorted(table.items())]
    fwd_other = phase_ms.get("UNet forward + loss", 0.0) - fwd_sum
    rows.append(("step profile: fwd other (wall - device time of the kinds)", [fwd_other] * 2))
    rows.append(("step profile: bwd other (device time)", [bwd_all / 1e3 - bwd_sum] * 2))
    rows.append(("step profile: total (synchronised, profiled)", [total, total]))
    return rows


def print_rows(a, rows, label):
    peak = peak_mib(a.device)
    peak_s = "n/a" if peak is None else f"{peak:.0f}"
    print("| benchmark | device | mean ms | min ms | runs | first ms | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    out = []
    for name, all_times in rows:
        # The first run is the untimed warm-up (cuDNN autotuning, allocator growth).
        first, times = all_times[0], all_times[1:]
        mean = sum(times) / len(times)
        print(f"| {name} | {label} | {mean:.1f} | {min(times):.1f} | {len(times)} | {first:.0f} "
              f"| {peak_s} |")
        out.append(dict(name=name, device=label, mean_ms=mean, min_ms=min(times), runs=len(times),
                        first_ms=first, peak_mib=peak))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
