"""An independent, plainly written reference of Video-Depth-Anything's published inference, for the tests.

Written from the paper's description and the authors' inference scripts (DepthAnything/Video-Depth-Anything at
4f5ae23: ``video_depth_anything/video_depth.py`` ``infer_video_depth``, ``video_depth_stream.py``
``infer_video_depth_one``, ``dpt_temporal.py``, ``motion_module/motion_module.py``, ``dinov2.py``,
``utils/util.py``), sharing no code with ``stereo_spot``: it works on the checkpoint's state dict directly, by the
authors' parameter names, one functional step after another, with attention written out as softmax(QKᵀ/√d)V.

``authors_keys(config)`` is the key set (name → shape) the authors' ``VideoDepthAnything(**model_configs[enc])``
has, read off their module tree; ``random_checkpoint`` fills it with seeded random tensors scaled so that the
untrained network's output varies over the picture and over time (every temporal module's ``proj_out`` non-zero:
the authors zero it only at the start of training).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# run.py model_configs, dinov2.py vit_small/base/large, video_depth.py intermediate_layer_idx
PUBLISHED = {
    "vits": {"dim": 384, "depth": 12, "heads": 6, "layers": [2, 5, 8, 11], "features": 64,
             "out_channels": [48, 96, 192, 384]},
    "vitb": {"dim": 768, "depth": 12, "heads": 12, "layers": [2, 5, 8, 11], "features": 128,
             "out_channels": [96, 192, 384, 768]},
    "vitl": {"dim": 1024, "depth": 24, "heads": 16, "layers": [4, 11, 17, 23], "features": 256,
             "out_channels": [256, 512, 1024, 1024]},
}
INFER_LEN, OVERLAP, INTERP_LEN = 32, 10, 8
KEYFRAMES = [0, 12, 24, 25, 26, 27, 28, 29, 30, 31]


def authors_keys(encoder: str, num_frames: int = 32, features: int | None = None,
                 out_channels: list[int] | None = None) -> dict[str, tuple[int, ...]]:
    c = PUBLISHED[encoder]
    d, f = c["dim"], features or c["features"]
    oc = out_channels or c["out_channels"]
    keys: dict[str, tuple[int, ...]] = {
        "pretrained.cls_token": (1, 1, d), "pretrained.pos_embed": (1, 1 + 37 * 37, d),
        "pretrained.mask_token": (1, d),
        "pretrained.patch_embed.proj.weight": (d, 3, 14, 14), "pretrained.patch_embed.proj.bias": (d,),
        "pretrained.norm.weight": (d,), "pretrained.norm.bias": (d,),
    }
    for i in range(c["depth"]):
        b = f"pretrained.blocks.{i}."
        keys.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                     b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                     b + "ls1.gamma": (d,), b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                     b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
                     b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,), b + "ls2.gamma": (d,)})
    for i, o in enumerate(oc):
        keys[f"head.projects.{i}.weight"] = (o, d, 1, 1)
        keys[f"head.projects.{i}.bias"] = (o,)
        keys[f"head.scratch.layer{i + 1}_rn.weight"] = (f, o, 3, 3)
    keys.update({"head.resize_layers.0.weight": (oc[0], oc[0], 4, 4), "head.resize_layers.0.bias": (oc[0],),
                 "head.resize_layers.1.weight": (oc[1], oc[1], 2, 2), "head.resize_layers.1.bias": (oc[1],),
                 "head.resize_layers.3.weight": (oc[3], oc[3], 3, 3), "head.resize_layers.3.bias": (oc[3],)})
    for r in range(1, 5):
        b = f"head.scratch.refinenet{r}."
        keys.update({b + "out_conv.weight": (f, f, 1, 1), b + "out_conv.bias": (f,)})
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                keys[f"{b}{unit}.{conv}.weight"] = (f, f, 3, 3)
                keys[f"{b}{unit}.{conv}.bias"] = (f,)
    keys.update({"head.scratch.output_conv1.weight": (f // 2, f, 3, 3), "head.scratch.output_conv1.bias": (f // 2,),
                 "head.scratch.output_conv2.0.weight": (32, f // 2, 3, 3), "head.scratch.output_conv2.0.bias": (32,),
                 "head.scratch.output_conv2.2.weight": (1, 32, 1, 1), "head.scratch.output_conv2.2.bias": (1,)})
    for m, ch in enumerate([oc[2], oc[3], f, f]):
        t = f"head.motion_modules.{m}.temporal_transformer."
        keys.update({t + "norm.weight": (ch,), t + "norm.bias": (ch,), t + "proj_in.weight": (ch, ch),
                     t + "proj_in.bias": (ch,), t + "proj_out.weight": (ch, ch), t + "proj_out.bias": (ch,)})
        blk = t + "transformer_blocks.0."
        for a in range(2):
            at = f"{blk}attention_blocks.{a}."
            keys.update({at + "to_q.weight": (ch, ch), at + "to_k.weight": (ch, ch), at + "to_v.weight": (ch, ch),
                         at + "to_out.0.weight": (ch, ch), at + "to_out.0.bias": (ch,),
                         at + "pos_encoder.pe": (1, num_frames, ch),
                         f"{blk}norms.{a}.weight": (ch,), f"{blk}norms.{a}.bias": (ch,)})
        keys.update({blk + "ff.net.0.proj.weight": (8 * ch, ch), blk + "ff.net.0.proj.bias": (8 * ch,),
                     blk + "ff.net.2.weight": (ch, 4 * ch), blk + "ff.net.2.bias": (ch,),
                     blk + "ff_norm.weight": (ch,), blk + "ff_norm.bias": (ch,)})
    return keys


def sinusoids(length: int, dim: int) -> torch.Tensor:
    table = torch.zeros(1, length, dim)
    for pos in range(length):
        for i in range(0, dim, 2):
            angle = pos / (10000.0 ** (i / dim))
            table[0, pos, i] = math.sin(angle)
            table[0, pos, i + 1] = math.cos(angle)
    return table


def random_checkpoint(encoder: str = "vits", seed: int = 0, **sizes) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in authors_keys(encoder, **sizes).items():
        if name.endswith("pos_encoder.pe"):
            state[name] = sinusoids(shape[1], shape[2])
            continue
        noise = torch.randn(shape, generator=generator)
        if name.endswith(".gamma"):
            value = 0.5 + 0.25 * noise.abs()
        elif len(shape) == 1 and ("norm" in name) and name.endswith("weight"):
            value = 1.0 + 0.1 * noise
        elif name.endswith("bias"):
            value = 0.05 * noise
        elif name.startswith("pretrained.") and len(shape) == 3 or name.endswith("mask_token"):
            value = 0.5 * noise
        else:
            fan_in = shape[0] if "resize_layers.0" in name or "resize_layers.1" in name else \
                int(np.prod(shape[1:]))
            value = noise / math.sqrt(fan_in)
        state[name] = value.float()
    # the last layer feeds a ReLU: a positive bias keeps the untrained map above zero almost everywhere
    state["head.scratch.output_conv2.2.bias"] = torch.tensor([2.0])
    return state


# ----- the network, functionally -------------------------------------------------------------------------


def _linear(x, w, prefix, bias=True):
    return F.linear(x, w[prefix + ".weight"], w.get(prefix + ".bias") if bias else None)


def _attention(q, k, v):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-1) @ v


def encoder(w, images, cfg):
    """DINOv2 get_intermediate_layers(…, return_class_token=True) — patch tokens after norm."""
    n, _, height, width = images.shape
    rows, cols = height // 14, width // 14
    x = F.conv2d(images, w["pretrained.patch_embed.proj.weight"], w["pretrained.patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w["pretrained.cls_token"].expand(n, -1, -1), x], dim=1)
    pos = w["pretrained.pos_embed"]
    if not (rows * cols == 37 * 37 and height == width):
        grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37), mode="bicubic",
                             antialias=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)
    x = x + pos
    dim, heads = cfg["dim"], cfg["heads"]
    taken = []
    for i in range(cfg["depth"]):
        b = f"pretrained.blocks.{i}."
        h = F.layer_norm(x, (dim,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
        qkv = _linear(h, w, b + "attn.qkv").reshape(n, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        a = _attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(n, -1, dim)
        x = x + _linear(a, w, b + "attn.proj") * w[b + "ls1.gamma"]
        h = F.layer_norm(x, (dim,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
        h = _linear(F.gelu(_linear(h, w, b + "mlp.fc1")), w, b + "mlp.fc2")
        x = x + h * w[b + "ls2.gamma"]
        if i in cfg["layers"]:
            normed = F.layer_norm(x, (dim,), w["pretrained.norm.weight"], w["pretrained.norm.bias"], eps=1e-6)
            taken.append(normed[:, 1:])
    return taken


def temporal_module(w, m, x, frames, cache=None):
    """TemporalModule on x [(B T), C, h, w]; ``cache`` the 2 cached attention inputs [(B h w), K, C]."""
    t = f"head.motion_modules.{m}.temporal_transformer."
    bt, ch, hh, ww = x.shape
    b = bt // frames
    h = F.group_norm(x, 32, w[t + "norm.weight"], w[t + "norm.bias"], eps=1e-6)
    h = h.permute(0, 2, 3, 1).reshape(bt, hh * ww, ch)
    h = _linear(h, w, t + "proj_in")
    blk = t + "transformer_blocks.0."
    new_cache = []
    for a in range(2):
        normed = F.layer_norm(h, (ch,), w[f"{blk}norms.{a}.weight"], w[f"{blk}norms.{a}.bias"])
        # "(b f) d c -> (b d) f c"
        seq = normed.reshape(b, frames, hh * ww, ch).permute(0, 2, 1, 3).reshape(b * hh * ww, frames, ch)
        new_cache.append(seq)
        start = 0
        if cache is not None:
            start = cache[a].shape[1]
            seq = torch.cat([cache[a], seq], dim=1)
        at = f"{blk}attention_blocks.{a}."
        seq = seq + w[at + "pos_encoder.pe"][:, :seq.shape[1]]
        q = F.linear(seq[:, start:], w[at + "to_q.weight"])
        k = F.linear(seq, w[at + "to_k.weight"])
        v = F.linear(seq, w[at + "to_v.weight"])

        def heads(z):
            return z.reshape(z.shape[0], z.shape[1], 8, ch // 8).permute(0, 2, 1, 3)

        out = _attention(heads(q), heads(k), heads(v)).permute(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], ch)
        out = _linear(out, w, at + "to_out.0")
        # "(b d) f c -> (b f) d c"
        out = out.reshape(b, hh * ww, frames, ch).permute(0, 2, 1, 3).reshape(bt, hh * ww, ch)
        h = h + out
    normed = F.layer_norm(h, (ch,), w[blk + "ff_norm.weight"], w[blk + "ff_norm.bias"])
    value, gate = _linear(normed, w, blk + "ff.net.0.proj").chunk(2, dim=-1)
    h = h + _linear(value * F.gelu(gate), w, blk + "ff.net.2")
    h = _linear(h, w, t + "proj_out").reshape(bt, hh, ww, ch).permute(0, 3, 1, 2)
    return h + x, new_cache


def _rcu(w, prefix, x):
    out = F.conv2d(F.relu(x), w[prefix + ".conv1.weight"], w[prefix + ".conv1.bias"], padding=1)
    out = F.conv2d(F.relu(out), w[prefix + ".conv2.weight"], w[prefix + ".conv2.bias"], padding=1)
    return out + x


def _fusion(w, r, x, skip=None, size=None):
    p = f"head.scratch.refinenet{r}"
    if skip is not None:
        x = x + _rcu(w, p + ".resConfUnit1", skip)
    x = _rcu(w, p + ".resConfUnit2", x)
    if size is None:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    else:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return F.conv2d(x, w[p + ".out_conv.weight"], w[p + ".out_conv.bias"])


def network(w, cfg, window, cache=None):
    """VideoDepthAnything.forward on one window [T,3,H,W] → depth [T,H,W], and the 8 attention inputs."""
    frames, _, height, width = window.shape
    rows, cols = height // 14, width // 14
    tokens = encoder(w, window, cfg)
    layers = []
    for i, x in enumerate(tokens):
        x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], rows, cols)
        x = F.conv2d(x, w[f"head.projects.{i}.weight"], w[f"head.projects.{i}.bias"])
        if i == 0:
            x = F.conv_transpose2d(x, w["head.resize_layers.0.weight"], w["head.resize_layers.0.bias"], stride=4)
        elif i == 1:
            x = F.conv_transpose2d(x, w["head.resize_layers.1.weight"], w["head.resize_layers.1.bias"], stride=2)
        elif i == 3:
            x = F.conv2d(x, w["head.resize_layers.3.weight"], w["head.resize_layers.3.bias"], stride=2, padding=1)
        layers.append(x)
    caches = []

    def motion(m, x):
        out, new = temporal_module(w, m, x, frames, cache[2 * m:2 * m + 2] if cache is not None else None)
        caches.extend(new)
        return out

    layer3 = motion(0, layers[2])
    layer4 = motion(1, layers[3])
    rn = [F.conv2d(x, w[f"head.scratch.layer{i + 1}_rn.weight"], padding=1)
          for i, x in enumerate([layers[0], layers[1], layer3, layer4])]
    path4 = motion(2, _fusion(w, 4, rn[3], size=rn[2].shape[2:]))
    path3 = motion(3, _fusion(w, 3, path4, rn[2], size=rn[1].shape[2:]))
    path2 = _fusion(w, 2, path3, rn[1], size=rn[0].shape[2:])
    path1 = _fusion(w, 1, path2, rn[0])
    out = F.conv2d(path1, w["head.scratch.output_conv1.weight"], w["head.scratch.output_conv1.bias"], padding=1)
    out = F.interpolate(out, size=(rows * 14, cols * 14), mode="bilinear", align_corners=True)
    out = F.relu(F.conv2d(out, w["head.scratch.output_conv2.0.weight"], w["head.scratch.output_conv2.0.bias"],
                          padding=1))
    out = F.relu(F.conv2d(out, w["head.scratch.output_conv2.2.weight"], w["head.scratch.output_conv2.2.bias"]))
    out = F.relu(F.interpolate(out, size=(height, width), mode="bilinear", align_corners=True))
    return out[:, 0], caches


# ----- the inference scripts ------------------------------------------------------------------------------


def network_size(height: int, width: int, input_size: int = 518) -> tuple[int, int]:
    """infer_video_depth's input_size rule and Resize(keep_aspect_ratio, ensure_multiple_of=14, lower_bound)."""
    ratio = max(height, width) / min(height, width)
    if ratio > 1.78:
        input_size = int(input_size * 1.777 / ratio)
        input_size = round(input_size / 14) * 14
    scale_h, scale_w = input_size / height, input_size / width
    if scale_w > scale_h:
        scale_h = scale_w
    else:
        scale_w = scale_h

    def constrain(x):
        y = int(np.round(x / 14) * 14)
        if y < input_size:
            y = int(np.ceil(x / 14) * 14)
        return y

    return constrain(scale_h * height), constrain(scale_w * width)


