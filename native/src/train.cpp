#include "train.h"

// ggml_graph_view, for the node-by-node profile (SQLR1_TRAIN_PROFILE=2); the header's unused helpers are ggml's.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "ggml-impl.h"
#pragma GCC diagnostic pop

#ifdef SQLR1_WITH_CUDA
#include "attention.h"
#include "dequant.h"
#include "ggml-backend-impl.h"  // ggml_backend_event::context, the CUDA event the project's stream waits on
#include "ggml-cuda.h"
#include "stream.h"
#include "swiglu.h"
#include <optional>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace sqlr1 {

// ---------------------------------------------------------------------------------------------------------
// The adapter's parameter store

std::shared_ptr<param_store> lora_adapter_params(const std::shared_ptr<lora_adapter> & a) {
    static std::mutex mutex;  // the addon's main thread and trainer creation on a worker may both ask
    std::lock_guard<std::mutex> lock(mutex);
    if (auto s = a->params.lock()) return s;
    auto s = param_store_init(a->m->backends);
    s->owner = a;
    for (ggml_tensor * t : a->tensors()) param_store_adopt(*s, ggml_get_name(t), t);
    a->params = s;
    return s;
}

// ---------------------------------------------------------------------------------------------------------
// Graph pieces

namespace {

constexpr size_t TRAIN_GRAPH_NODES = 16384;

// A graph's metadata lives in the trainer's reusable buffer (a layer's backward is one graph of ~300 nodes,
// built 36 times per step for a 3B model: no allocation each time).
struct graph_ctx {
    ggml_context * ctx = nullptr;
    ggml_cgraph * gf = nullptr;
    graph_ctx(trainer & t, size_t n_nodes) {
        const size_t need = ggml_tensor_overhead() * n_nodes + ggml_graph_overhead_custom(n_nodes, false);
        if (t.meta.size() < need) t.meta.resize(need);
        ggml_init_params ip = { need, t.meta.data(), true };
        ctx = ggml_init(ip);
        if (!ctx) fail("ERR_OUT_OF_MEMORY", "could not create a training graph context");
        gf = ggml_new_graph_custom(ctx, n_nodes, false);
    }
    ~graph_ctx() { ggml_free(ctx); }
};

// What one graph needs besides the weights: positions and the causal mask (made when first asked for, from
// the trainer's host copies), and a place for per-graph inputs.
struct graph_inputs {
    ggml_tensor * pos = nullptr;      // I32 [T]: 0..nt-1 per sequence
    ggml_tensor * mask = nullptr;     // F32 [nt, nt]: 0 where key <= query, -inf above
    ggml_tensor * mask_f16 = nullptr; // the same in F16 per sequence [nt, nt, 1, ns], for flash attention
    std::vector<std::pair<ggml_tensor *, const void *>> shared;  // data the trainer holds
    std::vector<std::pair<ggml_tensor *, std::vector<int32_t>>> i32;
    std::vector<std::pair<ggml_tensor *, std::vector<int64_t>>> i64;
    std::vector<std::pair<ggml_tensor *, std::vector<float>>> f32;
};

// The host copies of the shape inputs, made once per batch shape: a backward builds several graphs per layer.
const trainer::shape_inputs & shape_host(trainer & t, int64_t ns, int64_t nt) {
    trainer::shape_inputs & c = t.shape_cache;
    if (c.ns == ns && c.nt == nt) return c;
    c.pos.resize(ns * nt);
    for (int64_t s = 0; s < ns; s++) for (int64_t i = 0; i < nt; i++) c.pos[s * nt + i] = (int32_t) i;
    c.mask.resize(nt * nt);
    for (int64_t q = 0; q < nt; q++) for (int64_t k = 0; k < nt; k++) c.mask[q * nt + k] = k <= q ? 0.0f : -INFINITY;
    // Flash attention's mask, one copy per sequence [nt, nt, 1, ns]: ggml's CUDA kernel, when it scans the mask
    // for tiles to skip, steps through it per sequence and does not broadcast a single one.
    c.mask16.resize(ns * nt * nt);
    for (size_t i = 0; i < c.mask16.size(); i++) c.mask16[i] = ggml_fp32_to_fp16(c.mask[i % c.mask.size()]);
    c.ns = ns;
    c.nt = nt;
    return c;
}

void shape_device_free(trainer & t) {
    if (t.shape_dev.buf) ggml_backend_buffer_free(t.shape_dev.buf);
    if (t.shape_dev.ctx) ggml_free(t.shape_dev.ctx);
    t.shape_dev = {};
}

#ifdef SQLR1_WITH_CUDA
// Puts the shape inputs in device memory (trainer::shape_dev) for the batch's shape.
void shape_device_upload(trainer & t, int64_t ns, int64_t nt) {
    if (t.shape_dev.buf && t.shape_dev.ns == ns && t.shape_dev.nt == nt) return;
    shape_device_free(t);
    const trainer::shape_inputs & h = shape_host(t, ns, nt);
    ggml_init_params ip = { ggml_tensor_overhead() * 2, nullptr, true };
    t.shape_dev.ctx = ggml_init(ip);
    if (!t.shape_dev.ctx) fail("ERR_OUT_OF_MEMORY", "could not create the shape inputs' context");
    t.shape_dev.pos = ggml_new_tensor_1d(t.shape_dev.ctx, GGML_TYPE_I32, ns * nt);
    t.shape_dev.mask16 = ggml_new_tensor_4d(t.shape_dev.ctx, GGML_TYPE_F16, nt, nt, 1, ns);
    t.shape_dev.buf = ggml_backend_alloc_ctx_tensors(t.shape_dev.ctx, t.m->backends->primary);
    if (!t.shape_dev.buf) {
        shape_device_free(t);
        fail("ERR_OUT_OF_MEMORY", "could not allocate the shape inputs on %s", t.m->backends->device.c_str());
    }
    ggml_backend_tensor_set(t.shape_dev.pos, h.pos.data(), 0, ggml_nbytes(t.shape_dev.pos));
    ggml_backend_tensor_set(t.shape_dev.mask16, h.mask16.data(), 0, ggml_nbytes(t.shape_dev.mask16));
    t.shape_dev.ns = ns;
    t.shape_dev.nt = nt;
}
#endif

// The adapter's pair on a layer's target, or null where it has none.
const lora_pair * adapter_pair(const trainer & t, int64_t il, int target) {
    if (!t.lora) return nullptr;
    const lora_pair & p = t.lora->layers[il][target];
    return p.a ? &p : nullptr;
}

struct builder {
    trainer & t;
    ggml_context * ctx;
    ggml_cgraph * gf;
    graph_inputs & in;
    int64_t ns, nt;
    bool use_lora;

    const hparams & hp() const { return t.m->hp; }
    int64_t T() const { return ns * nt; }

    ggml_tensor * input_i32(int64_t n, std::vector<int32_t> data) {
        ggml_tensor * x = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
        ggml_set_input(x);
        in.i32.emplace_back(x, std::move(data));
        return x;
    }
    ggml_tensor * input_i64(int64_t n, std::vector<int64_t> data) {
        ggml_tensor * x = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n);
        ggml_set_input(x);
        in.i64.emplace_back(x, std::move(data));
        return x;
    }
    ggml_tensor * input_f32_2d(int64_t a, int64_t b, std::vector<float> data) {
        ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, a, b);
        ggml_set_input(x);
        in.f32.emplace_back(x, std::move(data));
        return x;
    }

    const trainer::shape_inputs & shape() { return shape_host(t, ns, nt); }
    bool shape_on_device() const { return t.shape_dev.pos && t.shape_dev.ns == ns && t.shape_dev.nt == nt; }
    ggml_tensor * shared_input(ggml_type type, int64_t a, int64_t b, const void * data, int64_t d = 1) {
        ggml_tensor * x = ggml_new_tensor_4d(ctx, type, a, b, 1, d);
        ggml_set_input(x);
        in.shared.emplace_back(x, data);
        return x;
    }
    ggml_tensor * positions() {
        if (!in.pos) in.pos = shape_on_device() ? t.shape_dev.pos : shared_input(GGML_TYPE_I32, T(), 1, shape().pos.data());
        return in.pos;
    }
    ggml_tensor * mask() {
        if (!in.mask) in.mask = shared_input(GGML_TYPE_F32, nt, nt, shape().mask.data());
        return in.mask;
    }
    ggml_tensor * mask_f16() {
        if (!in.mask_f16) in.mask_f16 = shape_on_device() ? t.shape_dev.mask16 : shared_input(GGML_TYPE_F16, nt, nt, shape().mask16.data(), ns);
        return in.mask_f16;
    }

    ggml_tensor * frozen(ggml_tensor * w) { return frozen_weight(ctx, w, t.iota, t.compute, false, t.cuda); }

    ggml_tensor * cast(ggml_tensor * x) { return ggml_cast(ctx, x, t.compute); }  // also makes a permuted view contiguous

    const lora_pair * pair(int64_t il, int target) const { return use_lora ? adapter_pair(t, il, target) : nullptr; }

    // Adds g to a parameter's gradient accumulator, in place (the store names parameters as the adapter's tensors).
    void accumulate(ggml_tensor * value, ggml_tensor * g) {
        ggml_build_forward_expand(gf, ggml_add_inplace(ctx, param_store_get(*t.params, ggml_get_name(value)).grad, g));
    }
};

// One linear layer y = W x (+ b) (+ s B (A x)): what its backward needs.
struct linear_fwd {
    ggml_tensor * wc = nullptr;       // the frozen weight in the compute type [in, out]; fused: [W; B] [in + r, out]
    ggml_tensor * x = nullptr;        // input [in, T]
    ggml_tensor * zs = nullptr;       // s * A x [r, T] (LoRA only)
    const lora_pair * p = nullptr;
    bool fused = false;               // the LoRA product rides in the main matrix product (see linear())
    ggml_tensor * y = nullptr;
};

