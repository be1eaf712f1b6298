// The training graph's pieces (train_internal.h): the shape inputs, the LoRA linear layers, a layer's forward
// with attention written out (or flash attention in forward-only reduced-precision passes) and its hand-written
// backward, and the output head over the positions that have a target.
#include "train_internal.h"

#include "attention.h"

#include <algorithm>
#include <cmath>

namespace sqlr1::train_impl {

// The host copies of the shape inputs for the batch a pass runs, made again only when its shape or layout
// changes: a backward builds several graphs per layer.
const trainer::shape_inputs & shape_prepare(trainer & t, const train_batch & b) {
    trainer::shape_inputs & c = t.shape_cache;
    if (c.version != 0 && c.ns == b.ns && c.nt == b.nt && c.given_pos == b.pos && c.span == b.span) return c;
    const int64_t ns = b.ns, nt = b.nt;
    c.ns = ns;
    c.nt = nt;
    c.given_pos = b.pos;
    c.span = b.span;
    c.version++;
    c.pos.resize(ns * nt);
    for (int64_t s = 0; s < ns; s++) for (int64_t i = 0; i < nt; i++) c.pos[s * nt + i] = b.pos.empty() ? (int32_t) i : b.pos[s * nt + i];
    c.mask_rows = b.span.empty() ? 1 : ns;  // causal: one [nt, nt] mask for every sequence; spans: one each
    c.mask.clear();
    c.mask16.clear();
    return c;
}

namespace {

// Row q of a mask: `seen` where the query sees the key, `unseen` elsewhere (sp: the query's span, or null).
template <typename T>
void mask_row(T * row, int64_t nt, int64_t q, const int32_t * sp, T seen, T unseen) {
    std::fill(row, row + nt, unseen);
    if (!sp) {
        std::fill(row, row + q + 1, seen);
        return;
    }
    const int64_t shared_end = std::min<int64_t>(sp[1], q + 1);
    if (sp[0] < shared_end) std::fill(row + sp[0], row + shared_end, seen);
    if (sp[2] <= q) std::fill(row + sp[2], row + q + 1, seen);
}

template <typename T>
void mask_fill(const trainer::shape_inputs & c, std::vector<T> & m, int64_t rows, T seen, T unseen) {
    const int64_t nt = c.nt;
    m.resize(rows * nt * nt);
    for (int64_t s = 0; s < rows; s++) {
        const int64_t r = s % c.mask_rows;  // causal masks repeat the one row set
        for (int64_t q = 0; q < nt; q++) mask_row(&m[(s * nt + q) * nt], nt, q, c.span.empty() ? nullptr : &c.span[3 * (r * nt + q)], seen, unseen);
    }
}

} // namespace

// The masks are made when first asked for (by a graph, or for the device copy).
const std::vector<float> & shape_mask(trainer & t) {
    trainer::shape_inputs & c = t.shape_cache;
    if (c.mask.empty()) mask_fill(c, c.mask, c.mask_rows, 0.0f, -INFINITY);
    return c.mask;
}

// Flash attention's mask, one copy per sequence [nt, nt, 1, ns]: ggml's CUDA kernel, when it scans the mask for
// tiles to skip, steps through it per sequence and does not broadcast a single one.
const std::vector<ggml_fp16_t> & shape_mask16(trainer & t) {
    trainer::shape_inputs & c = t.shape_cache;
    if (c.mask16.empty()) mask_fill(c, c.mask16, c.ns, ggml_fp32_to_fp16(0.0f), ggml_fp32_to_fp16(-INFINITY));
    return c.mask16;
}

void shape_device_free(trainer & t) {
    if (t.shape_dev.buf) ggml_backend_buffer_free(t.shape_dev.buf);
    if (t.shape_dev.ctx) ggml_free(t.shape_dev.ctx);
    t.shape_dev = {};
}

#ifdef SQLR1_WITH_CUDA
void shape_device_upload(trainer & t) {
    const trainer::shape_inputs & h = t.shape_cache;
    if (t.shape_dev.buf && t.shape_dev.version == h.version) return;
    shape_device_free(t);
    const int64_t ns = h.ns, nt = h.nt;
    ggml_init_params ip = { ggml_tensor_overhead() * 3, nullptr, true };
    t.shape_dev.ctx = ggml_init(ip);
    if (!t.shape_dev.ctx) fail("ERR_OUT_OF_MEMORY", "could not create the shape inputs' context");
    t.shape_dev.pos = ggml_new_tensor_1d(t.shape_dev.ctx, GGML_TYPE_I32, ns * nt);
    t.shape_dev.mask16 = ggml_new_tensor_4d(t.shape_dev.ctx, GGML_TYPE_F16, nt, nt, 1, ns);
    if (!h.span.empty()) t.shape_dev.span = ggml_new_tensor_1d(t.shape_dev.ctx, GGML_TYPE_I32, 3 * ns * nt);
    t.shape_dev.buf = ggml_backend_alloc_ctx_tensors(t.shape_dev.ctx, t.m->backends->primary);
    if (!t.shape_dev.buf) {
        shape_device_free(t);
        fail("ERR_OUT_OF_MEMORY", "could not allocate the shape inputs on %s", t.m->backends->device.c_str());
    }
    ggml_backend_tensor_set(t.shape_dev.pos, h.pos.data(), 0, ggml_nbytes(t.shape_dev.pos));
    if (t.shape_dev.span) ggml_backend_tensor_set(t.shape_dev.span, h.span.data(), 0, ggml_nbytes(t.shape_dev.span));
    // The F16 mask is written on the device from the spans: one copy per sequence is nt * nt * ns values
    // (105 MB for 8 rows of 2,559 tokens), made and uploaded from the host for every layout before.
    attn_mask_f16_cuda(t.shape_dev.mask16->data, shape_span(t), nt, ns);
    t.shape_dev.version = h.version;
}
#endif

const lora_pair * adapter_pair(const trainer & t, int64_t il, int target) {
    if (!t.lora) return nullptr;
    const lora_pair & p = t.lora->layers[il][target];
    return p.a ? &p : nullptr;
}

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

head_rows head_select(const train_batch & batch) {
    head_rows r;
    for (int64_t i = 0; i < (int64_t) batch.targets.size(); i++) {
        if (batch.targets[i] < 0) continue;
        r.pos.push_back((int32_t) i);
        r.target.push_back(batch.targets[i]);
    }
    return r;
}

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

} // namespace sqlr1::train_impl
