#include "train.h"

#include <cmath>
#include <cstring>
#include <mutex>

namespace sqlr1 {

// ---------------------------------------------------------------------------------------------------------
// The adapter's parameter store

namespace {
std::mutex params_mutex;
// One store per adapter while anything holds it. The store keeps the adapter alive (its values are the
// adapter's tensors), so the adapter side holds only a weak reference.
std::vector<std::pair<std::weak_ptr<lora_adapter>, std::weak_ptr<param_store>>> params_registry;
}

std::shared_ptr<param_store> lora_adapter_params(const std::shared_ptr<lora_adapter> & a) {
    std::lock_guard<std::mutex> lock(params_mutex);
    for (auto it = params_registry.begin(); it != params_registry.end();) {
        auto ad = it->first.lock();
        auto st = it->second.lock();
        if (!ad || !st) { it = params_registry.erase(it); continue; }
        if (ad == a) return st;
        ++it;
    }
    auto s = param_store_init(a->m->backends);
    s->owner = a;
    for (ggml_tensor * t : a->tensors()) param_store_adopt(*s, ggml_get_name(t), t);
    params_registry.emplace_back(a, s);
    return s;
}

// ---------------------------------------------------------------------------------------------------------
// Graph pieces

namespace {

constexpr size_t TRAIN_GRAPH_NODES = 16384;

struct graph_ctx {
    ggml_context * ctx = nullptr;
    ggml_cgraph * gf = nullptr;
    explicit graph_ctx(size_t n_nodes) {
        ggml_init_params ip = { ggml_tensor_overhead() * n_nodes + ggml_graph_overhead_custom(n_nodes, false), nullptr, true };
        ctx = ggml_init(ip);
        if (!ctx) fail("ERR_OUT_OF_MEMORY", "could not create a training graph context");
        gf = ggml_new_graph_custom(ctx, n_nodes, false);
    }
    ~graph_ctx() { ggml_free(ctx); }
};

// What one graph needs besides the weights: positions, the causal mask, and a place for per-graph inputs.
struct graph_inputs {
    ggml_tensor * pos = nullptr;      // I32 [T]: 0..nt-1 per sequence
    ggml_tensor * mask = nullptr;     // F32 [nt, nt]: 0 where key <= query, -inf above
    std::vector<std::pair<ggml_tensor *, std::vector<int32_t>>> i32;
    std::vector<std::pair<ggml_tensor *, std::vector<int64_t>>> i64;
    std::vector<std::pair<ggml_tensor *, std::vector<float>>> f32;
};

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

    void add_positions_and_mask() {
        std::vector<int32_t> pos(T());
        for (int64_t s = 0; s < ns; s++) for (int64_t i = 0; i < nt; i++) pos[s * nt + i] = (int32_t) i;
        in.pos = input_i32(T(), std::move(pos));
        std::vector<float> mask(nt * nt);
        for (int64_t q = 0; q < nt; q++) for (int64_t k = 0; k < nt; k++) mask[q * nt + k] = k <= q ? 0.0f : -INFINITY;
        in.mask = input_f32_2d(nt, nt, std::move(mask));
    }

    ggml_tensor * frozen(ggml_tensor * w) { return frozen_weight(ctx, w, t.iota, t.compute, false); }

    ggml_tensor * cast(ggml_tensor * x) { return ggml_cpy(ctx, x, ggml_new_tensor(ctx, t.compute, GGML_MAX_DIMS, x->ne)); }

    const lora_pair * pair(int64_t il, int target) const {
        if (!use_lora || !t.lora) return nullptr;
        const lora_pair & p = t.lora->layers[il][target];
        return p.a ? &p : nullptr;
    }