linear_fwd linear(builder & b, int64_t il, int target, ggml_tensor * w, ggml_tensor * bias, ggml_tensor * x, bool for_backward) {
    ggml_context * ctx = b.ctx;
    linear_fwd f;
    f.x = x;
    f.p = b.pair(il, target);
    if (f.p) f.zs = ggml_scale(ctx, ggml_mul_mat(ctx, f.p->a, x), b.t.lora->scale());  // the scale on the small [r, T]
    // In forward-only passes, where the output is at least as wide as the input, W x + B zs runs as one product
    // [W; B]^T [x; zs]: the [out, T] LoRA output and its addition, memory-bound passes over the widest tensor,
    // disappear. (In the backward's recompute the concatenations cost more than they save.)
    f.fused = f.p && !for_backward && w->ne[1] >= w->ne[0];
    if (f.fused) {
        ggml_tensor * bc = f.p->b->type == b.t.compute ? f.p->b : ggml_cast(ctx, f.p->b, b.t.compute);
        f.wc = ggml_concat(ctx, b.frozen(w), bc, 0);                                                   // [in + r, out]
        f.y = ggml_mul_mat(ctx, f.wc, ggml_concat(ctx, x, f.zs, 0));
        if (bias) f.y = ggml_add(ctx, f.y, bias);
        return f;
    }
    f.wc = b.frozen(w);
    f.y = ggml_mul_mat(ctx, f.wc, x);
    if (bias) f.y = ggml_add(ctx, f.y, bias);
    if (f.p) f.y = ggml_add(ctx, f.y, ggml_mul_mat(ctx, f.p->b, f.zs));
    return f;
}

// dx = W^T dy (+ A dz), and the adapter's gradients: dB = zs dy^T, dz = s B^T dy, dA = x dz^T.
ggml_tensor * linear_back(builder & b, const linear_fwd & f, ggml_tensor * dy, bool need_dx) {
    ggml_context * ctx = b.ctx;
    // The transposed scratch copy comes from the converted weight the recompute already made.
    if (!f.p) return need_dx ? ggml_mul_mat(ctx, transpose01(ctx, f.wc), dy) : nullptr;
    b.accumulate(f.p->b, ggml_out_prod(ctx, f.zs, dy));                                                // [r, out]
    ggml_tensor * dx = nullptr, * dzs;
    if (f.fused) {
        const int64_t in = f.x->ne[0], r = f.zs->ne[0], T = dy->ne[1];
        ggml_tensor * dxa = ggml_mul_mat(ctx, transpose01(ctx, f.wc), dy);                               // [in + r, T]
        dx = ggml_view_2d(ctx, dxa, in, T, dxa->nb[1], 0);
        dzs = ggml_cont(ctx, ggml_view_2d(ctx, dxa, r, T, dxa->nb[1], in * sizeof(float)));
    } else {
        if (need_dx) dx = ggml_mul_mat(ctx, transpose01(ctx, f.wc), dy);
        dzs = ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, f.p->b)), dy);                       // [r, T]
    }
    ggml_tensor * dz = ggml_scale(ctx, dzs, b.t.lora->scale());
    b.accumulate(f.p->a, ggml_out_prod(ctx, f.x, dz));                                                 // [in, r]
    if (!need_dx) return nullptr;
    return ggml_add(ctx, dx, ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, f.p->a)), dz));
}

ggml_tensor * rms_norm_w(builder & b, ggml_tensor * x, ggml_tensor * w) {
    return ggml_mul(b.ctx, ggml_rms_norm(b.ctx, x, b.hp().rms_eps), w);
}

ggml_tensor * rms_norm_w_back(builder & b, ggml_tensor * x, ggml_tensor * w, ggml_tensor * dn) {
    return ggml_rms_norm_back(b.ctx, ggml_mul(b.ctx, dn, w), x, b.hp().rms_eps);
}

ggml_tensor * rope(builder & b, ggml_tensor * x, bool back) {
    const hparams & hp = b.hp();
    if (back) return ggml_rope_ext_back(b.ctx, x, b.positions(), nullptr, hp.n_rot, hp.rope_mode, hp.n_ctx_train, hp.rope_freq_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
    return ggml_rope_ext(b.ctx, x, b.positions(), nullptr, hp.n_rot, hp.rope_mode, hp.n_ctx_train, hp.rope_freq_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
}

// Sums the query heads of each KV group: x [unit, H, outer] (contiguous) -> [unit, H / group, outer]. Query
// head h uses KV head h / group, as ggml's matrix product broadcasts.
ggml_tensor * group_sum(builder & b, ggml_tensor * x, int64_t group) {
    if (group == 1) return x;
    const int64_t hk = x->ne[1] / group;
    ggml_tensor * acc = nullptr;
    for (int64_t g = 0; g < group; g++) {
        ggml_tensor * v = ggml_view_3d(b.ctx, x, x->ne[0], hk, x->ne[2], x->nb[1] * group, x->nb[2], x->nb[1] * g);
        acc = acc ? ggml_add(b.ctx, acc, v) : ggml_cont(b.ctx, v);
    }
    return acc;
}

struct layer_fwd {
    ggml_tensor * x = nullptr, * n1 = nullptr, * x2 = nullptr, * n2 = nullptr;
    linear_fwd q, k, v, o, gate, up, down;
    ggml_tensor * q3 = nullptr, * k3 = nullptr, * v3 = nullptr;    // F32 [hd, H or Hk, T], Q and K after RoPE
    ggml_tensor * qp = nullptr;                                    // F32 [hd, nt, H, ns]
    ggml_tensor * kp = nullptr, * vp = nullptr;                    // compute type [hd, nt, Hk, ns]
    ggml_tensor * P = nullptr;                                     // softmax [nt_k, nt_q, H, ns]
    ggml_tensor * g = nullptr, * u = nullptr;                      // gate, up
    ggml_tensor * y = nullptr;
};

// The attention's inputs: norm, the Q, K, V products, RoPE.
void attn_inputs(builder & b, int64_t il, ggml_tensor * x, bool for_backward, layer_fwd & f) {
    ggml_context * ctx = b.ctx;
    const hparams & hp = b.hp();
    const layer_weights & L = b.t.m->layers[il];
    f.x = x;
    f.n1 = rms_norm_w(b, x, L.attn_norm);
    f.q = linear(b, il, LORA_Q, L.wq, L.bq, f.n1, for_backward);
    f.k = linear(b, il, LORA_K, L.wk, L.bk, f.n1, for_backward);
    f.v = linear(b, il, LORA_V, L.wv, L.bv, f.n1, for_backward);
    f.q3 = rope(b, ggml_reshape_3d(ctx, f.q.y, hp.head_dim, hp.n_head, b.T()), false);
    f.k3 = rope(b, ggml_reshape_3d(ctx, f.k.y, hp.head_dim, hp.n_head_kv, b.T()), false);
    f.v3 = ggml_reshape_3d(ctx, f.v.y, hp.head_dim, hp.n_head_kv, b.T());
}

// The rest of the layer from the attention's output attn [hd * H, T]: O product, residual, norm, SwiGLU FFN.
void layer_rest(builder & b, int64_t il, ggml_tensor * attn, bool for_backward, layer_fwd & f) {
    ggml_context * ctx = b.ctx;
    const layer_weights & L = b.t.m->layers[il];
    f.o = linear(b, il, LORA_O, L.wo, nullptr, attn, for_backward);
    f.x2 = ggml_add(ctx, f.x, f.o.y);
    f.n2 = rms_norm_w(b, f.x2, L.ffn_norm);
    f.gate = linear(b, il, LORA_GATE, L.ffn_gate, nullptr, f.n2, for_backward);
    f.up = linear(b, il, LORA_UP, L.ffn_up, nullptr, f.n2, for_backward);
    f.g = f.gate.y;
    f.u = f.up.y;
    ggml_tensor * h = ggml_swiglu_split(ctx, f.g, f.u);
    f.down = linear(b, il, LORA_DOWN, L.ffn_down, nullptr, h, for_backward);
    f.y = ggml_add(ctx, f.x2, f.down.y);
}

// The attention over f.q3, f.k3, f.v3 -> [hd * H, T]: flash attention in forward-only reduced-precision passes
// where the backend has it; else written out, keeping in f what its backward needs.
ggml_tensor * attention(builder & b, layer_fwd & f, bool for_backward) {
    ggml_context * ctx = b.ctx;
    const hparams & hp = b.hp();
    const int64_t hd = hp.head_dim, H = hp.n_head, Hk = hp.n_head_kv, nt = b.nt, ns = b.ns, T = b.T();
    ggml_tensor * q4 = ggml_reshape_4d(ctx, f.q3, hd, H, nt, ns);
    ggml_tensor * k4 = ggml_reshape_4d(ctx, f.k3, hd, Hk, nt, ns);
    ggml_tensor * v4 = ggml_reshape_4d(ctx, f.v3, hd, Hk, nt, ns);
    const float kq_scale = 1.0f / std::sqrt((float) hd);
    if (!for_backward && b.t.compute != GGML_TYPE_F32) {
        // Forward only, reduced precision: flash attention (no [nt x nt] scores in memory), K and V in F16 as
        // the kernel takes them. Where the backend has no kernel for the shape (small head sizes on CUDA), the
        // written-out form is used.
        ggml_tensor * kh = ggml_cpy(ctx, ggml_permute(ctx, k4, 0, 2, 1, 3), ggml_new_tensor_4d(ctx, GGML_TYPE_F16, hd, nt, Hk, ns));
        ggml_tensor * vh = ggml_cpy(ctx, ggml_permute(ctx, v4, 0, 2, 1, 3), ggml_new_tensor_4d(ctx, GGML_TYPE_F16, hd, nt, Hk, ns));
        ggml_tensor * fa = ggml_flash_attn_ext(ctx, ggml_permute(ctx, q4, 0, 2, 1, 3), kh, vh, b.mask_f16(), kq_scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(fa, GGML_PREC_F32);
        if (ggml_backend_supports_op(b.t.m->backends->primary, fa)) return ggml_reshape_2d(ctx, fa, hd * H, T);  // [hd, H, nt, ns]
    }
    // Heads outside tokens; these permutes keep dimension 0, so the copies stay coalesced.
    f.qp = ggml_cont(ctx, ggml_permute(ctx, q4, 0, 2, 1, 3));                   // F32 [hd, nt, H, ns]
    f.kp = b.cast(ggml_permute(ctx, k4, 0, 2, 1, 3));                            // [hd, nt, Hk, ns]
    f.vp = b.cast(ggml_permute(ctx, v4, 0, 2, 1, 3));                            // [hd, nt, Hk, ns]
    ggml_tensor * kq = ggml_mul_mat(ctx, f.kp, f.qp);                            // [nt_k, nt_q, H, ns]
    f.P = ggml_soft_max_ext(ctx, kq, b.mask(), kq_scale, 0.0f);
    ggml_tensor * o = ggml_mul_mat(ctx, transpose01(ctx, f.vp), f.P);           // [hd, nt, H, ns]
    return ggml_reshape_2d(ctx, ggml_cont(ctx, ggml_permute(ctx, o, 0, 2, 1, 3)), hd * H, T);
}

layer_fwd layer_forward(builder & b, int64_t il, ggml_tensor * x, bool for_backward) {
    layer_fwd f;
    attn_inputs(b, il, x, for_backward, f);
    layer_rest(b, il, attention(b, f, for_backward), for_backward, f);
    return f;
}

// FFN: y = x2 + down(silu(g) * u), then the O product: dy -> (dx2, dattn [hd * H, T]).
std::pair<ggml_tensor *, ggml_tensor *> rest_backward(builder & b, const layer_fwd & f, ggml_tensor * dy, int64_t il) {
    ggml_context * ctx = b.ctx;
    const layer_weights & L = b.t.m->layers[il];
    ggml_tensor * dh = linear_back(b, f.down, dy, true);
    ggml_tensor * du = ggml_swiglu_split(ctx, f.g, dh);                                      // silu(g) dh, one pass
    ggml_tensor * dg = ggml_silu_back(ctx, ggml_mul(ctx, dh, f.u), f.g);
    ggml_tensor * dn2 = ggml_add(ctx, linear_back(b, f.gate, dg, true), linear_back(b, f.up, du, true));
    ggml_tensor * dx2 = ggml_add(ctx, dy, rms_norm_w_back(b, f.x2, L.ffn_norm, dn2));
    return { dx2, linear_back(b, f.o, dx2, true) };
}

// From the gradients at Q, K (after RoPE) and V ([hd, H or Hk, T]) back through RoPE and the Q, K, V products
// and the norm: dx = dx2 + d(norm)/dx (null when !need_dx).
ggml_tensor * inputs_backward(builder & b, const layer_fwd & f, ggml_tensor * dq3, ggml_tensor * dk3, ggml_tensor * dv3,
                              ggml_tensor * dx2, int64_t il, bool need_dx) {
    ggml_context * ctx = b.ctx;
    const hparams & hp = b.hp();
    const int64_t T = b.T();
    ggml_tensor * dn1 = linear_back(b, f.q, ggml_reshape_2d(ctx, rope(b, dq3, true), hp.head_dim * hp.n_head, T), need_dx);
    ggml_tensor * dn1k = linear_back(b, f.k, ggml_reshape_2d(ctx, rope(b, dk3, true), hp.head_dim * hp.n_head_kv, T), need_dx);
    ggml_tensor * dn1v = linear_back(b, f.v, ggml_reshape_2d(ctx, dv3, hp.head_dim * hp.n_head_kv, T), need_dx);
    if (!need_dx) return nullptr;
    dn1 = ggml_add(ctx, ggml_add(ctx, dn1, dn1k), dn1v);
    return ggml_add(ctx, dx2, rms_norm_w_back(b, f.x, b.t.m->layers[il].attn_norm, dn1));
}

// dy [E, T] -> dx [E, T] (null when !need_dx), adding the layer's adapter gradients; attention written out.
ggml_tensor * layer_backward(builder & b, const layer_fwd & f, ggml_tensor * dy, int64_t il, bool need_dx) {
    ggml_context * ctx = b.ctx;
    const hparams & hp = b.hp();
    const int64_t hd = hp.head_dim, H = hp.n_head, Hk = hp.n_head_kv, nt = b.nt, ns = b.ns, T = b.T();
    auto [dx2, dattn] = rest_backward(b, f, dy, il);

    // Attention: attn = V softmax(scale K^T Q + mask)
    ggml_tensor * dattn4 = ggml_reshape_4d(ctx, dattn, hd, H, nt, ns);
    ggml_tensor * dO = ggml_cont(ctx, ggml_permute(ctx, dattn4, 0, 2, 1, 3));                // [hd, nt, H, ns]
    ggml_tensor * dP = ggml_mul_mat(ctx, f.vp, dO);                                           // [nt_k, nt_q, H, ns]
    ggml_tensor * dS = ggml_soft_max_ext_back(ctx, dP, f.P, 1.0f / std::sqrt((float) hd), 0.0f);  // d/d(K^T Q)
    ggml_tensor * dQ = ggml_mul_mat(ctx, transpose01(ctx, f.kp), dS);                         // [hd, nt_q, H, ns]
    ggml_tensor * qt = transpose01(ctx, b.cast(f.qp));                                        // [nt_q, hd, H, ns]
    auto kv_grad = [&](ggml_tensor * per_head) {                                              // [hd, nt, H, ns] -> [hd, Hk, T]
        ggml_tensor * g = ggml_reshape_4d(ctx, group_sum(b, ggml_reshape_3d(ctx, per_head, hd * nt, H, ns), H / Hk), hd, nt, Hk, ns);
        return ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, g, 0, 2, 1, 3)), hd, Hk, T);
    };
    ggml_tensor * dk3 = kv_grad(ggml_mul_mat(ctx, qt, transpose01(ctx, dS)));
    ggml_tensor * dOt = transpose01(ctx, b.cast(dO));                                         // [nt_q, hd, H, ns]
    ggml_tensor * dv3 = kv_grad(ggml_mul_mat(ctx, dOt, transpose01(ctx, f.P)));
    ggml_tensor * dq3 = ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, dQ, 0, 2, 1, 3)), hd, H, T);
    return inputs_backward(b, f, dq3, dk3, dv3, dx2, il, need_dx);
}

