#include "graph.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace sqlr1 {

kv_cache::~kv_cache() {
    if (buf) ggml_backend_buffer_free(buf);
    if (ctx) ggml_free(ctx);
}

void kv_cache_init(kv_cache & kv, const model & m, int64_t n_seq, int64_t n_ctx) {
    const hparams & hp = m.hp;
    kv.n_seq = n_seq;
    kv.n_cells = ((n_ctx + 1 + 255) / 256) * 256;
    ggml_init_params ip = { ggml_tensor_overhead() * (2 * hp.n_layer + 4), nullptr, true };
    kv.ctx = ggml_init(ip);
    if (!kv.ctx) fail("ERR_OUT_OF_MEMORY", "could not create the KV cache context");
    for (int64_t il = 0; il < hp.n_layer; il++) {
        kv.k.push_back(ggml_new_tensor_3d(kv.ctx, GGML_TYPE_F16, hp.n_embd_kv(), kv.n_cells, n_seq));
        kv.v.push_back(ggml_new_tensor_3d(kv.ctx, GGML_TYPE_F16, hp.n_embd_kv(), kv.n_cells, n_seq));
    }
    kv.buf = ggml_backend_alloc_ctx_tensors(kv.ctx, m.backends->primary);
    if (!kv.buf) fail("ERR_OUT_OF_MEMORY", "could not allocate the KV cache (%lld sequences x %lld cells) on %s",
                      (long long) n_seq, (long long) kv.n_cells, m.backends->device.c_str());
    ggml_backend_buffer_clear(kv.buf, 0);
    kv.len.assign(n_seq, 0);
}

static ggml_tensor * rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, float eps) {
    return ggml_mul(ctx, ggml_rms_norm(ctx, x, eps), w);
}

// Up to this many tokens, an adapter's A x runs as one single-column product per token (below): 16 by default,
// SQLR1_LORA_A_PER_TOKEN_MAX to compare (0: never).
static int64_t lora_a_per_token_max() {
    static const int64_t n = [] {
        const char * e = std::getenv("SQLR1_LORA_A_PER_TOKEN_MAX");
        return e && *e ? std::max<int64_t>(0, std::atoll(e)) : 16;
    }();
    return n;
}

// A [in, r] times x [in, T]. For a decode step's few tokens, x is viewed as T batches of one column, [in, 1, T],
// with A broadcast over them: ggml's CUDA backend then runs its matrix-vector kernel with one thread block per
// (row, token), r x T blocks in all, instead of a split-K GEMM plus its reduction (cuBLAS) or a single block
// reducing over the whole input (its F32 matrix kernel, chosen when r is a multiple of 32): an ncu profile of the
// B = 8 decode had those at 5 to 22 us a product. The result is the same [r, T] layout.
static ggml_tensor * lora_a_times(ggml_context * ctx, ggml_tensor * a, ggml_tensor * x) {
    const int64_t T = x->ne[1];
    if (T > 1 && T <= lora_a_per_token_max() && ggml_n_dims(x) == 2 && ggml_is_contiguous(x)) {
        ggml_tensor * y = ggml_mul_mat(ctx, a, ggml_reshape_3d(ctx, x, x->ne[0], 1, T));
        return ggml_reshape_2d(ctx, y, a->ne[1], T);
    }
    return ggml_mul_mat(ctx, a, x);
}

ggml_tensor * qwen2_linear(ggml_context * ctx, ggml_tensor * w, ggml_tensor * b, ggml_tensor * x, const lora_pair * p, float scale) {
    ggml_tensor * y = ggml_mul_mat(ctx, w, x);
    if (b) y = ggml_add(ctx, y, b);
    if (p && p->a) y = ggml_add(ctx, y, ggml_scale(ctx, ggml_mul_mat(ctx, p->b, lora_a_times(ctx, p->a, x)), scale));
    return y;
}