    // Adds g to a parameter's gradient accumulator, in place.
    void accumulate(ggml_tensor * value, ggml_tensor * g) {
        for (auto & e : t.params->params) {
            if (e->value == value) {
                ggml_build_forward_expand(gf, ggml_add_inplace(ctx, e->grad, g));
                return;
            }
        }
        fail("ERR_INTERNAL", "tensor '%s' is not a parameter of the adapter's store", ggml_get_name(value));
    }
};

// One linear layer y = W x (+ b) (+ s B (A x)): what its backward needs.
struct linear_fwd {
    ggml_tensor * w = nullptr;        // the frozen weight (as stored)
    ggml_tensor * x = nullptr;        // input [in, T]
    ggml_tensor * zs = nullptr;       // s * A x [r, T] (LoRA only)
    const lora_pair * p = nullptr;
    ggml_tensor * y = nullptr;
};

linear_fwd linear(builder & b, int64_t il, int target, ggml_tensor * w, ggml_tensor * bias, ggml_tensor * x) {
    linear_fwd f;
    f.w = w;
    f.x = x;
    f.p = b.pair(il, target);
    f.y = ggml_mul_mat(b.ctx, b.frozen(w), x);
    if (bias) f.y = ggml_add(b.ctx, f.y, bias);
    if (f.p) {
        // The scale goes on the small [r, T] product rather than the [out, T] output.
        f.zs = ggml_scale(b.ctx, ggml_mul_mat(b.ctx, f.p->a, x), b.t.lora->scale());
        f.y = ggml_add(b.ctx, f.y, ggml_mul_mat(b.ctx, f.p->b, f.zs));
    }
    return f;
}

// dx = W^T dy (+ A dz), and the adapter's gradients: dB = zs dy^T, dz = s B^T dy, dA = x dz^T.
ggml_tensor * linear_back(builder & b, const linear_fwd & f, ggml_tensor * dy, bool need_dx) {
    ggml_context * ctx = b.ctx;
    ggml_tensor * dx = need_dx ? frozen_input_grad(ctx, f.w, dy, b.t.iota, b.t.compute) : nullptr;
    if (f.p) {
        b.accumulate(f.p->b, ggml_out_prod(ctx, f.zs, dy));                                           // [r, out]
        ggml_tensor * dz = ggml_scale(ctx, ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, f.p->b)), dy), b.t.lora->scale());  // [r, T]
        b.accumulate(f.p->a, ggml_out_prod(ctx, f.x, dz));                                            // [in, r]
        if (need_dx) dx = ggml_add(ctx, dx, ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, f.p->a)), dz));
    }
    return dx;
}

ggml_tensor * rms_norm_w(builder & b, ggml_tensor * x, ggml_tensor * w) {
    return ggml_mul(b.ctx, ggml_rms_norm(b.ctx, x, b.hp().rms_eps), w);
}

ggml_tensor * rms_norm_w_back(builder & b, ggml_tensor * x, ggml_tensor * w, ggml_tensor * dn) {
    return ggml_rms_norm_back(b.ctx, ggml_mul(b.ctx, dn, w), x, b.hp().rms_eps);
}