// The output head runs only at the positions that have a target (the completions'; a prompt's logits are never
// needed): xs [E, n_sel] holds those rows, gathered from the final hidden state.
struct head_rows {
    std::vector<int32_t> pos;         // positions with a target, ascending
    std::vector<int32_t> target;      // their targets
};

head_rows head_select(const train_batch & batch) {
    head_rows r;
    for (int64_t i = 0; i < (int64_t) batch.targets.size(); i++) {
        if (batch.targets[i] < 0) continue;
        r.pos.push_back((int32_t) i);
        r.target.push_back(batch.targets[i]);
    }
    return r;
}

// The head over selected rows [c0, c0 + n) of xs: probabilities softmax(W_out^T norm(x) / T) [V, n] and the
// log-prob of each row's target [1, n].
struct head_chunk {
    ggml_tensor * xc = nullptr, * P = nullptr, * lp = nullptr;
    std::vector<int32_t> flat;        // row * V + target
};

head_chunk head_forward(builder & b, ggml_tensor * xs, const head_rows & rows, float inv_temp, int64_t c0, int64_t n) {
    ggml_context * ctx = b.ctx;
    const int64_t V = b.hp().n_vocab;
    head_chunk h;
    h.xc = ggml_view_2d(ctx, xs, xs->ne[0], n, xs->nb[1], xs->nb[1] * c0);
    ggml_tensor * logits = ggml_mul_mat(ctx, b.t.head_w, rms_norm_w(b, h.xc, b.t.m->output_norm));
    h.P = ggml_soft_max_ext(ctx, logits, nullptr, inv_temp, 0.0f);                          // the temperature rides in the softmax
    h.flat.resize(n);
    for (int64_t i = 0; i < n; i++) h.flat[i] = (int32_t) (i * V + rows.target[c0 + i]);
    ggml_tensor * idx = b.input_i32(n, h.flat);
    h.lp = ggml_log(ctx, ggml_get_rows(ctx, ggml_reshape_2d(ctx, h.P, 1, V * n), idx));   // [1, n]
    return h;
}

void check_supported(trainer & t, ggml_cgraph * gf) {
    ggml_backend_t be = t.m->backends->primary;
    for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
        ggml_tensor * node = ggml_graph_node(gf, i);
        if (!ggml_backend_supports_op(be, node))
            fail("ERR_UNSUPPORTED_TYPE", "%s cannot run %s on %s for training (%s)", t.m->backends->device.c_str(), ggml_op_desc(node),
                 ggml_type_name(node->src[0] ? node->src[0]->type : node->type), ggml_get_name(node));
    }
}

void run_graph(trainer & t, ggml_cgraph * gf, graph_inputs & in) {
    check_supported(t, gf);
    if (!t.galloc) t.galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(t.m->backends->primary));
    if (!t.galloc || !ggml_gallocr_alloc_graph(t.galloc, gf))
        fail("ERR_OUT_OF_MEMORY", "could not allocate training compute memory on %s: %s", t.m->backends->device.c_str(), log_last_error().c_str());
    // Inputs the graph does not use (the mask a flash-attention graph does not read, say) have no memory. In a
    // queued pass they are copied on ggml's stream, after the earlier graphs that used the same memory (a
    // pageable source is staged before the call returns).
    ggml_backend_t be = t.m->backends->primary;
    auto set = [&](ggml_tensor * x, const void * d) {
        if (!x->buffer) return;
        if (t.queued) ggml_backend_tensor_set_async(be, x, d, 0, ggml_nbytes(x));
        else ggml_backend_tensor_set(x, d, 0, ggml_nbytes(x));
    };
    for (auto & [x, d] : in.i32) set(x, d.data());
    for (auto & [x, d] : in.i64) set(x, d.data());
    for (auto & [x, d] : in.f32) set(x, d.data());
    for (auto & [x, d] : in.shared) set(x, d);
    if (t.queued) {
        const ggml_status st = ggml_backend_graph_compute_async(be, gf);
        if (st != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "a training graph failed to queue (status %d): %s", (int) st, log_last_error().c_str());
        t.graphs_run++;
        return;
    }
    // SQLR1_TRAIN_PROFILE=2: run node by node and print the ops that took most of the time (a diagnostic; slow).
    static const bool by_node = getenv("SQLR1_TRAIN_PROFILE") && std::string(getenv("SQLR1_TRAIN_PROFILE")) == "2";
    if (by_node) {
        for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
            ggml_cgraph one = ggml_graph_view(gf, i, i + 1);
            auto t0 = std::chrono::steady_clock::now();
            if (ggml_backend_graph_compute(t.m->backends->primary, &one) != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "profiling run failed");
            const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
            ggml_tensor * n = ggml_graph_node(gf, i);
            char desc[256];
            snprintf(desc, sizeof(desc), "%s %s [%lld,%lld,%lld,%lld] <- %s%s", ggml_op_desc(n), ggml_type_name(n->type),
                     (long long) n->ne[0], (long long) n->ne[1], (long long) n->ne[2], (long long) n->ne[3],
                     n->src[0] ? ggml_type_name(n->src[0]->type) : "-", n->src[1] ? (std::string(",") + ggml_type_name(n->src[1]->type)).c_str() : "");
            auto & e = t.node_profile[desc];
            e.first += us;
            e.second++;
        }
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const ggml_status st = ggml_backend_graph_compute(t.m->backends->primary, gf);
    t.compute_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    t.graphs_run++;
    if (st != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "a training graph failed to run (status %d): %s", (int) st, log_last_error().c_str());
}

