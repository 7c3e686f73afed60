"""Every MoE family moet trains, in plain torch 1.13: moet's PyTorch reference for
Mixtral, Qwen3-MoE, Qwen2-MoE and OLMoE.

Written from Hugging Face transformers' modeling code (mixtral, qwen3_moe, qwen2_moe, olmoe,
transformers 5.x) with its maths and its module names, so named_parameters() are the on-disk
tensor names (`model.layers.L.mlp.experts.E.gate_proj.weight`, `...self_attn.q_norm.weight`,
`...mlp.shared_expert_gate.weight`, ...):

- attention: q/k/v projections with optional bias (Qwen2-MoE qkv_bias; Qwen3-MoE and OLMoE
  attention_bias, which also puts a bias on o_proj); Qwen3-MoE RMSNorms each head of q and k
  (weights [head_dim]) after the projection, OLMoE the whole q and k projections (weights
  [H*hd] and [KV*hd]); OLMoE clamps q, k, v to [-clip_qkv, clip_qkv] after the norms; then
  rotate_half RoPE, GQA, causal softmax(q k^T / sqrt(hd)) v, o_proj.
- router: logits = gate(x) (raw logits are what the load-balancing loss sees), probs =
  softmax in float32, top-k, renormalised when norm_topk_prob (Mixtral: always).
- experts: down(silu(gate(x)) * up(x)) (Mixtral's w1, w3, w2), weighted by the top-k weights;
  Qwen2-MoE adds sigmoid(shared_expert_gate(x)) * shared_expert(x) to every token.
- Qwen's dense layers: a layer in mlp_only_layers, or not a multiple of decoder_sparse_step
  (1-based), is one MLP of intermediate_size (the experts use moe_intermediate_size).
- loss: cross-entropy with HF's shift, + router_aux_loss_coef * E * sum_e f_e P_e over the rows
  of all MoE layers together (torch_mixtral.load_balancing_loss); embedding row pad_token_id
  gets no gradient (nn.Embedding padding_idx); tie_word_embeddings shares the embedding.

    import torch_families as tf
    m = tf.load_hf_dir("model/")            # config.json + model.safetensors
    out = m(input_ids, labels)              # dict: logits, router_logits (MoE layers), loss, ce, aux
    lora = tf.add_lora(m, r, alpha, ["q_proj", "gate_proj"])   # PEFT keys -> parameters

A reference, not a benchmark: clarity over speed (tests/bench/torch_mixtral.py is the fast
Mixtral). Checked against the golden cases by tests/t_torch_ref.sh.
"""
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mixtral as tm  # noqa: E402  (safetensors reader, RMSNorm, LoRA, aux loss, AdamW)