ggml_tensor * rope(builder & b, ggml_tensor * x, bool back) {
    const hparams & hp = b.hp();
    if (back) return ggml_rope_ext_back(b.ctx, x, b.in.pos, nullptr, hp.n_rot, hp.rope_mode, hp.n_ctx_train, hp.rope_freq_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
    return ggml_rope_ext(b.ctx, x, b.in.pos, nullptr, hp.n_rot, hp.rope_mode, hp.n_ctx_train, hp.rope_freq_base, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
}

// Sums the query heads of each KV group: [hd, nt, H, ns] -> [hd, nt, Hkv, ns] (query head h uses KV head
// h / group, as ggml's matrix product broadcasts).
ggml_tensor * group_sum(builder & b, ggml_tensor * x, int64_t group) {
    if (group == 1) return x;
    const int64_t hk = x->ne[2] / group;
    ggml_tensor * acc = nullptr;
    for (int64_t g = 0; g < group; g++) {
        ggml_tensor * v = ggml_view_4d(b.ctx, x, x->ne[0] * x->ne[1], 1, hk, x->ne[3], x->nb[2], x->nb[2] * group, x->nb[3], x->nb[2] * g);
        acc = acc ? ggml_add(b.ctx, acc, v) : ggml_cont(b.ctx, v);
    }
    return ggml_reshape_4d(b.ctx, acc, x->ne[0], x->ne[1], hk, x->ne[3]);
}

struct layer_fwd {
    ggml_tensor * x = nullptr, * n1 = nullptr, * x2 = nullptr, * n2 = nullptr;
    linear_fwd q, k, v, o, gate, up, down;
    ggml_tensor * q4 = nullptr, * k4 = nullptr, * v4 = nullptr;  // after RoPE, [hd, heads, nt, ns] views
    ggml_tensor * P = nullptr;                                     // softmax [nt_k, nt_q, H, ns]
    ggml_tensor * g = nullptr, * u = nullptr, * sg = nullptr;      // gate, up, silu(gate)
    ggml_tensor * y = nullptr;
};

layer_fwd layer_forward(builder & b, int64_t il, ggml_tensor * x, bool for_backward) {
    ggml_context * ctx = b.ctx;
    const hparams & hp = b.hp();
    const layer_weights & L = b.t.m->layers[il];
    const int64_t hd = hp.head_dim, H = hp.n_head, Hk = hp.n_head_kv, nt = b.nt, ns = b.ns, T = b.T();
    layer_fwd f;
    f.x = x;
    f.n1 = rms_norm_w(b, x, L.attn_norm);
    f.q = linear(b, il, LORA_Q, L.wq, L.bq, f.n1);
    f.k = linear(b, il, LORA_K, L.wk, L.bk, f.n1);
    f.v = linear(b, il, LORA_V, L.wv, L.bv, f.n1);
    f.q4 = ggml_reshape_4d(ctx, rope(b, ggml_reshape_3d(ctx, f.q.y, hd, H, T), false), hd, H, nt, ns);
    f.k4 = ggml_reshape_4d(ctx, rope(b, ggml_reshape_3d(ctx, f.k.y, hd, Hk, T), false), hd, Hk, nt, ns);
    f.v4 = ggml_reshape_4d(ctx, f.v.y, hd, Hk, nt, ns);

    ggml_tensor * qp = ggml_cont(ctx, ggml_permute(ctx, f.q4, 0, 2, 1, 3));        // F32 [hd, nt, H, ns]
    ggml_tensor * kp = b.cast(ggml_permute(ctx, f.k4, 0, 2, 1, 3));                 // [hd, nt, Hk, ns]
    ggml_tensor * vt = b.cast(ggml_permute(ctx, f.v4, 1, 2, 0, 3));                 // [nt, hd, Hk, ns]
    ggml_tensor * kq = ggml_mul_mat(ctx, kp, qp);                                    // [nt_k, nt_q, H, ns]
    f.P = ggml_soft_max_ext(ctx, kq, b.in.mask, 1.0f / std::sqrt((float) hd), 0.0f);
    ggml_tensor * o = ggml_mul_mat(ctx, vt, f.P);                                    // [hd, nt, H, ns]
    ggml_tensor * attn = ggml_reshape_2d(ctx, ggml_cont(ctx, ggml_permute(ctx, o, 0, 2, 1, 3)), hd * H, T);

    f.o = linear(b, il, LORA_O, L.wo, nullptr, attn);
    f.x2 = ggml_add(ctx, x, f.o.y);
    f.n2 = rms_norm_w(b, f.x2, L.ffn_norm);
    f.gate = linear(b, il, LORA_GATE, L.ffn_gate, nullptr, f.n2);
    f.up = linear(b, il, LORA_UP, L.ffn_up, nullptr, f.n2);
    f.g = f.gate.y;
    f.u = f.up.y;
    ggml_tensor * h;
    if (for_backward) {
        f.sg = ggml_silu(ctx, f.g);
        h = ggml_mul(ctx, f.sg, f.u);
    } else {
        h = ggml_swiglu_split(ctx, f.g, f.u);
    }
    f.down = linear(b, il, LORA_DOWN, L.ffn_down, nullptr, h);
    f.y = ggml_add(ctx, f.x2, f.down.y);
    return f;
}

// dy [E, T] -> dx [E, T] (null when !need_dx), adding the layer's adapter gradients.
ggml_tensor * layer_backward(builder & b, const layer_fwd & f, ggml_tensor * dy, int64_t il, bool need_dx) {
    ggml_context * ctx = b.ctx;
    const hparams & hp = b.hp();
    const layer_weights & L = b.t.m->layers[il];
    const int64_t hd = hp.head_dim, H = hp.n_head, Hk = hp.n_head_kv, nt = b.nt, ns = b.ns, T = b.T();

    // FFN: y = x2 + down(silu(g) * u)
    ggml_tensor * dh = linear_back(b, f.down, dy, true);
    ggml_tensor * du = ggml_mul(ctx, dh, f.sg);
    ggml_tensor * dg = ggml_silu_back(ctx, ggml_mul(ctx, dh, f.u), f.g);
    ggml_tensor * dn2 = ggml_add(ctx, linear_back(b, f.gate, dg, true), linear_back(b, f.up, du, true));
    ggml_tensor * dx2 = ggml_add(ctx, dy, rms_norm_w_back(b, f.x2, L.ffn_norm, dn2));

    // Attention: x2 = x + o(attn), attn = V softmax(scale K^T Q + mask)
    ggml_tensor * dattn = linear_back(b, f.o, dx2, true);                                     // [hd*H, T]
    ggml_tensor * dattn4 = ggml_reshape_4d(ctx, dattn, hd, H, nt, ns);
    ggml_tensor * dO = ggml_cont(ctx, ggml_permute(ctx, dattn4, 0, 2, 1, 3));                // [hd, nt, H, ns]
    ggml_tensor * vc = b.cast(ggml_permute(ctx, f.v4, 0, 2, 1, 3));                           // [hd, nt_k, Hk, ns]
    ggml_tensor * dP = ggml_mul_mat(ctx, vc, dO);                                             // [nt_k, nt_q, H, ns]
    ggml_tensor * dS = ggml_soft_max_ext_back(ctx, dP, f.P, 1.0f / std::sqrt((float) hd), 0.0f);  // d/d(K^T Q)
    ggml_tensor * kt = b.cast(ggml_permute(ctx, f.k4, 1, 2, 0, 3));                           // [nt_k, hd, Hk, ns]
    ggml_tensor * dQ = ggml_mul_mat(ctx, kt, dS);                                             // [hd, nt_q, H, ns]
    ggml_tensor * qt = b.cast(ggml_permute(ctx, f.q4, 1, 2, 0, 3));                           // [nt_q, hd, H, ns]
    ggml_tensor * dSt = ggml_cont(ctx, ggml_transpose(ctx, dS));                              // [nt_q, nt_k, H, ns]
    ggml_tensor * dK = group_sum(b, ggml_mul_mat(ctx, qt, dSt), H / Hk);                      // [hd, nt_k, Hk, ns]
    ggml_tensor * dOt = b.cast(ggml_permute(ctx, dattn4, 1, 2, 0, 3));                        // [nt_q, hd, H, ns]
    ggml_tensor * Pt = ggml_cont(ctx, ggml_transpose(ctx, f.P));                              // [nt_q, nt_k, H, ns]
    ggml_tensor * dV = group_sum(b, ggml_mul_mat(ctx, dOt, Pt), H / Hk);                      // [hd, nt_k, Hk, ns]

    ggml_tensor * dq = rope(b, ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, dQ, 0, 2, 1, 3)), hd, H, T), true);
    ggml_tensor * dk = rope(b, ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, dK, 0, 2, 1, 3)), hd, Hk, T), true);
    ggml_tensor * dv = ggml_cont(ctx, ggml_permute(ctx, dV, 0, 2, 1, 3));
    ggml_tensor * dn1 = linear_back(b, f.q, ggml_reshape_2d(ctx, dq, hd * H, T), need_dx);
    ggml_tensor * dn1k = linear_back(b, f.k, ggml_reshape_2d(ctx, dk, hd * Hk, T), need_dx);
    ggml_tensor * dn1v = linear_back(b, f.v, ggml_reshape_2d(ctx, dv, hd * Hk, T), need_dx);
    if (!need_dx) return nullptr;
    dn1 = ggml_add(ctx, ggml_add(ctx, dn1, dn1k), dn1v);
    return ggml_add(ctx, dx2, rms_norm_w_back(b, f.x, L.attn_norm, dn1));
}