// Prints the node-by-node profile gathered since the last print (SQLR1_TRAIN_PROFILE=2), heaviest ops first.
void print_node_profile(trainer & t, const char * what) {
    if (t.node_profile.empty()) return;
    double total = 0;
    std::vector<std::pair<double, std::string>> top;
    for (auto & [k, v] : t.node_profile) {
        total += v.first;
        top.emplace_back(v.first, k + " x" + std::to_string(v.second));
    }
    std::sort(top.begin(), top.end(), [](auto & a, auto & b) { return a.first > b.first; });
    fprintf(stderr, "[sqlr1 train] %s node by node: %.2f ms; top ops:\n", what, total / 1000);
    for (size_t i = 0; i < top.size() && i < 60; i++) fprintf(stderr, "  %9.1f us  %s\n", top[i].first, top[i].second.c_str());
    t.node_profile.clear();
}

void keep_free(trainer & t) {
    if (t.buf_keep) ggml_backend_buffer_free(t.buf_keep);
    if (t.ctx_keep) ggml_free(t.ctx_keep);
    t.buf_keep = nullptr;
    t.ctx_keep = nullptr;
    t.ckpt.clear();
    t.grad_a = t.grad_b = nullptr;
    t.keep_capacity = 0;
    t.kept = false;
}

void keep_alloc(trainer & t, int64_t T) {
    if (t.ctx_keep && t.keep_capacity == T) return;
    keep_free(t);
    const hparams & hp = t.m->hp;
    ggml_init_params ip = { ggml_tensor_overhead() * (size_t) (hp.n_layer + 4), nullptr, true };
    t.ctx_keep = ggml_init(ip);
    if (!t.ctx_keep) fail("ERR_OUT_OF_MEMORY", "could not create the checkpoint context");
    for (int64_t il = 0; il <= hp.n_layer; il++) {
        t.ckpt.push_back(ggml_new_tensor_2d(t.ctx_keep, GGML_TYPE_F32, hp.n_embd, T));
        ggml_format_name(t.ckpt.back(), "ckpt_%lld", (long long) il);
    }
    t.grad_a = ggml_new_tensor_2d(t.ctx_keep, GGML_TYPE_F32, hp.n_embd, T);
    t.grad_b = ggml_new_tensor_2d(t.ctx_keep, GGML_TYPE_F32, hp.n_embd, T);
    t.buf_keep = ggml_backend_alloc_ctx_tensors(t.ctx_keep, t.m->backends->primary);
    if (!t.buf_keep) {
        const double mib = (double) (hp.n_layer + 3) * hp.n_embd * T * 4 / 1048576.0;
        keep_free(t);
        fail("ERR_OUT_OF_MEMORY", "could not allocate %.0f MiB of saved activations for %lld tokens on %s", mib, (long long) T, t.m->backends->device.c_str());
    }
    t.keep_capacity = T;
}

// The groups of targets that share an input (group_forward).
enum { GROUP_QKV, GROUP_O, GROUP_GU, GROUP_DOWN, N_GROUPS };
constexpr int GROUP_TARGETS[N_GROUPS][3] = {
    { LORA_Q, LORA_K, LORA_V }, { LORA_O, -1, -1 }, { LORA_GATE, LORA_UP, -1 }, { LORA_DOWN, -1, -1 } };

void scratch_free(trainer & t) {
    if (t.buf_scratch) ggml_backend_buffer_free(t.buf_scratch);
    if (t.ctx_scratch) ggml_free(t.ctx_scratch);
    t.buf_scratch = nullptr;
    t.ctx_scratch = nullptr;
    t.scratch_capacity = 0;
    for (ggml_tensor *& x : t.stacked) x = nullptr;
    for (int gi = 0; gi < N_GROUPS; gi++) t.group_w[gi] = t.group_y[gi] = nullptr;
}

#ifdef SQLR1_WITH_CUDA
// On CUDA in BF16, where the attention kernels cover the head size, the kept forward and the backward run layer
// by layer around the project's kernels (layer_forward_fused, layer_backward_fused). SQLR1_FUSED_KERNELS=0 keeps
// the written-out graphs instead (for comparisons).
bool use_fused_kernels(const trainer & t) {
    static const bool off = getenv("SQLR1_FUSED_KERNELS") && std::string(getenv("SQLR1_FUSED_KERNELS")) == "0";
    return !off && t.compute == GGML_TYPE_BF16 && t.cuda && attn_cuda_supported(t.m->hp.head_dim, t.ckpt[0]->data);
}

void scratch_alloc(trainer & t, int64_t T) {
    if (t.ctx_scratch && t.scratch_capacity == T) return;
    scratch_free(t);
    const hparams & hp = t.m->hp;
    const int64_t hd = hp.head_dim, H = hp.n_head, Hk = hp.n_head_kv, E = hp.n_embd, F = hp.n_ff, r = t.lora->rank;
    ggml_init_params ip = { ggml_tensor_overhead() * (32 + LORA_N_TARGETS), nullptr, true };
    t.ctx_scratch = ggml_init(ip);
    if (!t.ctx_scratch) fail("ERR_OUT_OF_MEMORY", "could not create the kernels' scratch context");
    ggml_context * c = t.ctx_scratch;
    t.aq = ggml_new_tensor_3d(c, GGML_TYPE_BF16, hd, H, T);
    t.ak = ggml_new_tensor_3d(c, GGML_TYPE_BF16, hd, Hk, T);
    t.av = ggml_new_tensor_3d(c, GGML_TYPE_BF16, hd, Hk, T);
    t.ado = ggml_new_tensor_2d(c, GGML_TYPE_BF16, hd * H, T);
    t.adof = ggml_new_tensor_2d(c, GGML_TYPE_F32, hd * H, T);
    t.ao = ggml_new_tensor_2d(c, GGML_TYPE_F32, hd * H, T);
    t.alse = ggml_new_tensor_2d(c, GGML_TYPE_F32, H, T);
    t.adsum = ggml_new_tensor_2d(c, GGML_TYPE_F32, H, T);
    t.adq = ggml_new_tensor_3d(c, GGML_TYPE_F32, hd, H, T);
    t.adk = ggml_new_tensor_3d(c, GGML_TYPE_F32, hd, Hk, T);
    t.adv = ggml_new_tensor_3d(c, GGML_TYPE_F32, hd, Hk, T);
    t.aph = H > Hk ? ggml_new_tensor_2d(c, GGML_TYPE_F32, hd * H * T, 2) : nullptr;
    t.fdh = ggml_new_tensor_2d(c, GGML_TYPE_F32, F, T);
    t.fdz = ggml_new_tensor_2d(c, GGML_TYPE_F32, r, T);
    t.fx2 = ggml_new_tensor_2d(c, GGML_TYPE_F32, E, T);
    t.fn2 = ggml_new_tensor_2d(c, GGML_TYPE_F32, E, T);
    t.fn1 = ggml_new_tensor_2d(c, GGML_TYPE_F32, E, T);
    for (int gi = 0; gi < N_GROUPS; gi++) {
        int64_t in = 0, rows = 0;
        for (int tg : GROUP_TARGETS[gi]) {
            if (tg < 0) continue;
            const ggml_tensor * w = lora_target_weight(*t.m, 0, tg);  // the same shapes in every layer
            in = w->ne[0];
            rows += w->ne[1] + r;
        }
        t.group_w[gi] = ggml_new_tensor_2d(c, GGML_TYPE_BF16, in, rows);
        if (gi != GROUP_DOWN) t.group_y[gi] = ggml_new_tensor_2d(c, GGML_TYPE_F32, rows, T);
    }
    t.fpart = swiglu_reduces(r) ? ggml_new_tensor_1d(c, GGML_TYPE_F32, swiglu_partial_floats(F, T, r)) : nullptr;
    t.fdgb = ggml_new_tensor_2d(c, GGML_TYPE_BF16, F, T);
    t.fdub = ggml_new_tensor_2d(c, GGML_TYPE_BF16, F, T);
    for (int tg = 0; tg < LORA_N_TARGETS; tg++) {
        if (tg == LORA_DOWN) continue;
        const ggml_tensor * w = lora_target_weight(*t.m, 0, tg);  // the same shape in every layer
        t.stacked[tg] = ggml_new_tensor_2d(c, GGML_TYPE_BF16, w->ne[1], w->ne[0] + r);
    }
    t.buf_scratch = ggml_backend_alloc_ctx_tensors(c, t.m->backends->primary);
    if (!t.buf_scratch) {
        scratch_free(t);
        fail("ERR_OUT_OF_MEMORY", "could not allocate the kernels' scratch for %lld tokens on %s", (long long) T, t.m->backends->device.c_str());
    }
    t.scratch_capacity = T;
}

