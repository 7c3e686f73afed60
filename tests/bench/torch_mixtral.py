"""Mixtral in plain torch 1.13: moet's PyTorch reference and `make bench` opponent.

Same maths as Hugging Face transformers' MixtralForCausalLM (see DESIGN.md,
"Numerics"), module and parameter names as on the Hub so state_dict keys are the
on-disk tensor names (`model.layers.L.block_sparse_moe.experts.E.w1.weight`, ...).
It is the opponent in the benchmark, so it is written to be fast on CPU in eager
torch without changing HF's structure (separate q/k/v/o and w1/w3/w2 weights):

- GQA without repeat_kv copies: the n_rep query heads sharing a kv head are
  folded into the row dimension of one batched matmul against that kv head.
- the causal mask and the 1/sqrt(head_dim) scale ride in baddbmm (one pass).
- experts: tokens are sorted by expert once (argsort), gathered once, each expert
  runs its three GEMMs on a contiguous slice, and one index_add scatters back
  (HF's eager loop does a torch.where + gather + scatter per expert).
- cross-entropy on all positions against labels shifted left (no logits copy).
  (A fused log_softmax+nll autograd Function measured no faster once the allocator
  reuses memory: 125 vs 115 ms on 2048 x 32000.)

    from torch_mixtral import MixtralForCausalLM, load_hf_dir, random_model
    model = load_hf_dir("model/")          # config.json + model.safetensors
    out = model(input_ids, labels)         # dict: logits, loss, ce, aux
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- safetensors


_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "U8": np.uint8, "I8": np.int8, "BF16": np.uint16}


def read_safetensors(path):
    """{name: torch tensor} of a .safetensors file (F32/F16/BF16/F64/ints).

    Raises ValueError on a truncated or malformed file."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: too short for a safetensors header" % path)
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError("%s: header length %d past end of file" % (path, n))
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError("%s: %s has unsupported dtype %s" % (path, name, dt))
        lo, hi = info["data_offsets"]
        if not 0 <= lo <= hi <= len(blob) - base:
            raise ValueError("%s: %s data past end of file" % (path, name))
        a = np.frombuffer(blob, dtype=_ST_DTYPES[dt], count=(hi - lo) // np.dtype(
            _ST_DTYPES[dt]).itemsize, offset=base + lo)
        if a.size != int(np.prod(info["shape"], dtype=np.int64)):
            raise ValueError("%s: %s has %d elements, shape says %s"
                             % (path, name, a.size, info["shape"]))
        a = a.reshape(info["shape"])
        if dt == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = torch.from_numpy(a.copy())
    return out


# ---------------------------------------------------------------- config


class MixtralConfig:
    """The HF config.json fields the model uses (rope_theta read from either place)."""

    def __init__(self, d):
        self.vocab_size = d["vocab_size"]
        self.hidden_size = d["hidden_size"]
        self.intermediate_size = d["intermediate_size"]
        self.num_hidden_layers = d["num_hidden_layers"]
        self.num_attention_heads = d["num_attention_heads"]
        self.num_key_value_heads = d.get("num_key_value_heads") or self.num_attention_heads
        self.head_dim = d.get("head_dim") or self.hidden_size // self.num_attention_heads
        self.num_local_experts = d["num_local_experts"]
        self.num_experts_per_tok = d["num_experts_per_tok"]
        self.rms_norm_eps = d.get("rms_norm_eps", 1e-5)
        rp = d.get("rope_parameters") or {}
        self.rope_theta = rp.get("rope_theta", d.get("rope_theta", 1e6))
        self.sliding_window = d.get("sliding_window")
        self.router_aux_loss_coef = d.get("router_aux_loss_coef", 0.02)
        self.tie_word_embeddings = d.get("tie_word_embeddings", False)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("heads %d not a multiple of kv heads %d"
                             % (self.num_attention_heads, self.num_key_value_heads))
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings is not supported")


# ---------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):                                   # x (..., C)
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (x * r)