def normalise(frames: np.ndarray) -> torch.Tensor:
    """uint8-range RGB frames [N,H,W,3] already at the network's size → [N,3,H,W] as NormalizeImage makes."""
    x = frames.astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def scale_shift(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    p, t = prediction.astype(np.float64).ravel(), target.astype(np.float64).ravel()
    a00, a01, a11 = (p * p).sum(), p.sum(), float(p.size)
    b0, b1 = (p * t).sum(), t.sum()
    det = a00 * a11 - a01 * a01
    if det == 0:
        return 1.0, 0.0
    return (a11 * b0 - a01 * b1) / det, (-a01 * b0 + a00 * b1) / det


@torch.no_grad()
def video_depth(w, encoder_name: str, inputs: torch.Tensor, metric: bool = False) -> np.ndarray:
    """infer_video_depth on normalised inputs [N,3,H,W] (frames at the network's size)."""
    cfg = PUBLISHED[encoder_name]
    step = INFER_LEN - OVERLAP
    n = inputs.shape[0]
    frame_list = list(inputs)
    frame_list += [frame_list[-1].clone()] * ((step - n % step) % step + (INFER_LEN - step))
    depth_list = []
    pre_input = None
    for frame_id in range(0, n, step):
        cur = torch.stack(frame_list[frame_id:frame_id + INFER_LEN])
        if pre_input is not None:
            cur[:OVERLAP] = pre_input[KEYFRAMES]
        depth, _ = network(w, cfg, cur)
        depth_list += [d.numpy() for d in depth]
        pre_input = cur
    aligned, ref_align = [], []
    align_len = OVERLAP - INTERP_LEN
    kf_align = KEYFRAMES[:align_len]
    for frame_id in range(0, len(depth_list), INFER_LEN):
        if not aligned:
            aligned += depth_list[:INFER_LEN]
            ref_align = [depth_list[frame_id + k] for k in kf_align]
            continue
        cur_align = [depth_list[frame_id + i] for i in range(len(kf_align))]
        scale, shift = (1.0, 0.0) if metric else scale_shift(np.concatenate(cur_align), np.concatenate(ref_align))
        pre = aligned[-INTERP_LEN:]
        post = [np.maximum(depth_list[frame_id + i] * scale + shift, 0)
                for i in range(align_len, OVERLAP)]
        weights = [i / (INTERP_LEN - 1) for i in range(INTERP_LEN)]
        aligned[-INTERP_LEN:] = [a * (1 - k) + b * k for a, b, k in zip(pre, post, weights, strict=True)]
        for i in range(OVERLAP, INFER_LEN):
            aligned.append(np.maximum(depth_list[frame_id + i] * scale + shift, 0))
        ref_align = ref_align[:1] + [np.maximum(depth_list[frame_id + k] * scale + shift, 0)
                                     for k in kf_align[1:]]
    return np.stack(aligned[:n])


@torch.no_grad()
def streamed_depth(w, encoder_name: str, inputs: torch.Tensor) -> np.ndarray:
    """infer_video_depth_one, frame after frame."""
    cfg = PUBLISHED[encoder_name]
    gap = (INFER_LEN - OVERLAP) * 2 - 1 - (OVERLAP - INTERP_LEN)
    caches, out = [], []
    for frame_id in range(inputs.shape[0]):
        if frame_id == 0:
            depth, cache = network(w, cfg, inputs[:1])
            caches = [cache] * INFER_LEN
        else:
            chosen = caches[0:2] + caches[-INFER_LEN + 3:]
            context = [torch.cat([c[i] for c in chosen], dim=1) for i in range(len(chosen[0]))]
            depth, cache = network(w, cfg, inputs[frame_id:frame_id + 1], context)
            caches.append(cache)
        if frame_id + INFER_LEN > gap + 1:
            del caches[1]
        out.append(depth[0].numpy())
    return np.stack(out)