FAMILIES = ("mixtral", "qwen3_moe", "qwen2_moe", "olmoe")
ARCH = {"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
        "qwen2_moe": "Qwen2MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}


class FamilyConfig:
    """The config.json fields the model uses, with each family's transformers defaults."""

    def __init__(self, d):
        fam = self.family = d.get("model_type", "mixtral")
        if fam not in FAMILIES:
            raise ValueError("model_type %r is not one of %s" % (fam, ", ".join(FAMILIES)))
        qwen = fam in ("qwen3_moe", "qwen2_moe")
        self.vocab_size = d["vocab_size"]
        self.hidden_size = d["hidden_size"]
        self.num_hidden_layers = d["num_hidden_layers"]
        self.num_attention_heads = d["num_attention_heads"]
        self.num_key_value_heads = d.get("num_key_value_heads") or self.num_attention_heads
        self.head_dim = d.get("head_dim") or self.hidden_size // self.num_attention_heads
        self.num_experts = d.get("num_local_experts" if fam == "mixtral" else "num_experts")
        self.num_experts_per_tok = d["num_experts_per_tok"]
        self.expert_size = d["moe_intermediate_size"] if qwen else d["intermediate_size"]
        self.dense_size = d["intermediate_size"]
        self.shared_size = d.get("shared_expert_intermediate_size", 0) if fam == "qwen2_moe" else 0
        self.norm_topk = True if fam == "mixtral" else bool(d.get("norm_topk_prob", False))
        self.sparse_step = d.get("decoder_sparse_step") or 1 if qwen else 1
        self.mlp_only = set(d.get("mlp_only_layers") or []) if qwen else set()
        self.qkv_bias = bool(d.get("qkv_bias", True)) if fam == "qwen2_moe" else bool(d.get("attention_bias", False))
        self.o_bias = fam in ("qwen3_moe", "olmoe") and bool(d.get("attention_bias", False))
        self.qk_norm = {"qwen3_moe": "head", "olmoe": "full"}.get(fam)
        self.clip_qkv = d.get("clip_qkv") if fam == "olmoe" else None
        self.rms_norm_eps = d.get("rms_norm_eps", 1e-6 if qwen else 1e-5)
        rp = d.get("rope_parameters") or {}
        self.rope_theta = rp.get("rope_theta", d.get("rope_theta", 1e6 if fam == "mixtral" else 1e4))
        self.sliding_window = d.get("sliding_window") if fam == "mixtral" else None
        self.router_aux_loss_coef = d.get("router_aux_loss_coef", {"mixtral": 0.02, "olmoe": 0.01}.get(fam, 0.001))
        self.tie_word_embeddings = bool(d.get("tie_word_embeddings", False))
        pad = d.get("pad_token_id")
        self.pad_token_id = pad if pad is not None and 0 <= pad < self.vocab_size else None
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("heads %d not a multiple of kv heads %d"
                             % (self.num_attention_heads, self.num_key_value_heads))

    def is_moe(self, layer):
        return layer not in self.mlp_only and (layer + 1) % self.sparse_step == 0


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, hd, H, KV = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.cfg, self.nh, self.nkv, self.hd = cfg, H, KV, hd
        self.q_proj = nn.Linear(d, H * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, KV * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, KV * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(H * hd, d, bias=cfg.o_bias)
        if cfg.qk_norm == "head":
            self.q_norm = tm.RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = tm.RMSNorm(hd, cfg.rms_norm_eps)
        elif cfg.qk_norm == "full":
            self.q_norm = tm.RMSNorm(H * hd, cfg.rms_norm_eps)
            self.k_norm = tm.RMSNorm(KV * hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        """x (B,T,C); cos, sin (T,hd); mask (T,T) additive 0 / -inf. Returns (B,T,C)."""
        B, T, _ = x.shape
        H, KV, hd, cfg = self.nh, self.nkv, self.hd, self.cfg
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if cfg.qk_norm == "head":
            q = self.q_norm(q.view(B, T, H, hd)).view(B, T, H * hd)
            k = self.k_norm(k.view(B, T, KV, hd)).view(B, T, KV * hd)
        elif cfg.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.clip_qkv is not None:
            c = cfg.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        q = q.view(B, T, H, hd).transpose(1, 2)                     # (B,H,T,hd)
        k = k.view(B, T, KV, hd).transpose(1, 2)
        v = v.view(B, T, KV, hd).transpose(1, 2)
        q = q * cos + tm.rotate_half(q) * sin
        k = k * cos + tm.rotate_half(k) * sin
        rep = H // KV                                               # query head h uses kv head h // rep
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = torch.softmax(q @ k.transpose(2, 3) * hd ** -0.5 + mask, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * hd)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU MLP under HF's names: gate_proj / up_proj / down_proj, or Mixtral's w1 / w3 / w2."""

    def __init__(self, d, f, mixtral=False):
        super().__init__()
        self.names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
        for name, (i, o) in zip(self.names, ((d, f), (d, f), (f, d))):
            setattr(self, name, nn.Linear(i, o, bias=False))

    def forward(self, x):
        g, u, dn = (getattr(self, n) for n in self.names)
        return dn(F.silu(g(x)) * u(x))


class SparseMoe(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.E, self.k, self.norm_topk = cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk
        self.gate = nn.Linear(cfg.hidden_size, self.E, bias=False)
        self.experts = nn.ModuleList([MLP(cfg.hidden_size, cfg.expert_size, cfg.family == "mixtral")
                                      for _ in range(self.E)])
        if cfg.shared_size:
            self.shared_expert = MLP(cfg.hidden_size, cfg.shared_size)
            self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, x):
        """x (N,C). Returns y (N,C), raw router logits and probs (N,E), picks per expert (E,)."""
        logits = self.gate(x)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        w, sel = torch.topk(probs, self.k, dim=-1)                    # (N,k)
        if self.norm_topk:
            w = w / w.sum(dim=-1, keepdim=True)
        w = w.to(x.dtype)
        y = torch.zeros_like(x)
        counts = torch.bincount(sel.view(-1), minlength=self.E)
        for e, expert in enumerate(self.experts):
            # every expert runs, on 0 rows when unpicked, so its grads are zeros, not None
            tok, slot = torch.nonzero(sel == e, as_tuple=True)
            y = y.index_add(0, tok, expert(x[tok]) * w[tok, slot, None])
        if hasattr(self, "shared_expert"):
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return y, logits, probs, counts


class DecoderLayer(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.input_layernorm = tm.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = tm.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.moe = cfg.is_moe(layer)
        ffn = SparseMoe(cfg) if self.moe else MLP(cfg.hidden_size, cfg.dense_size)
        self.ffn_name = "block_sparse_moe" if cfg.family == "mixtral" else "mlp"
        setattr(self, self.ffn_name, ffn)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        B, T, C = h.shape
        ffn = getattr(self, self.ffn_name)
        if not self.moe:
            return x + ffn(h), None
        y, logits, probs, counts = ffn(h.reshape(B * T, C))
        return x + y.view(B, T, C), (logits, probs, counts)


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = tm.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MoeForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rope_and_mask(self, T, dtype):
        """cos, sin (T, hd) in rotate_half layout (computed in float32, as HF) and the (T,T)
        additive causal mask (Mixtral's sliding window included)."""
        hd, theta = self.cfg.head_dim, self.cfg.rope_theta
        inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd)
        fr = torch.outer(torch.arange(T).float(), inv)
        emb = torch.cat((fr, fr), dim=-1)
        i = torch.arange(T)
        allowed = i[None, :] <= i[:, None]
        if self.cfg.sliding_window:
            allowed &= i[:, None] - i[None, :] < self.cfg.sliding_window
        mask = torch.zeros(T, T, dtype=dtype).masked_fill(~allowed, float("-inf"))
        return emb.cos().to(dtype), emb.sin().to(dtype), mask

    def forward(self, input_ids, labels=None):
        """input_ids (B,T) int64; labels (B,T) with -100 = not a target (HF shift inside).
        Returns dict(logits (B,T,V), router_logits {layer: (N,E)} of the MoE layers, and with
        labels loss = ce + coef * aux, ce, aux)."""
        B, T = input_ids.shape
        cos, sin, mask = self.rope_and_mask(T, self.lm_head.weight.dtype)
        x = self.model.embed_tokens(input_ids)
        router, probs, counts = {}, [], []
        for li, layer in enumerate(self.model.layers):
            x, r = layer(x, cos, sin, mask)
            if r is not None:
                router[li] = r[0]
                probs.append(r[1])
                counts.append(r[2])
        logits = self.lm_head(self.model.norm(x))
        out = dict(logits=logits, router_logits=router)
        if labels is None:
            return out
        shifted = torch.cat((labels[:, 1:], labels.new_full((B, 1), -100)), dim=1)
        ce = F.cross_entropy(logits.view(B * T, -1).float(), shifted.view(-1), ignore_index=-100)
        aux = tm.load_balancing_loss(probs, counts, self.cfg.num_experts_per_tok) if probs else ce * 0
        out.update(ce=ce, aux=aux, loss=ce + self.cfg.router_aux_loss_coef * aux)
        return out


# ---------------------------------------------------------------- construction


def random_model(config, seed=0, std=0.02):
    """A model from an HF config dict: matrices and embedding ~ N(0, std), norms 1, biases 0."""
    cfg = FamilyConfig(config)
    torch.manual_seed(seed)
    with torch.no_grad():
        m = MoeForCausalLM(cfg)
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)
    return m


def load_hf_dir(path):
    """Model from a save_pretrained dir: config.json + model.safetensors (or shards)."""
    with open(os.path.join(path, "config.json")) as f:
        m = MoeForCausalLM(FamilyConfig(json.load(f)))
    idx = os.path.join(path, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(idx):
        with open(idx) as f:
            for shard in sorted(set(json.load(f)["weight_map"].values())):
                tensors.update(tm.read_safetensors(os.path.join(path, shard)))
    else:
        tensors = tm.read_safetensors(os.path.join(path, "model.safetensors"))
    tm.load_tensors(m, tensors)
    return m


def add_lora(m, r, alpha, targets, rslora=False):
    """PEFT LoRA on every nn.Linear whose own name is in targets (q_proj ... o_proj; gate_proj /
    up_proj / down_proj: every expert, dense MLP and shared expert; Mixtral's w1 / w2 / w3);
    every base weight frozen. Returns {PEFT key: parameter} of the trainable LoRA weights."""
    for p in m.parameters():
        p.requires_grad_(False)
    lora = {}
    for path, mod in list(m.named_modules()):
        for name, child in list(mod.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                wrapped = tm.LoraLinear(child, r, alpha, rslora)
                setattr(mod, name, wrapped)
                key = "%s%s.%s" % (tm.PEFT_PREFIX, path, name)
                lora[key + ".lora_A.weight"] = wrapped.lora_A
                lora[key + ".lora_B.weight"] = wrapped.lora_B
    return lora


def load_peft_adapter(m, path):
    """add_lora from a PEFT adapter dir (adapter_config.json + adapter_model.safetensors)."""
    return tm.load_peft_adapter(m, path, add=add_lora)


def merged_state(m, lora, scale):
    """{HF name: weight} of m with every LoRA folded in: W + scale * B A."""
    out = {}
    for name, p in m.named_parameters():
        if "lora_" not in name:
            out[name] = p.detach().clone()
    for key in {k.rsplit(".lora_", 1)[0] for k in lora}:
        name = key[len(tm.PEFT_PREFIX):] + ".weight"
        out[name] = out[name] + scale * lora[key + ".lora_B.weight"].detach() @ lora[key + ".lora_A.weight"].detach()
    return out


def hf_config(cfg_dict):
    """config.json for a dict of HF keys (model_type, architectures filled in)."""
    d = dict(cfg_dict)
    d.setdefault("model_type", "mixtral")
    d.setdefault("architectures", [ARCH[d["model_type"]]])
    d.setdefault("hidden_act", "silu")
    return d


__all__ = ["FamilyConfig", "MoeForCausalLM", "random_model", "load_hf_dir", "add_lora", "load_peft_adapter",
           "merged_state", "hf_config"]