class LoraLinear(nn.Module):
    """PEFT LoRA around a linear layer, its bias kept (None in Mixtral):
    y = W x + b + (alpha/r) B (A x); A [r, in], B [out, r]."""

    def __init__(self, base, r, alpha, rslora=False):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias      # frozen by the caller
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / math.sqrt(r) if rslora else alpha / r

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.scale * F.linear(F.linear(x, self.lora_A),
                                                                            self.lora_B)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_proj = nn.Linear(d, self.nh * hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * hd, bias=False)
        self.o_proj = nn.Linear(self.nh * hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        """x (B,T,C); cos, sin (T,hd); mask (T,T) additive 0 / -inf. Returns (B,T,C)."""
        B, T, _ = x.shape
        nh, nkv, hd = self.nh, self.nkv, self.hd
        rep = nh // nkv
        q = self.q_proj(x).view(B, T, nh, hd).transpose(1, 2)      # (B,nh,T,hd)
        k = self.k_proj(x).view(B, T, nkv, hd).transpose(1, 2)     # (B,nkv,T,hd)
        v = self.v_proj(x).view(B, T, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # query head h uses kv head h // rep: stack each group's rep heads as rows
        q = q.reshape(B * nkv, rep * T, hd)
        k = k.reshape(B * nkv, T, hd)
        v = v.reshape(B * nkv, T, hd)
        att = torch.baddbmm(mask.repeat(1, rep, 1) if rep > 1 else mask, q,
                            k.transpose(1, 2), alpha=hd ** -0.5)  # (B*nkv, rep*T, T)
        att = torch.softmax(att, dim=-1)
        y = torch.bmm(att, v)                                      # (B*nkv, rep*T, hd)
        y = y.view(B, nh, T, hd).transpose(1, 2).reshape(B, T, nh * hd)
        return self.o_proj(y)


class Expert(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)

    def forward(self, x):                                   # x (n, C)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoe(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.E, self.k = cfg.num_local_experts, cfg.num_experts_per_tok
        self.gate = nn.Linear(cfg.hidden_size, self.E, bias=False)
        self.experts = nn.ModuleList([Expert(cfg) for _ in range(self.E)])

    def forward(self, x):
        """x (B,T,C). Returns y (B,T,C), router logits and probs (N,E), picks per
        expert (E,)."""
        B, T, C = x.shape
        x = x.reshape(B * T, C)
        logits = self.gate(x)                                         # (N,E)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        w, sel = torch.topk(probs, self.k, dim=-1)                    # (N,k)
        w = w / w.sum(dim=-1, keepdim=True)
        sel = sel.view(-1)                                            # (N*k,)
        order = torch.argsort(sel)
        counts = torch.bincount(sel, minlength=self.E)
        tok = torch.div(order, self.k, rounding_mode="floor")         # token of each row
        xs = x.index_select(0, tok)                                   # (N*k, C) by expert
        ws = w.view(-1).index_select(0, order).unsqueeze(1)
        # An expert with no tokens still runs (on 0 rows) so its grads are zeros, not
        # None: AdamW then still moves it by momentum and weight decay, as HF's fused
        # expert tensor and moet's flat buffers do.
        outs = [self.experts[e](xe) for e, xe in enumerate(xs.split(counts.tolist()))]
        ys = torch.cat(outs) * ws
        y = torch.zeros_like(x).index_add(0, tok, ys)
        return y.view(B, T, C), logits, probs, counts


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.block_sparse_moe = SparseMoe(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        m, logits, probs, counts = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + m, logits, probs, counts


class MixtralModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MixtralForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = MixtralModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._rope = {}

    def rope_and_mask(self, T, dtype):
        """cos, sin (T, hd) in rotate_half layout and the (1,T,T) additive causal mask."""
        if (T, dtype) not in self._rope:
            hd, theta = self.cfg.head_dim, self.cfg.rope_theta
            inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
            fr = torch.outer(torch.arange(T, dtype=torch.float64), inv)
            emb = torch.cat((fr, fr), dim=-1)
            i = torch.arange(T)
            allowed = i[None, :] <= i[:, None]
            if self.cfg.sliding_window:
                allowed &= i[:, None] - i[None, :] < self.cfg.sliding_window
            mask = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))
            self._rope[T, dtype] = (emb.cos().to(dtype), emb.sin().to(dtype),
                                    mask.unsqueeze(0).to(dtype))
        return self._rope[T, dtype]

    def forward(self, input_ids, labels=None):
        """input_ids (B,T) int64; labels (B,T) with -100 = not a target (HF shift inside).
        Returns dict(logits (B,T,V), router_logits [(N,E)] per layer, and with labels
        loss = ce + coef * aux, ce, aux)."""
        B, T = input_ids.shape
        cos, sin, mask = self.rope_and_mask(T, self.lm_head.weight.dtype)
        x = self.model.embed_tokens(input_ids)
        all_logits, all_probs, all_counts = [], [], []
        for layer in self.model.layers:
            x, router_logits, probs, counts = layer(x, cos, sin, mask)
            all_logits.append(router_logits)
            all_probs.append(probs)
            all_counts.append(counts)
        logits = self.lm_head(self.model.norm(x))
        out = dict(logits=logits, router_logits=all_logits)
        if labels is None:
            return out
        shifted = torch.cat((labels[:, 1:], labels.new_full((B, 1), -100)), dim=1)
        ce = F.cross_entropy(logits.view(B * T, -1), shifted.view(-1), ignore_index=-100)
        aux = load_balancing_loss(all_probs, all_counts, self.cfg.num_experts_per_tok)
        out.update(ce=ce, aux=aux, loss=ce + self.cfg.router_aux_loss_coef * aux)
        return out


def load_balancing_loss(probs, counts, top_k):
    """HF aux loss over all layers' router rows: E * sum_e f_e * P_e, f_e = picks of
    e / rows (no gradient), P_e = mean router prob of e. probs [(N,E)], counts [(E,)]."""
    rows = sum(p.shape[0] for p in probs)
    E = probs[0].shape[1]
    f = torch.stack(counts).sum(0).float() / rows
    P = torch.stack([p.sum(0) for p in probs]).sum(0) / rows
    return E * (f * P).sum()


# ---------------------------------------------------------------- construction


def random_model(config, seed=0):
    """A model from an HF config dict: linears and embedding ~ N(0, 0.02), norms 1."""
    cfg = MixtralConfig(config)
    torch.manual_seed(seed)
    with torch.no_grad():
        m = MixtralForCausalLM(cfg)
        for name, p in m.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return m


def load_hf_dir(path):
    """Model from a save_pretrained dir: config.json + model.safetensors (or shards)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = MixtralConfig(json.load(f))
    m = MixtralForCausalLM(cfg)
    idx = os.path.join(path, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(idx):
        with open(idx) as f:
            for shard in sorted(set(json.load(f)["weight_map"].values())):
                tensors.update(read_safetensors(os.path.join(path, shard)))
    else:
        tensors = read_safetensors(os.path.join(path, "model.safetensors"))
    load_tensors(m, tensors)
    return m


def load_tensors(m, tensors):
    """Copy {HF name: tensor} into m; every parameter must be present with its shape."""
    params = dict(m.named_parameters())
    missing = sorted(set(params) - set(tensors))
    unknown = sorted(set(tensors) - set(params))
    if missing or unknown:
        raise ValueError("tensor names differ: missing %s, unknown %s"
                         % (missing[:3], unknown[:3]))
    with torch.no_grad():
        for name, p in params.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError("%s: shape %s, expected %s"
                                 % (name, tuple(t.shape), tuple(p.shape)))
            p.copy_(t.float())


PEFT_PREFIX = "base_model.model."


def add_lora(m, r, alpha, targets=("q_proj", "k_proj", "v_proj", "o_proj"), rslora=False):
    """Wrap the attention projections in LoRA and freeze every base weight.
    Returns {PEFT key (no '.default'): parameter} of the trainable LoRA weights."""
    for p in m.parameters():
        p.requires_grad_(False)
    lora = {}
    for li, layer in enumerate(m.model.layers):
        for t in targets:
            wrapped = LoraLinear(getattr(layer.self_attn, t), r, alpha, rslora)
            setattr(layer.self_attn, t, wrapped)
            key = "%smodel.layers.%d.self_attn.%s" % (PEFT_PREFIX, li, t)
            lora[key + ".lora_A.weight"] = wrapped.lora_A
            lora[key + ".lora_B.weight"] = wrapped.lora_B
    return lora


def load_peft_adapter(m, path, add=None):
    """add (add_lora by default) from a PEFT adapter dir (adapter_config.json +
    adapter_model.safetensors)."""
    with open(os.path.join(path, "adapter_config.json")) as f:
        ac = json.load(f)
    lora = (add or add_lora)(m, ac["r"], ac["lora_alpha"], ac["target_modules"],
                             ac.get("use_rslora", False))
    load_named(lora, read_safetensors(os.path.join(path, "adapter_model.safetensors")))
    return lora


def load_named(params, tensors):
    if set(params) != set(tensors):
        raise ValueError("adapter keys differ: %s"
                         % sorted(set(params) ^ set(tensors))[:3])
    with torch.no_grad():
        for k, p in params.items():
            if tuple(tensors[k].shape) != tuple(p.shape):
                raise ValueError("%s: shape %s, expected %s"
                                 % (k, tuple(tensors[k].shape), tuple(p.shape)))
            p.copy_(tensors[k].float())


def make_adamw(params, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, foreach=None):
    """torch AdamW with weight decay on tensors of ndim >= 2 only (as moet)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [dict(params=decay, weight_decay=weight_decay)]
    if rest:
        groups.append(dict(params=rest, weight_decay=0.0))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=foreach)