// The output head over token chunk [c0, c0 + n): probabilities softmax(W_out^T norm(x) / T) [V, n] and the
// log-prob of each token's target [1, n].
struct head_chunk {
    ggml_tensor * xc = nullptr, * P = nullptr, * lp = nullptr;
    std::vector<int32_t> flat;        // token * V + target (0 for none)
};

head_chunk head_forward(builder & b, ggml_tensor * xL, const train_batch & batch, int64_t c0, int64_t n) {
    ggml_context * ctx = b.ctx;
    const int64_t V = b.hp().n_vocab;
    head_chunk h;
    h.xc = ggml_view_2d(ctx, xL, xL->ne[0], n, xL->nb[1], xL->nb[1] * c0);
    ggml_tensor * logits = ggml_mul_mat(ctx, b.t.head_w, rms_norm_w(b, h.xc, b.t.m->output_norm));
    if (batch.inv_temp != 1.0f) logits = ggml_scale(ctx, logits, batch.inv_temp);
    h.P = ggml_soft_max(ctx, logits);
    h.flat.resize(n);
    for (int64_t i = 0; i < n; i++) {
        const int32_t tg = batch.targets[c0 + i];
        h.flat[i] = (int32_t) (i * V + (tg >= 0 ? tg : 0));
    }
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
    for (auto & [x, d] : in.i32) ggml_backend_tensor_set(x, d.data(), 0, ggml_nbytes(x));
    for (auto & [x, d] : in.i64) ggml_backend_tensor_set(x, d.data(), 0, ggml_nbytes(x));
    for (auto & [x, d] : in.f32) ggml_backend_tensor_set(x, d.data(), 0, ggml_nbytes(x));
    const ggml_status st = ggml_backend_graph_compute(t.m->backends->primary, gf);
    if (st != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "a training graph failed to run (status %d): %s", (int) st, log_last_error().c_str());
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

} // namespace