linear_group qwen2_linear_group(ggml_context * ctx, const model & m, int64_t il, int group, ggml_tensor * x,
                                const lora_adapter * lora, const lora_pack * pack) {
    const lora_group * g = pack ? &pack->layers[il][group] : nullptr;
    ggml_tensor * d = nullptr;  // the group's stacked s B_i A_i x + b_i [rows, T]
    if (g && g->n > 0) {
        d = ggml_mul_mat(ctx, g->b, lora_a_times(ctx, g->a, x));
        if (g->bias) d = ggml_add(ctx, d, g->bias);
    }
    int n_members = 0;
    while (n_members < 3 && LORA_GROUP_TARGETS[group][n_members] >= 0) n_members++;
    const layer_weights & L = m.layers[il];
    ggml_tensor * fused = group == LORA_GROUP_QKV ? L.wqkv : group == LORA_GROUP_GATE_UP ? L.ffn_gate_up : nullptr;
    linear_group r;
    if (fused && (!lora || (g && (g->n == 0 || g->n == n_members)))) {
        // d's rows are the members' rows in the group's order, as are the fused weight's.
        ggml_tensor * y = ggml_mul_mat(ctx, fused, x);
        if (d) y = ggml_add(ctx, y, d);
        else if (group == LORA_GROUP_QKV && L.bqkv) y = ggml_add(ctx, y, L.bqkv);
        r.whole = y;
        size_t offset = 0;
        for (int i = 0; i < n_members; i++) {
            const int64_t rows = lora_target_weight(m, il, LORA_GROUP_TARGETS[group][i])->ne[1];
            r.y[i] = ggml_view_2d(ctx, y, rows, y->ne[1], y->nb[1], offset);
            offset += ggml_row_size(y->type, rows);
        }
        return r;
    }
    for (int i = 0; i < n_members; i++) {
        const int t = LORA_GROUP_TARGETS[group][i];
        ggml_tensor * w = lora_target_weight(m, il, t), * b = lora_target_bias(m, il, t);
        const int j = g ? g->index_of(t) : -1;
        if (j >= 0) {
            r.y[i] = ggml_add(ctx, ggml_mul_mat(ctx, w, x), ggml_view_2d(ctx, d, g->rows[j], d->ne[1], d->nb[1], d->nb[0] * g->row0[j]));
        } else {
            const lora_pair * lp = lora ? &lora->layers[il][t] : nullptr;
            r.y[i] = qwen2_linear(ctx, w, b, x, lp, lora ? lora->scale() : 0.0f);
        }
    }
    return r;
}

ggml_tensor * frozen_weight(ggml_context * ctx, ggml_tensor * w, ggml_tensor * iota, ggml_type type, bool transposed, bool rows_in_type) {
    if (!transposed && w->type == type) return w;
    ggml_tensor * wc;
    if (rows_in_type && w->type != GGML_TYPE_F32 && (type == GGML_TYPE_F16 || type == GGML_TYPE_BF16)) {
        // ggml_get_rows always declares an F32 result; the CUDA kernel writes F16 or BF16 as well, so the result
        // is re-typed before allocation: one pass instead of a dequantize and a cast.
        wc = ggml_get_rows(ctx, w, ggml_view_1d(ctx, iota, w->ne[1], 0));
        wc->type = type;
        wc->nb[0] = ggml_type_size(type);
        for (int i = 1; i < GGML_MAX_DIMS; i++) wc->nb[i] = wc->nb[i - 1] * wc->ne[i - 1];
    } else {
        ggml_tensor * wf = w->type == GGML_TYPE_F32 ? w : ggml_get_rows(ctx, w, ggml_view_1d(ctx, iota, w->ne[1], 0));  // F32 [in, out]
        wc = type == GGML_TYPE_F32 ? wf : ggml_cast(ctx, wf, type);
    }
    return transposed ? transpose01(ctx, wc) : wc;
}

ggml_tensor * transpose01(ggml_context * ctx, ggml_tensor * x) {
    // As a 3-d same-type copy, ggml's CUDA backend transposes in shared-memory tiles (coalesced both ways).
    const int64_t n2 = x->ne[2] * x->ne[3];
    ggml_tensor * v = ggml_transpose(ctx, ggml_reshape_3d(ctx, x, x->ne[0], x->ne[1], n2));
    ggml_tensor * out = ggml_cpy(ctx, v, ggml_new_tensor_3d(ctx, x->type, x->ne[1], x->ne[0], n2));
    return ggml_reshape_4d(ctx, out, x->ne[1], x->ne[0], x->ne[2], x->ne[3]);
}

ggml_tensor * frozen_input_grad(ggml_context * ctx, ggml_tensor * w, ggml_tensor * dy, ggml_tensor * iota, ggml_type type) {
    return ggml_mul_mat(ctx, frozen_weight(ctx, w, iota, type, true), dy);   // F32 [in, T]
}

