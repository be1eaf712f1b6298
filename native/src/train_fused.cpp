// The layer-by-layer CUDA BF16 path of the trainer (train_internal.h): the kept forward and the backward run
// in a few graphs per layer around the project's kernels (native/cuda: Q4_0 dequantization, attention forward
// and backward, SwiGLU with the adapters' terms), with their inputs and outputs in a persistent scratch. Targets
// that share an input run as one product; see group_forward and group_backward.
#include "train_internal.h"

#ifdef SQLR1_WITH_CUDA
#include "attention.h"
#include "dequant.h"
#include "swiglu.h"
#endif

#include <cmath>

namespace sqlr1::train_impl {

void scratch_free(trainer & t) {
    if (t.buf_scratch) ggml_backend_buffer_free(t.buf_scratch);
    if (t.ctx_scratch) ggml_free(t.ctx_scratch);
    t.buf_scratch = nullptr;
    t.ctx_scratch = nullptr;
    t.scratch_capacity = 0;
    for (ggml_tensor *& x : t.stacked) x = nullptr;
    for (int gi = 0; gi < LORA_N_GROUPS; gi++) t.group_w[gi] = t.group_y[gi] = nullptr;
}

#ifdef SQLR1_WITH_CUDA
// On CUDA in BF16, where the attention kernels cover the head size, the kept forward and the backward run layer
// by layer around the project's kernels (layer_forward_fused, layer_backward_fused). The option fused_kernels =
// false keeps the written-out graphs instead (for comparisons).
bool use_fused_kernels(const trainer & t) {
    return t.fused_kernels && t.compute == GGML_TYPE_BF16 && t.cuda && attn_cuda_supported(t.m->hp.head_dim, t.ckpt[0]->data);
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
    for (int gi = 0; gi < LORA_N_GROUPS; gi++) {
        int64_t in = 0, rows = 0;
        for (int tg : LORA_GROUP_TARGETS[gi]) {
            if (tg < 0) continue;
            const ggml_tensor * w = lora_target_weight(*t.m, 0, tg);  // the same shapes in every layer
            in = w->ne[0];
            rows += w->ne[1] + r;
        }
        t.group_w[gi] = ggml_new_tensor_2d(c, GGML_TYPE_BF16, in, rows);
        if (gi != LORA_GROUP_DOWN) t.group_y[gi] = ggml_new_tensor_2d(c, GGML_TYPE_F32, rows, T);
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
ggml_tensor * place(builder & b, ggml_tensor * node, ggml_tensor * at, size_t offset) {
    if (ggml_nbytes(node) + offset > ggml_nbytes(at)) fail("ERR_INTERNAL", "scratch placement of %s: too large", ggml_op_desc(node));
    if (ggml_backend_tensor_alloc(at->buffer, node, (char *) at->data + offset) != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "scratch placement failed");
    ggml_build_forward_expand(b.gf, node);
    return node;
}

namespace {

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
        const int tg = LORA_GROUP_TARGETS[group][i];
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
    for (int tg : LORA_GROUP_TARGETS[group]) {
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
    for (int gi = 0; gi < LORA_N_GROUPS; gi++) {
        int64_t row = 0;
        for (int tg : LORA_GROUP_TARGETS[gi]) {
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

// The SwiGLU kernel's view of the gate/up group product (placed in group_y[LORA_GROUP_GATE_UP]). Only g's numbers are
// read: its tensors belong to a graph that has run.
swiglu_args swiglu_group(const trainer & t, const group_fwd & g, int64_t T) {
    swiglu_args a;
    float * base = (float *) t.group_y[LORA_GROUP_GATE_UP]->data;
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

// The attention's inputs from the Q, K, V group: norm, products, biases and adapter terms, RoPE.
group_fwd attn_inputs_grouped(builder & b, int64_t il, ggml_tensor * x, ggml_tensor * keep_y, layer_fwd & f) {
    ggml_context * ctx = b.ctx;
    const hparams & hp = b.hp();
    const layer_weights & L = b.t.m->layers[il];
    f.x = x;
    f.n1 = rms_norm_w(b, x, L.attn_norm);
    group_fwd g = group_forward(b, il, LORA_GROUP_QKV, f.n1, keep_y);  // the product converts n1 once (faster than a cast node)
    f.q3 = rope(b, ggml_reshape_3d(ctx, group_output(b, g, 0, L.bq), hp.head_dim, hp.n_head, b.T()), false);
    f.k3 = rope(b, ggml_reshape_3d(ctx, group_output(b, g, 1, L.bk), hp.head_dim, hp.n_head_kv, b.T()), false);
    f.v3 = ggml_reshape_3d(ctx, group_output(b, g, 2, L.bv), hp.head_dim, hp.n_head_kv, b.T());
    return g;
}

} // namespace

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
        attn_inputs_grouped(b, il, t.ckpt[il], t.group_y[LORA_GROUP_QKV], f);
        group_fwd o = group_forward(b, il, LORA_GROUP_O, attention(b, f, false), t.group_y[LORA_GROUP_O]);
        ggml_tensor * x2 = place(b, ggml_add(ctx, t.ckpt[il], group_output(b, o, 0, nullptr)), t.fx2);
        gu = group_forward(b, il, LORA_GROUP_GATE_UP, rms_norm_w(b, x2, L.ffn_norm), t.group_y[LORA_GROUP_GATE_UP]);
    });
    project_kernels(t, [&] { swiglu_cuda(swiglu_group(t, gu, T)); });  // h into the gate's rows
    run_built(t, batch, true, [&](builder & b) {
        ggml_context * ctx = b.ctx;
        ggml_tensor * h = ggml_view_2d(ctx, t.group_y[LORA_GROUP_GATE_UP], t.m->hp.n_ff, T, gu.rows * sizeof(float), 0);
        group_fwd dn = group_forward(b, il, LORA_GROUP_DOWN, h, nullptr);
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
    const attn_dims d{ hd, H, hp.n_head_kv, batch.nt, batch.ns, 1.0f / std::sqrt((float) hd), shape_span(t) };
    const float s = t.lora->scale();
    ggml_tensor * x = t.ckpt[il];
    auto timed = [&](auto fn) { kernel_ms += project_kernels(t, fn); };
    const lora_pair * pd = adapter_pair(t, il, LORA_DOWN);
    group_fwd qkv, o, gu;  // only their numbers outlive their graphs
    timed([&] { dequant_layer(t, il); });

    run_built(t, batch, true, [&](builder & b) {
        layer_fwd f;
        qkv = attn_inputs_grouped(b, il, x, t.group_y[LORA_GROUP_QKV], f);
        place(b, f.n1, t.fn1);  // kept for (D)
        for (int i = 0; i < 3; i++) stack_weight(b, LORA_GROUP_TARGETS[LORA_GROUP_QKV][i], qkv.wc[i], qkv.p[i]);
        ggml_build_forward_expand(b.gf, ggml_cpy(b.ctx, f.q3, t.aq));
        ggml_build_forward_expand(b.gf, ggml_cpy(b.ctx, f.k3, t.ak));
        ggml_build_forward_expand(b.gf, ggml_cpy(b.ctx, f.v3, t.av));
    });
    timed([&] { attn_cuda_forward(d, t.aq->data, t.ak->data, t.av->data, (float *) t.ao->data, (float *) t.alse->data); });

    run_built(t, batch, true, [&](builder & b) {
        ggml_context * ctx = b.ctx;
        o = group_forward(b, il, LORA_GROUP_O, t.ao, t.group_y[LORA_GROUP_O]);
        stack_weight(b, LORA_O, o.wc[0], o.p[0]);
        ggml_tensor * x2 = place(b, ggml_add(ctx, x, group_output(b, o, 0, nullptr)), t.fx2);
        ggml_tensor * n2 = place(b, rms_norm_w(b, x2, L.ffn_norm), t.fn2);
        gu = group_forward(b, il, LORA_GROUP_GATE_UP, n2, t.group_y[LORA_GROUP_GATE_UP]);
        stack_weight(b, LORA_GATE, gu.wc[0], gu.p[0]);
        stack_weight(b, LORA_UP, gu.wc[1], gu.p[1]);
        ggml_tensor * R = t.group_w[LORA_GROUP_DOWN];
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
        ggml_tensor * h = rows_of(b, LORA_GROUP_GATE_UP, gu, gu.row[0], F), * dg = rows_of(b, LORA_GROUP_GATE_UP, gu, gu.row[1], F);
        if (pd) {  // down: the adapter's gradients only, with dz = s B^T dy from (B)
            ggml_tensor * zd = ggml_scale(ctx, ggml_mul_mat(ctx, pd->a, h), s);                     // s A h
            b.accumulate(pd->b, ggml_out_prod(ctx, zd, dy));
            if (!reduced) b.accumulate(pd->a, ggml_out_prod(ctx, h, t.fdz));
        }
        ggml_tensor * zgu[3] = { zs_of(b, LORA_GROUP_GATE_UP, gu, 0), zs_of(b, LORA_GROUP_GATE_UP, gu, 1) };
        ggml_tensor * dgu[3] = { reduced ? nullptr : dg, reduced ? nullptr : t.fdh }, * dgu_mm[3] = { t.fdgb, t.fdub };
        ggml_tensor * dn2 = group_backward(b, il, LORA_GROUP_GATE_UP, t.fn2, zgu, dgu, dgu_mm, true);
        ggml_tensor * dx2 = place(b, ggml_add(ctx, dy, rms_norm_w_back(b, t.fx2, L.ffn_norm, dn2)), dx_buf);  // kept for (D)
        ggml_tensor * zo[3] = { zs_of(b, LORA_GROUP_O, o, 0) }, * dyo[3] = { dx2 };
        ggml_tensor * dattn = group_backward(b, il, LORA_GROUP_O, t.ao, zo, dyo, dyo, true);
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
        ggml_tensor * zs[3] = { zs_of(b, LORA_GROUP_QKV, qkv, 0), zs_of(b, LORA_GROUP_QKV, qkv, 1), zs_of(b, LORA_GROUP_QKV, qkv, 2) };
        ggml_tensor * dn1 = group_backward(b, il, LORA_GROUP_QKV, t.fn1, zs, dys, dys, need_dx);
        // dx = dx2 + d(norm)/dx, added into dx_buf where (C) left dx2
        if (need_dx) ggml_build_forward_expand(b.gf, ggml_add_inplace(ctx, dx_buf, rms_norm_w_back(b, x, L.attn_norm, dn1)));
    });
}
#endif

} // namespace sqlr1::train_impl