// Places a graph node's result in a persistent tensor of the same size (the node then skips the graph
// allocator), so that a kernel or a later graph reads it with no copy.
ggml_tensor * place(builder & b, ggml_tensor * node, ggml_tensor * at, size_t offset = 0) {
    if (ggml_nbytes(node) + offset > ggml_nbytes(at)) fail("ERR_INTERNAL", "scratch placement of %s: too large", ggml_op_desc(node));
    if (ggml_backend_tensor_alloc(at->buffer, node, (char *) at->data + offset) != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "scratch placement failed");
    ggml_build_forward_expand(b.gf, node);
    return node;
}

// Fills the target's stacked weight [W^T; s B^T] (trainer::stacked) from its dequantized weight wc [in, out].
void stack_weight(builder & b, int target, ggml_tensor * wc, const lora_pair * p) {
    ggml_context * ctx = b.ctx;
    ggml_tensor * dst = b.t.stacked[target];
    const int64_t in = wc->ne[0], out = wc->ne[1];
    // As 3-d same-type copies, ggml's CUDA backend transposes in shared-memory tiles (see transpose01).
    ggml_tensor * top = ggml_view_3d(ctx, dst, out, in, 1, dst->nb[1], dst->nb[1] * in, 0);
    ggml_build_forward_expand(b.gf, ggml_cpy(ctx, ggml_transpose(ctx, ggml_reshape_3d(ctx, wc, in, out, 1)), top));
    if (!p) return;
    const int64_t r = p->b->ne[0];
    ggml_tensor * low = ggml_view_2d(ctx, dst, out, r, dst->nb[1], dst->nb[1] * in);
    ggml_build_forward_expand(b.gf, ggml_cpy(ctx, ggml_transpose(ctx, ggml_scale(ctx, p->b, b.t.lora->scale())), low));
}

ggml_tensor * add_some(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b) { return !a ? b : !b ? a : ggml_add(ctx, a, b); }

// The backward of a group's targets (inputs x, adapter inputs zs) from their output gradients dy_i: F32, for the
// adapter's dB (null where dB is already added); dy_mm[i] is what the product reads (dy_i or a BF16 copy). Per
// target one product over the stacked weight gives W^T dy (rows [0, in)) and dz = s B^T dy (rows [in, in + r));
// the adapters' terms of dx and their dA then take one product and one outer product for the whole group, over
// [A_1 ... A_n] and [dz_1; ...; dz_n]. Returns dx (null when !need_dx).
ggml_tensor * group_backward(builder & b, int64_t il, int group, ggml_tensor * x, ggml_tensor * const zs[3], ggml_tensor * const dy[3],
                             ggml_tensor * const dy_mm[3], bool need_dx) {
    ggml_context * ctx = b.ctx;
    const int64_t in = x->ne[0];
    ggml_tensor * dx = nullptr, * dz = nullptr, * a_cat = nullptr;
    std::vector<std::pair<const lora_pair *, int64_t>> parts;  // (pair, its first column in dz)
    int64_t rz = 0;
    for (int i = 0; i < 3; i++) {
        const int tg = GROUP_TARGETS[group][i];
        if (tg < 0) continue;
        const lora_pair * p = b.pair(il, tg);
        ggml_tensor * w = b.t.stacked[tg];
        const int64_t out = w->ne[0], r = p ? p->a->ne[1] : 0;
        const int64_t row0 = need_dx ? 0 : in, rows = (need_dx ? in : 0) + r;
        if (rows == 0) continue;
        ggml_tensor * P = ggml_mul_mat(ctx, ggml_view_2d(ctx, w, out, rows, w->nb[1], w->nb[1] * row0), dy_mm[i]);   // [rows, T]
        const int64_t T = P->ne[1];
        if (need_dx) dx = add_some(ctx, dx, ggml_view_2d(ctx, P, in, T, P->nb[1], 0));
        if (!p) continue;
        if (dy[i]) b.accumulate(p->b, ggml_out_prod(ctx, zs[i], dy[i]));                               // [r, out] (else done)
        ggml_tensor * dzi = ggml_view_2d(ctx, P, r, T, P->nb[1], (rows - r) * sizeof(float));
        dz = dz ? ggml_concat(ctx, dz, dzi, 0) : dzi;
        a_cat = a_cat ? ggml_concat(ctx, a_cat, p->a, 1) : p->a;
        parts.emplace_back(p, rz);
        rz += r;
    }
    if (parts.empty()) return dx;
    ggml_tensor * da = ggml_out_prod(ctx, x, dz);                                                      // [in, sum r]
    for (auto [p, c0] : parts) b.accumulate(p->a, ggml_view_2d(ctx, da, in, p->a->ne[1], da->nb[1], da->nb[1] * c0));
    return need_dx ? ggml_add(ctx, dx, ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, a_cat)), dz)) : nullptr;
}

// The weights dequant_layer converts (Q4_0 in device memory); get_rows nodes do the others.
bool dequant_kernel_takes(const ggml_tensor * w) {
    return w->type == GGML_TYPE_Q4_0 && ggml_is_contiguous(w) && w->buffer && !ggml_backend_buffer_is_host(w->buffer);
}

// Targets that share an input x, as one product: [W_1; ...; W_n; s A_1; ...; s A_n] x, with the weights
// dequantized straight into the group's region (no concatenation copies) and each adapter's A scaled in after
// them. Each target's W x and its adapter input zs = s A x are row views of the result; the dequantized weights
// stay in the region for stack_weight. keep_y (optional) is where the result is placed.
struct group_fwd {
    int n = 0;
    int64_t rows = 0;                 // of the product
    ggml_tensor * P = nullptr;
    ggml_tensor * y[3] = {}, * zs[3] = {}, * wc[3] = {};
    const lora_pair * p[3] = {};
    int64_t row[3] = {}, zrow[3] = {};
};

group_fwd group_forward(builder & b, int64_t il, int group, ggml_tensor * x, ggml_tensor * keep_y) {
    ggml_context * ctx = b.ctx;
    ggml_tensor * R = b.t.group_w[group];
    const int64_t in = R->ne[0];
    group_fwd g;
    int64_t row = 0;
    for (int tg : GROUP_TARGETS[group]) {
        if (tg < 0) continue;
        const int i = g.n++;
        ggml_tensor * w = lora_target_weight(*b.t.m, il, tg);
        const int64_t out = w->ne[1];
        ggml_tensor * at = ggml_view_2d(ctx, R, in, out, R->nb[1], R->nb[1] * row);
        if (!dequant_kernel_takes(w)) {  // else dequant_layer filled it
            ggml_tensor * wc = b.frozen(w);
            if (wc->op != GGML_OP_NONE && !wc->view_src && !wc->data) place(b, wc, R, R->nb[1] * row);  // dequantized in place
            else ggml_build_forward_expand(b.gf, ggml_cpy(ctx, wc, at));
        }
        g.wc[i] = at;
        g.p[i] = b.pair(il, tg);
        g.row[i] = row;
        row += out;
    }
    for (int i = 0; i < g.n; i++) {
        if (!g.p[i]) continue;
        const int64_t r = g.p[i]->a->ne[1];
        ggml_tensor * at = ggml_view_2d(ctx, R, in, r, R->nb[1], R->nb[1] * row);
        ggml_build_forward_expand(b.gf, ggml_cpy(ctx, ggml_scale(ctx, g.p[i]->a, b.t.lora->scale()), at));
        g.zrow[i] = row;
        row += r;
    }
    g.rows = row;
    g.P = ggml_mul_mat(ctx, ggml_view_2d(ctx, R, in, row, R->nb[1], 0), x);                          // [rows, T]
    if (keep_y) place(b, g.P, keep_y);
    const int64_t T = g.P->ne[1];
    for (int i = 0; i < g.n; i++) {
        const int64_t out = g.wc[i]->ne[1];
        g.y[i] = ggml_view_2d(ctx, g.P, out, T, g.P->nb[1], g.row[i] * sizeof(float));
        if (g.p[i]) g.zs[i] = ggml_view_2d(ctx, g.P, g.p[i]->a->ne[1], T, g.P->nb[1], g.zrow[i] * sizeof(float));
    }
    return g;
}

// Dequantizes the layer's Q4_0 weights into their group regions, all in one launch (dequant.h); group_forward,
// which runs after it, dequantizes the other types by graph nodes.
void dequant_layer(trainer & t, int64_t il) {
    std::vector<dequant_job> jobs;
    for (int gi = 0; gi < N_GROUPS; gi++) {
        int64_t row = 0;
        for (int tg : GROUP_TARGETS[gi]) {
            if (tg < 0) continue;
            ggml_tensor * w = lora_target_weight(*t.m, il, tg);
            if (dequant_kernel_takes(w))
                jobs.push_back({ w->data, (uint16_t *) ((char *) t.group_w[gi]->data + t.group_w[gi]->nb[1] * row), ggml_nelements(w) });
            row += w->ne[1];
        }
    }
    if (!jobs.empty()) dequant_q4_0_bf16_cuda(jobs);
}

// Target i's output from the group product: + bias, + B zs, as a contiguous tensor.
ggml_tensor * group_output(builder & b, const group_fwd & g, int i, ggml_tensor * bias) {
    ggml_tensor * y = g.y[i];
    if (bias) y = ggml_add(b.ctx, y, bias);
    if (g.p[i]) y = ggml_add(b.ctx, y, ggml_mul_mat(b.ctx, g.p[i]->b, g.zs[i]));
    return y == g.y[i] ? ggml_cont(b.ctx, y) : y;
}

// The SwiGLU kernel's view of the gate/up group product (placed in group_y[GROUP_GU]). Only g's numbers are
// read: its tensors belong to a graph that has run.
swiglu_args swiglu_group(const trainer & t, const group_fwd & g, int64_t T) {
    swiglu_args a;
    float * base = (float *) t.group_y[GROUP_GU]->data;
    a.F = t.m->hp.n_ff;
    a.T = T;
    a.r = t.lora->rank;
    a.ld = a.ldz = g.rows;
    a.g = base + g.row[0];
    a.u = base + g.row[1];
    if (g.p[0]) { a.bg = (const float *) g.p[0]->b->data; a.zg = base + g.zrow[0]; }
    if (g.p[1]) { a.bu = (const float *) g.p[1]->b->data; a.zu = base + g.zrow[1]; }
    return a;
}