forward_result qwen2_build_forward(ggml_context * ctx, ggml_cgraph * gf, const model & m, kv_cache & kv, const forward_params & p) {
    const hparams & hp = m.hp;
    const int64_t n_tokens = p.nt * p.ns;
    const int64_t hd = hp.head_dim, KV = hp.n_embd_kv();
    forward_result r;
    batch_inputs & in = r.in;

    in.tokens = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
    in.pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
    in.kv_idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n_tokens);
    in.mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, p.n_kv, p.nt, 1, p.ns);
    for (ggml_tensor * t : {in.tokens, in.pos, in.kv_idx, in.mask}) ggml_set_input(t);

    ggml_tensor * x = ggml_get_rows(ctx, m.tok_embd, in.tokens);  // [E, T]
    const float kq_scale = 1.0f / std::sqrt((float) hd);

    for (int64_t il = 0; il < hp.n_layer; il++) {
        const layer_weights & L = m.layers[il];
        // Each group of targets that share an input: every target's y = W x (+ b) (+ s B A x).
        auto group = [&](int gi, ggml_tensor * in) { return qwen2_linear_group(ctx, m, il, gi, in, p.lora, p.pack); };
        ggml_tensor * cur = rms_norm(ctx, x, L.attn_norm, hp.rms_eps);

        const auto qkv = group(LORA_GROUP_QKV, cur).y;  // each [rows, T], possibly rows of one product
        auto heads = [&](ggml_tensor * t, int64_t n) { return ggml_view_3d(ctx, t, hd, n, n_tokens, ggml_row_size(t->type, hd), t->nb[1], 0); };
        ggml_tensor * q = heads(qkv[0], hp.n_head);
        ggml_tensor * k = heads(qkv[1], hp.n_head_kv);
        ggml_tensor * v = qkv[2];  // [KV, T]
        q = ggml_rope_ext(ctx, q, in.pos, nullptr, hp.n_rot, hp.rope_mode, hp.n_ctx_train, hp.rope_freq_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
        k = ggml_rope_ext(ctx, k, in.pos, nullptr, hp.n_rot, hp.rope_mode, hp.n_ctx_train, hp.rope_freq_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);

        // Store this batch's K/V first; the attention below reads them back from the cache.
        ggml_tensor * k_all = ggml_reshape_2d(ctx, kv.k[il], KV, kv.n_cells * kv.n_seq);
        ggml_tensor * v_all = ggml_reshape_2d(ctx, kv.v[il], KV, kv.n_cells * kv.n_seq);
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, k_all, ggml_reshape_2d(ctx, k, KV, n_tokens), in.kv_idx));
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, v_all, v, in.kv_idx));

        const size_t row = ggml_row_size(GGML_TYPE_F16, KV);
        ggml_tensor * kc = ggml_view_4d(ctx, kv.k[il], hd, hp.n_head_kv, p.n_kv, p.ns,
                                        ggml_row_size(GGML_TYPE_F16, hd), row, row * kv.n_cells, row * kv.n_cells * p.s0);
        ggml_tensor * vc = ggml_view_4d(ctx, kv.v[il], hd, hp.n_head_kv, p.n_kv, p.ns,
                                        ggml_row_size(GGML_TYPE_F16, hd), row, row * kv.n_cells, row * kv.n_cells * p.s0);
        // [hd, n_head, nt, ns] -> [hd, nt, n_head, ns]
        ggml_tensor * q4 = ggml_view_4d(ctx, q, hd, hp.n_head, p.nt, p.ns, q->nb[1], q->nb[2], q->nb[2] * p.nt, 0);
        q4 = ggml_permute(ctx, q4, 0, 2, 1, 3);
        kc = ggml_permute(ctx, kc, 0, 2, 1, 3);
        vc = ggml_permute(ctx, vc, 0, 2, 1, 3);
        ggml_tensor * attn = ggml_flash_attn_ext(ctx, q4, kc, vc, in.mask, kq_scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(attn, GGML_PREC_F32);
        attn = ggml_reshape_2d(ctx, attn, hp.n_embd_q(), n_tokens);

        x = ggml_add(ctx, x, group(LORA_GROUP_O, attn).y[0]);

        cur = rms_norm(ctx, x, L.ffn_norm, hp.rms_eps);
        const auto gate_up = group(LORA_GROUP_GATE_UP, cur);
        // One product: gate's rows, then up's, as ggml_swiglu takes them.
        ggml_tensor * h = gate_up.whole ? ggml_swiglu(ctx, gate_up.whole) : ggml_swiglu_split(ctx, gate_up.y[0], gate_up.y[1]);
        x = ggml_add(ctx, x, group(LORA_GROUP_DOWN, h).y[0]);
    }

    if (p.logprobs) {
        x = rms_norm(ctx, x, m.output_norm, hp.rms_eps);
        const int64_t V = hp.n_vocab;
        for (int64_t c0 = 0; c0 < n_tokens; c0 += p.lp_chunk) {
            const int64_t n = std::min(p.lp_chunk, n_tokens - c0);
            ggml_tensor * xc = ggml_view_2d(ctx, x, x->ne[0], n, x->nb[1], x->nb[1] * c0);
            ggml_tensor * probs = ggml_soft_max(ctx, ggml_scale(ctx, ggml_mul_mat(ctx, m.output, xc), p.inv_temp));  // [V, n]
            ggml_tensor * idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
            ggml_set_input(idx);
            // Gather each token's target probability: view the [V, n] block as V*n rows of one value.
            ggml_tensor * lp = ggml_log(ctx, ggml_get_rows(ctx, ggml_reshape_2d(ctx, probs, 1, V * n), idx));
            ggml_set_output(lp);
            ggml_build_forward_expand(gf, lp);
            r.lp_idx.push_back(idx);
            r.lp.push_back(lp);
        }
    } else if (p.n_out > 0) {
        if (!p.all_outputs) {
            in.out_ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, p.n_out);
            ggml_set_input(in.out_ids);
            x = ggml_get_rows(ctx, x, in.out_ids);
        }
        x = rms_norm(ctx, x, m.output_norm, hp.rms_eps);
        r.logits = ggml_mul_mat(ctx, m.output, x);
        ggml_set_output(r.logits);
        ggml_build_forward_expand(gf, r.logits);
    }
    // With no outputs, only the K/V writes matter: the last layer's attention and FFN are left out.
    return r;
}

} // namespace sqlr1