// ---------------------------------------------------------------------------------------------------------
// trainer

trainer::~trainer() {
    keep_free(*this);
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
        graph_ctx g(64);
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

    graph_ctx g(TRAIN_GRAPH_NODES);
    graph_inputs in;
    builder b{t, g.ctx, g.gf, in, batch.ns, batch.nt, use_lora};
    b.add_positions_and_mask();
    ggml_tensor * tokens = b.input_i32(T, batch.tokens);
    ggml_tensor * x = ggml_get_rows(g.ctx, t.m->tok_embd, tokens);
    for (int64_t il = 0; il < hp.n_layer; il++) {
        if (keep) ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, x, t.ckpt[il]));
        x = layer_forward(b, il, x, false).y;
    }
    if (keep) ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, x, t.ckpt[hp.n_layer]));
    std::vector<ggml_tensor *> lps;
    for (int64_t c0 = 0; c0 < T; c0 += t.lp_chunk) {
        head_chunk h = head_forward(b, x, batch, c0, std::min(t.lp_chunk, T - c0));
        ggml_set_output(h.lp);
        ggml_build_forward_expand(g.gf, h.lp);
        lps.push_back(h.lp);
    }
    run_graph(t, g.gf, in);

    std::vector<float> out(T);
    int64_t off = 0;
    for (ggml_tensor * lp : lps) {
        ggml_backend_tensor_get(lp, out.data() + off, 0, ggml_nbytes(lp));
        off += ggml_nelements(lp);
    }
    for (int64_t i = 0; i < T; i++) if (batch.targets[i] < 0) out[i] = NAN;
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
    const int64_t T = batch.ns * batch.nt, V = hp.n_vocab, E = hp.n_embd;
    if ((int64_t) dlogp_in.size() != T) fail("ERR_INVALID_ARG", "expected %lld gradients (one per position), got %zu", (long long) T, dlogp_in.size());
    std::vector<float> dlogp(dlogp_in);
    for (int64_t i = 0; i < T; i++) {
        if (batch.targets[i] < 0) dlogp[i] = 0.0f;
        else if (!std::isfinite(dlogp[i])) fail("ERR_INVALID_ARG", "the gradient at position %lld is not finite (%g)", (long long) i, dlogp[i]);
    }
    t.kept = false;  // consumed, whatever happens below

    // The head: d logp / d logits = (onehot(target) - p) / T per token, then back through the final norm.
    {
        graph_ctx g(TRAIN_GRAPH_NODES);
        graph_inputs in;
        builder b{t, g.ctx, g.gf, in, batch.ns, batch.nt, true};
        ggml_tensor * xL = t.ckpt[hp.n_layer];
        for (int64_t c0 = 0; c0 < T; c0 += t.lp_chunk) {
            const int64_t n = std::min(t.lp_chunk, T - c0);
            head_chunk h = head_forward(b, xL, batch, c0, n);
            ggml_tensor * gs = ggml_scale(g.ctx, b.input_f32_2d(1, n, std::vector<float>(dlogp.begin() + c0, dlogp.begin() + c0 + n)), batch.inv_temp);
            ggml_tensor * dl = ggml_mul(g.ctx, h.P, ggml_neg(g.ctx, gs));                       // -p * g   [V, n]
            ggml_tensor * at_target = ggml_mul(g.ctx, ggml_scale_bias(g.ctx, ggml_exp(g.ctx, h.lp), -1.0f, 1.0f), gs);  // (1 - p_t) g
            std::vector<int64_t> flat(h.flat.begin(), h.flat.end());
            dl = ggml_set_rows(g.ctx, ggml_reshape_2d(g.ctx, dl, 1, V * n), at_target, b.input_i64(n, std::move(flat)));
            ggml_tensor * dxn = ggml_mul_mat(g.ctx, t.head_wt, ggml_reshape_2d(g.ctx, dl, V, n));  // [E, n]
            ggml_tensor * dx = rms_norm_w_back(b, h.xc, t.m->output_norm, dxn);
            ggml_tensor * dst = ggml_view_2d(g.ctx, t.grad_a, E, n, t.grad_a->nb[1], t.grad_a->nb[1] * c0);
            ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, dx, dst));
        }
        run_graph(t, g.gf, in);
    }

    // The layers, last first: recompute from the saved input, then back. grad_a holds d loss / d output.
    ggml_tensor * dy = t.grad_a, * dx_buf = t.grad_b;
    for (int64_t il = hp.n_layer - 1; il >= 0; il--) {
        graph_ctx g(TRAIN_GRAPH_NODES);
        graph_inputs in;
        builder b{t, g.ctx, g.gf, in, batch.ns, batch.nt, true};
        b.add_positions_and_mask();
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
}

trainer_memory trainer_memory_use(const trainer & t) {
    trainer_memory m;
    if (t.buf_fixed) m.fixed = ggml_backend_buffer_get_size(t.buf_fixed);
    if (t.buf_keep) m.kept = ggml_backend_buffer_get_size(t.buf_keep);
    if (t.galloc) m.compute = ggml_gallocr_get_buffer_size(t.galloc, 0);
    return m;
}

void trainer_release(trainer & t) {
    keep_free(t);
    if (t.galloc) ggml_gallocr_free(t.galloc);
    t.galloc = nullptr;
}

} // namespace sqlr1