// Runs one graph built by `build` in the trainer's reusable metadata.
template <typename F>
void run_built(trainer & t, const train_batch & batch, bool use_lora, F build) {
    graph_ctx g(t, TRAIN_GRAPH_NODES);
    graph_inputs in;
    builder b{t, g.ctx, g.gf, in, batch.ns, batch.nt, use_lora};
    build(b);
    run_graph(t, g.gf, in);
}

// The attention's inputs from the Q, K, V group: norm, products, biases and adapter terms, RoPE.
group_fwd attn_inputs_grouped(builder & b, int64_t il, ggml_tensor * x, ggml_tensor * keep_y, layer_fwd & f) {
    ggml_context * ctx = b.ctx;
    const hparams & hp = b.hp();
    const layer_weights & L = b.t.m->layers[il];
    f.x = x;
    f.n1 = rms_norm_w(b, x, L.attn_norm);
    group_fwd g = group_forward(b, il, GROUP_QKV, f.n1, keep_y);  // the product converts n1 once (faster than a cast node)
    f.q3 = rope(b, ggml_reshape_3d(ctx, group_output(b, g, 0, L.bq), hp.head_dim, hp.n_head, b.T()), false);
    f.k3 = rope(b, ggml_reshape_3d(ctx, group_output(b, g, 1, L.bk), hp.head_dim, hp.n_head_kv, b.T()), false);
    f.v3 = ggml_reshape_3d(ctx, group_output(b, g, 2, L.bv), hp.head_dim, hp.n_head_kv, b.T());
    return g;
}

// Runs `fn`, which launches project kernels. In a queued pass they wait for the work ggml has queued, and ggml's
// later work waits for them; no host waits. Returns fn's host time (launches only, in a queued pass).
template <typename F>
double project_kernels(trainer & t, F fn) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!t.queued) {
        fn();
    } else {
        ggml_backend_t be = t.m->backends->primary;
        const void * dev = t.ckpt[0]->data;
        ggml_backend_event_record(t.ev_ggml, be);
        project_stream_wait(dev, t.ev_ggml->context);
        fn();
        project_stream_record(dev, t.ev_project->context);
        ggml_backend_event_wait(be, t.ev_project);
    }
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// A layer-by-layer pass whose graphs and kernels queue without host waits (trainer::queued), then wait once in
// finish(). SQLR1_TRAIN_PROFILE (per-graph timings) and SQLR1_TRAIN_SYNC=1 run it with a wait after each graph
// and kernel, as do backends without events.
class queued_pass {
public:
    explicit queued_pass(trainer & t) : t(t) {
        const char * sync = getenv("SQLR1_TRAIN_SYNC");  // read per pass: a test compares both modes in one process
        if (getenv("SQLR1_TRAIN_PROFILE") || (sync && std::string(sync) == "1")) return;
        ggml_backend_dev_t dev = ggml_backend_get_device(t.m->backends->primary);
        if (!t.ev_ggml) t.ev_ggml = ggml_backend_event_new(dev);
        if (!t.ev_project) t.ev_project = ggml_backend_event_new(dev);
        if (!t.ev_ggml || !t.ev_project) return;
        scope.emplace();
        t.queued = true;
    }
    // Waits for the pass; a kernel's error surfaces here (as ERR_INTERNAL).
    void finish() {
        if (!t.queued) return;
        t.queued = false;
        scope.reset();
        project_stream_sync(t.ckpt[0]->data);
        ggml_backend_synchronize(t.m->backends->primary);
    }
    ~queued_pass() {  // on an error inside the pass: nothing may still run on the trainer's memory after it
        if (!t.queued) return;
        try { finish(); } catch (...) {}
    }
private:
    trainer & t;
    std::optional<queue_scope> scope;
};

// The policy forward of one layer on CUDA in BF16, in two graphs around the SwiGLU kernel (forward mode, with
// the gate and up adapter terms on the fly): ckpt[il] -> ckpt[il + 1].
void layer_forward_fused(trainer & t, const train_batch & batch, int64_t il) {
    const layer_weights & L = t.m->layers[il];
    const int64_t T = batch.ns * batch.nt;
    group_fwd gu;
    project_kernels(t, [&] { dequant_layer(t, il); });
    run_built(t, batch, true, [&](builder & b) {
        ggml_context * ctx = b.ctx;
        layer_fwd f;
        attn_inputs_grouped(b, il, t.ckpt[il], t.group_y[GROUP_QKV], f);
        group_fwd o = group_forward(b, il, GROUP_O, attention(b, f, false), t.group_y[GROUP_O]);
        ggml_tensor * x2 = place(b, ggml_add(ctx, t.ckpt[il], group_output(b, o, 0, nullptr)), t.fx2);
        gu = group_forward(b, il, GROUP_GU, rms_norm_w(b, x2, L.ffn_norm), t.group_y[GROUP_GU]);
    });
    project_kernels(t, [&] { swiglu_cuda(swiglu_group(t, gu, T)); });  // h into the gate's rows
    run_built(t, batch, true, [&](builder & b) {
        ggml_context * ctx = b.ctx;
        ggml_tensor * h = ggml_view_2d(ctx, t.group_y[GROUP_GU], t.m->hp.n_ff, T, gu.rows * sizeof(float), 0);
        group_fwd dn = group_forward(b, il, GROUP_DOWN, h, nullptr);
        place(b, ggml_add(ctx, t.fx2, group_output(b, dn, 0, nullptr)), t.ckpt[il + 1]);
    });
}

// One layer's backward around the fused kernels, in four graphs:
//  (A) the attention's inputs (the Q, K, V group) -> attention forward kernel;
//  (B) the O group, residual, norm, the gate/up group, W_down^T dy -> SwiGLU kernel (activation and its
//      backward in one pass, with the LoRA terms);
//  (C) the down, gate, up and O backward down to d attn -> attention backward kernels;
//  (D) back through RoPE, the Q, K, V products and the norm.
// The groups' products stay in the scratch for the later graphs (their adapter inputs zs); (A) and (B) also
// stack the transposed weights for (C) and (D). dx2 passes from C to D in dx_buf.
void layer_backward_fused(trainer & t, const train_batch & batch, int64_t il, ggml_tensor * dy, ggml_tensor * dx_buf, double & kernel_ms) {
    const hparams & hp = t.m->hp;
    const layer_weights & L = t.m->layers[il];
    const int64_t hd = hp.head_dim, H = hp.n_head, T = batch.ns * batch.nt, F = hp.n_ff;
    const attn_dims d{ hd, H, hp.n_head_kv, batch.nt, batch.ns, 1.0f / std::sqrt((float) hd) };
    const float s = t.lora->scale();
    ggml_tensor * x = t.ckpt[il];
    auto timed = [&](auto fn) { kernel_ms += project_kernels(t, fn); };
    const lora_pair * pd = adapter_pair(t, il, LORA_DOWN);
    group_fwd qkv, o, gu;  // only their numbers outlive their graphs
    timed([&] { dequant_layer(t, il); });

    run_built(t, batch, true, [&](builder & b) {
        layer_fwd f;
        qkv = attn_inputs_grouped(b, il, x, t.group_y[GROUP_QKV], f);
        place(b, f.n1, t.fn1);  // kept for (D)
        for (int i = 0; i < 3; i++) stack_weight(b, GROUP_TARGETS[GROUP_QKV][i], qkv.wc[i], qkv.p[i]);
        ggml_build_forward_expand(b.gf, ggml_cpy(b.ctx, f.q3, t.aq));
        ggml_build_forward_expand(b.gf, ggml_cpy(b.ctx, f.k3, t.ak));
        ggml_build_forward_expand(b.gf, ggml_cpy(b.ctx, f.v3, t.av));
    });
    timed([&] { attn_cuda_forward(d, t.aq->data, t.ak->data, t.av->data, (float *) t.ao->data, (float *) t.alse->data); });

    run_built(t, batch, true, [&](builder & b) {
        ggml_context * ctx = b.ctx;
        o = group_forward(b, il, GROUP_O, t.ao, t.group_y[GROUP_O]);
        stack_weight(b, LORA_O, o.wc[0], o.p[0]);
        ggml_tensor * x2 = place(b, ggml_add(ctx, x, group_output(b, o, 0, nullptr)), t.fx2);
        ggml_tensor * n2 = place(b, rms_norm_w(b, x2, L.ffn_norm), t.fn2);
        gu = group_forward(b, il, GROUP_GU, n2, t.group_y[GROUP_GU]);
        stack_weight(b, LORA_GATE, gu.wc[0], gu.p[0]);
        stack_weight(b, LORA_UP, gu.wc[1], gu.p[1]);
        ggml_tensor * R = t.group_w[GROUP_DOWN];
        ggml_tensor * wd = dequant_kernel_takes(L.ffn_down) ? ggml_view_2d(ctx, R, F, hp.n_embd, R->nb[1], 0) : b.frozen(L.ffn_down);
        place(b, ggml_mul_mat(ctx, transpose01(ctx, wd), dy), t.fdh);
        if (pd) place(b, ggml_scale(ctx, ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, pd->b)), dy), s), t.fdz);
    });
    // For ranks <= 16 the kernel also adds dB of gate and up and dA of down (their sums over tokens); otherwise
    // graph (C) does, from dg and du in F32.
    const bool reduced = t.fpart != nullptr;
    auto grad_of = [&](const lora_pair * p, bool b_side) {
        return p ? (float *) param_store_get(*t.params, ggml_get_name(b_side ? p->b : p->a)).grad->data : nullptr;
    };
    timed([&] {
        swiglu_args a = swiglu_group(t, gu, T);
        a.dh = (float *) t.fdh->data;
        if (pd) { a.ad = (const float *) pd->a->data; a.dzd = (const float *) t.fdz->data; }
        a.dg_bf16 = (uint16_t *) t.fdgb->data;
        a.du_bf16 = (uint16_t *) t.fdub->data;
        if (reduced) {
            a.dbg = grad_of(gu.p[0], true);
            a.dbu = grad_of(gu.p[1], true);
            a.dad = grad_of(pd, false);
            a.partial = (float *) t.fpart->data;
        }
        swiglu_cuda(a);  // the gate's rows now hold h; fdgb, fdub dg and du in BF16 (and in F32 in the up rows and fdh if !reduced)
    });

    // Views of what the earlier graphs kept, in a later graph's context.
    auto rows_of = [&](builder & b, int group, const group_fwd & g, int64_t row, int64_t n) {
        return ggml_view_2d(b.ctx, t.group_y[group], n, T, g.rows * sizeof(float), row * sizeof(float));
    };
    auto zs_of = [&](builder & b, int group, const group_fwd & g, int i) {
        return g.p[i] ? rows_of(b, group, g, g.zrow[i], g.p[i]->a->ne[1]) : nullptr;
    };
    run_built(t, batch, true, [&](builder & b) {
        ggml_context * ctx = b.ctx;
        ggml_tensor * h = rows_of(b, GROUP_GU, gu, gu.row[0], F), * dg = rows_of(b, GROUP_GU, gu, gu.row[1], F);
        if (pd) {  // down: the adapter's gradients only, with dz = s B^T dy from (B)
            ggml_tensor * zd = ggml_scale(ctx, ggml_mul_mat(ctx, pd->a, h), s);                     // s A h
            b.accumulate(pd->b, ggml_out_prod(ctx, zd, dy));
            if (!reduced) b.accumulate(pd->a, ggml_out_prod(ctx, h, t.fdz));
        }
        ggml_tensor * zgu[3] = { zs_of(b, GROUP_GU, gu, 0), zs_of(b, GROUP_GU, gu, 1) };
        ggml_tensor * dgu[3] = { reduced ? nullptr : dg, reduced ? nullptr : t.fdh }, * dgu_mm[3] = { t.fdgb, t.fdub };
        ggml_tensor * dn2 = group_backward(b, il, GROUP_GU, t.fn2, zgu, dgu, dgu_mm, true);
        ggml_tensor * dx2 = place(b, ggml_add(ctx, dy, rms_norm_w_back(b, t.fx2, L.ffn_norm, dn2)), dx_buf);  // kept for (D)
        ggml_tensor * zo[3] = { zs_of(b, GROUP_O, o, 0) }, * dyo[3] = { dx2 };
        ggml_tensor * dattn = group_backward(b, il, GROUP_O, t.ao, zo, dyo, dyo, true);
        if (dattn->view_src || dattn->op == GGML_OP_NONE) ggml_build_forward_expand(b.gf, ggml_cpy(ctx, dattn, t.adof));  // a view of a product
        else place(b, dattn, t.adof);  // the attention backward's first pass writes its BF16 copy
    });
    timed([&] {
        attn_cuda_backward(d, t.aq->data, t.ak->data, t.av->data, (const float *) t.ao->data, (const float *) t.adof->data, t.ado->data, (const float *) t.alse->data,
                           (float *) t.adsum->data, (float *) t.adq->data, (float *) t.adk->data, (float *) t.adv->data,
                           t.aph ? (float *) t.aph->data : nullptr);
    });

    run_built(t, batch, true, [&](builder & b) {
        ggml_context * ctx = b.ctx;
        const bool need_dx = il > 0;
        ggml_tensor * dq = ggml_reshape_2d(ctx, rope(b, t.adq, true), hd * H, T);
        ggml_tensor * dk = ggml_reshape_2d(ctx, rope(b, t.adk, true), hd * hp.n_head_kv, T);
        ggml_tensor * dv = ggml_reshape_2d(ctx, t.adv, hd * hp.n_head_kv, T);
        ggml_tensor * dys[3] = { dq, dk, dv };
        ggml_tensor * zs[3] = { zs_of(b, GROUP_QKV, qkv, 0), zs_of(b, GROUP_QKV, qkv, 1), zs_of(b, GROUP_QKV, qkv, 2) };
        ggml_tensor * dn1 = group_backward(b, il, GROUP_QKV, t.fn1, zs, dys, dys, need_dx);
        // dx = dx2 + d(norm)/dx, added into dx_buf where (C) left dx2
        if (need_dx) ggml_build_forward_expand(b.gf, ggml_add_inplace(ctx, dx_buf, rms_norm_w_back(b, x, L.attn_norm, dn1)));
    });
}
#endif

} // namespace

// ---------------------------------------------------------------------------------------------------------
// trainer

trainer::~trainer() {
    keep_free(*this);
    scratch_free(*this);
    shape_device_free(*this);
    if (ev_ggml) ggml_backend_event_free(ev_ggml);
    if (ev_project) ggml_backend_event_free(ev_project);
    if (galloc) ggml_gallocr_free(galloc);
    if (buf_fixed) ggml_backend_buffer_free(buf_fixed);
    if (ctx_fixed) ggml_free(ctx_fixed);
}

std::unique_ptr<trainer> trainer_init(std::shared_ptr<model> m, std::shared_ptr<lora_adapter> lora, ggml_type compute, int64_t max_tokens) {
    if (!lora) fail("ERR_INVALID_ARG", "training needs a LoRA adapter");
    if (lora->m != m) fail("ERR_INVALID_ARG", "the adapter belongs to another model");
    if (compute != GGML_TYPE_F32 && compute != GGML_TYPE_BF16) fail("ERR_INVALID_ARG", "the compute type must be f32 or bf16");
    if (max_tokens < 1 || max_tokens > (1 << 20)) fail("ERR_INVALID_ARG", "maxTokens must be in [1, 1048576], got %lld", (long long) max_tokens);
    auto t = std::make_unique<trainer>();
    t->m = m;
    t->lora = lora;
    t->params = lora_adapter_params(lora);
    t->compute = compute;
    t->max_tokens = max_tokens;
#ifdef SQLR1_WITH_CUDA
    t->cuda = ggml_backend_is_cuda(m->backends->primary);
#endif
    const hparams & hp = m->hp;
    const int64_t V = hp.n_vocab, E = hp.n_embd;

    // The iota covers the longest weight (the vocabulary, or the FFN width).
    int64_t n_iota = std::max<int64_t>(V, 1);
    for (int64_t il = 0; il < hp.n_layer; il++)
        for (int tg = 0; tg < LORA_N_TARGETS; tg++) n_iota = std::max(n_iota, lora_target_weight(*m, il, tg)->ne[1]);
    const bool head_direct = m->output->type == compute;
    ggml_init_params ip = { ggml_tensor_overhead() * 4, nullptr, true };
    t->ctx_fixed = ggml_init(ip);
    if (!t->ctx_fixed) fail("ERR_OUT_OF_MEMORY", "could not create the trainer's context");
    t->iota = ggml_new_tensor_1d(t->ctx_fixed, GGML_TYPE_I32, n_iota);
    t->head_wt = ggml_new_tensor_2d(t->ctx_fixed, compute, V, E);
    t->head_w = head_direct ? m->output : ggml_new_tensor_2d(t->ctx_fixed, compute, E, V);
    t->buf_fixed = ggml_backend_alloc_ctx_tensors(t->ctx_fixed, m->backends->primary);
    if (!t->buf_fixed) fail("ERR_OUT_OF_MEMORY", "could not allocate the trainer's copy of the output weight on %s", m->backends->device.c_str());
    std::vector<int32_t> iota(n_iota);
    for (int64_t i = 0; i < n_iota; i++) iota[i] = (int32_t) i;
    ggml_backend_tensor_set(t->iota, iota.data(), 0, ggml_nbytes(t->iota));

    // Convert the output weight once, in row chunks so that the F32 intermediate stays small.
    const int64_t chunk = std::max<int64_t>(1, (int64_t) (64 << 20) / (4 * E));
    for (int64_t v0 = 0; v0 < V; v0 += chunk) {
        const int64_t n = std::min(chunk, V - v0);
        graph_ctx g(*t, 64);
        ggml_tensor * rows = ggml_view_1d(g.ctx, t->iota, n, v0 * sizeof(int32_t));
        ggml_tensor * wf = ggml_get_rows(g.ctx, m->output, rows);                                        // F32 [E, n]
        ggml_tensor * dst_t = ggml_view_2d(g.ctx, t->head_wt, n, E, t->head_wt->nb[1], v0 * ggml_element_size(t->head_wt));
        ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, ggml_transpose(g.ctx, wf), dst_t));
        if (!head_direct) {
            ggml_tensor * dst = ggml_view_2d(g.ctx, t->head_w, E, n, t->head_w->nb[1], v0 * t->head_w->nb[1]);
            ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, wf, dst));
        }
        graph_inputs none;
        run_graph(*t, g.gf, none);
    }
    return t;
}

void trainer_validate(const trainer & t, const train_batch & b) {
    const hparams & hp = t.m->hp;
    if (b.ns < 1 || b.nt < 2) fail("ERR_INVALID_ARG", "a training batch needs >= 1 sequence of >= 2 tokens, got %lld x %lld", (long long) b.ns, (long long) b.nt);
    if (b.ns * b.nt > t.max_tokens)
        fail("ERR_INVALID_ARG", "the batch has %lld tokens (%lld x %lld); this trainer takes at most %lld (maxTokens)",
             (long long) (b.ns * b.nt), (long long) b.ns, (long long) b.nt, (long long) t.max_tokens);
    if ((int64_t) b.tokens.size() != b.ns * b.nt) fail("ERR_INVALID_ARG", "expected %lld tokens, got %zu", (long long) (b.ns * b.nt), b.tokens.size());
    if (b.targets.size() != b.tokens.size()) fail("ERR_INVALID_ARG", "expected %zu targets (one per token), got %zu", b.tokens.size(), b.targets.size());
    for (int32_t x : b.tokens) if (x < 0 || x >= hp.n_vocab) fail("ERR_TOKEN_RANGE", "token id %d out of range [0, %lld)", x, (long long) hp.n_vocab);
    for (int32_t x : b.targets) if (x < -1 || x >= hp.n_vocab) fail("ERR_TOKEN_RANGE", "target id %d out of range [0, %lld) (or -1 for none)", x, (long long) hp.n_vocab);
    if (!(b.inv_temp > 0.0f) || !std::isfinite(b.inv_temp)) fail("ERR_INVALID_ARG", "the temperature must be a positive number");
}

std::vector<float> trainer_forward(trainer & t, const train_batch & batch, bool use_lora, bool keep) {
    trainer_validate(t, batch);
    if (keep && !use_lora) fail("ERR_INVALID_ARG", "keeping activations for a backward pass needs the adapter on");
    const hparams & hp = t.m->hp;
    const int64_t T = batch.ns * batch.nt;
    if (keep) keep_alloc(t, T);
    t.kept = false;

    // On CUDA in BF16 a kept forward runs layer by layer around the SwiGLU kernel (layer_forward_fused), each
    // layer's input going straight into its checkpoint; elsewhere the whole forward is one graph.
    bool fused = false;
#ifdef SQLR1_WITH_CUDA
    fused = keep && use_fused_kernels(t);
    if (fused) {
        scratch_alloc(t, T);
        shape_device_upload(t, batch.ns, batch.nt);
        run_built(t, batch, true, [&](builder & b) {
            place(b, ggml_get_rows(b.ctx, t.m->tok_embd, b.input_i32(T, batch.tokens)), t.ckpt[0]);
        });
        queued_pass pass(t);
        for (int64_t il = 0; il < hp.n_layer; il++) layer_forward_fused(t, batch, il);
        pass.finish();
    }
#endif

    graph_ctx g(t, TRAIN_GRAPH_NODES);
    graph_inputs in;
    builder b{t, g.ctx, g.gf, in, batch.ns, batch.nt, use_lora};
    ggml_tensor * x = fused ? t.ckpt[hp.n_layer] : ggml_get_rows(g.ctx, t.m->tok_embd, b.input_i32(T, batch.tokens));
    for (int64_t il = 0; il < hp.n_layer && !fused; il++) {
        if (keep) ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, x, t.ckpt[il]));
        x = layer_forward(b, il, x, false).y;
    }
    if (keep && !fused) ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, x, t.ckpt[hp.n_layer]));
    const head_rows rows = head_select(batch);
    const int64_t n_sel = (int64_t) rows.pos.size();
    std::vector<ggml_tensor *> lps;
    if (n_sel > 0) {
        ggml_tensor * xs = ggml_get_rows(g.ctx, x, b.input_i32(n_sel, rows.pos));
        for (int64_t c0 = 0; c0 < n_sel; c0 += t.lp_chunk) {
            head_chunk h = head_forward(b, xs, rows, batch.inv_temp, c0, std::min(t.lp_chunk, n_sel - c0));
            ggml_set_output(h.lp);
            ggml_build_forward_expand(g.gf, h.lp);
            lps.push_back(h.lp);
        }
    }
    run_graph(t, g.gf, in);
    print_node_profile(t, use_lora ? "policy forward" : "reference forward");

    std::vector<float> lp_sel(n_sel);
    int64_t off = 0;
    for (ggml_tensor * lp : lps) {
        ggml_backend_tensor_get(lp, lp_sel.data() + off, 0, ggml_nbytes(lp));
        off += ggml_nelements(lp);
    }
    std::vector<float> out(T, NAN);
    for (int64_t k = 0; k < n_sel; k++) out[rows.pos[k]] = lp_sel[k];
    if (keep) {
        t.kept = true;
        t.kept_batch = batch;
    }
    return out;
}

void trainer_backward(trainer & t, const std::vector<float> & dlogp_in) {
    if (!t.kept) fail("ERR_INVALID_STATE", "backward needs a forward with keep: true first (each forward serves one backward)");
    const train_batch & batch = t.kept_batch;
    const hparams & hp = t.m->hp;
    const int64_t T = batch.ns * batch.nt, V = hp.n_vocab;
    if ((int64_t) dlogp_in.size() != T) fail("ERR_INVALID_ARG", "expected %lld gradients (one per position), got %zu", (long long) T, dlogp_in.size());
    std::vector<float> dlogp(dlogp_in);
    for (int64_t i = 0; i < T; i++) {
        if (batch.targets[i] < 0) dlogp[i] = 0.0f;
        else if (!std::isfinite(dlogp[i])) fail("ERR_INVALID_ARG", "the gradient at position %lld is not finite (%g)", (long long) i, dlogp[i]);
    }
    t.kept = false;  // consumed, whatever happens below
    // SQLR1_TRAIN_PROFILE=1 prints where the backward's time goes (each graph runs synchronously).
    static const bool profile = getenv("SQLR1_TRAIN_PROFILE") != nullptr;
    auto now = []() { return std::chrono::steady_clock::now(); };
    auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
    auto t_start = now();

    // The head: d logp / d logits = (onehot(target) - p) / T per token, then back through the final norm.
    {
        graph_ctx g(t, TRAIN_GRAPH_NODES);
        graph_inputs in;
        builder b{t, g.ctx, g.gf, in, batch.ns, batch.nt, true};
        // Rows without a target get no gradient: grad_a starts at zero and the head's rows are scattered into it.
        ggml_backend_tensor_memset(t.grad_a, 0, 0, ggml_nbytes(t.grad_a));
        const head_rows rows = head_select(batch);
        const int64_t n_sel = (int64_t) rows.pos.size();
        ggml_tensor * xs = n_sel > 0 ? ggml_get_rows(g.ctx, t.ckpt[hp.n_layer], b.input_i32(n_sel, rows.pos)) : nullptr;
        for (int64_t c0 = 0; c0 < n_sel; c0 += t.lp_chunk) {
            const int64_t n = std::min(t.lp_chunk, n_sel - c0);
            head_chunk h = head_forward(b, xs, rows, batch.inv_temp, c0, n);
            std::vector<float> g_sel(n);
            for (int64_t i = 0; i < n; i++) g_sel[i] = dlogp[rows.pos[c0 + i]];
            ggml_tensor * gs = ggml_scale(g.ctx, b.input_f32_2d(1, n, std::move(g_sel)), batch.inv_temp);
            ggml_tensor * dl = ggml_mul(g.ctx, h.P, ggml_neg(g.ctx, gs));                       // -p * g   [V, n]
            ggml_tensor * at_target = ggml_mul(g.ctx, ggml_scale_bias(g.ctx, ggml_exp(g.ctx, h.lp), -1.0f, 1.0f), gs);  // (1 - p_t) g
            std::vector<int64_t> flat(h.flat.begin(), h.flat.end());
            dl = ggml_set_rows(g.ctx, ggml_reshape_2d(g.ctx, dl, 1, V * n), at_target, b.input_i64(n, std::move(flat)));
            ggml_tensor * dxn = ggml_mul_mat(g.ctx, t.head_wt, ggml_reshape_2d(g.ctx, dl, V, n));  // [E, n]
            ggml_tensor * dx = rms_norm_w_back(b, h.xc, t.m->output_norm, dxn);
            std::vector<int64_t> at(rows.pos.begin() + c0, rows.pos.begin() + c0 + n);
            ggml_build_forward_expand(g.gf, ggml_set_rows(g.ctx, t.grad_a, dx, b.input_i64(n, std::move(at))));
        }
        if (n_sel > 0) run_graph(t, g.gf, in);
    }
    auto t_head = now();
    t.compute_ms = 0.0;
    t.graphs_run = 0;

    // The layers, last first: recompute from the saved input, then back. grad_a holds d loss / d output.
    ggml_tensor * dy = t.grad_a, * dx_buf = t.grad_b;
    double kernel_ms = 0.0;
    bool fused = false;
#ifdef SQLR1_WITH_CUDA
    fused = use_fused_kernels(t);
    if (fused) {
        scratch_alloc(t, T);
        shape_device_upload(t, batch.ns, batch.nt);
        queued_pass pass(t);
        for (int64_t il = hp.n_layer - 1; il >= 0; il--) {
            layer_backward_fused(t, batch, il, dy, dx_buf, kernel_ms);
            std::swap(dy, dx_buf);
        }
        pass.finish();
    }
#endif
    for (int64_t il = fused ? -1 : hp.n_layer - 1; il >= 0; il--) {
        graph_ctx g(t, TRAIN_GRAPH_NODES);
        graph_inputs in;
        builder b{t, g.ctx, g.gf, in, batch.ns, batch.nt, true};
        layer_fwd f = layer_forward(b, il, t.ckpt[il], true);
        ggml_tensor * dx = layer_backward(b, f, dy, il, il > 0);
        if (dx) ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, dx, dx_buf));
        run_graph(t, g.gf, in);
        std::swap(dy, dx_buf);
    }
    for (auto & e : t.params->params) {
        if (!e->external) continue;
        e->has_grad = true;
    }
    print_node_profile(t, "backward");
    if (profile) {
        fprintf(stderr, "[sqlr1 train] backward: head %.1f ms, %lld layers %.1f ms (%d graphs computing %.1f ms, fused kernels %.1f ms, "
                "the rest is graph building, allocation and inputs), compute buffer %.0f MiB\n",
                ms(t_start, t_head), (long long) hp.n_layer, ms(t_head, now()), t.graphs_run, t.compute_ms, kernel_ms,
                (double) ggml_gallocr_get_buffer_size(t.galloc, 0) / 1048576.0);
    }
}

trainer_memory trainer_memory_use(const trainer & t) {
    trainer_memory m;
    if (t.buf_fixed) m.fixed = ggml_backend_buffer_get_size(t.buf_fixed);
    if (t.buf_keep) m.kept = ggml_backend_buffer_get_size(t.buf_keep);
    if (t.galloc) m.compute = ggml_gallocr_get_buffer_size(t.galloc, 0);
    if (t.buf_scratch) m.compute += ggml_backend_buffer_get_size(t.buf_scratch);
    if (t.shape_dev.buf) m.compute += ggml_backend_buffer_get_size(t.shape_dev.buf);
    return m;
}

void trainer_release(trainer & t) {
    keep_free(t);
    scratch_free(t);
    shape_device_free(t);
    if (t.galloc) ggml_gallocr_free(t.galloc);
    t.galloc = nullptr;
}

} // namespace sqlr1
