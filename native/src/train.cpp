// The trainer (train.h): its fixed memory (the output weight in the compute type), the saved activations, and
// the forward and backward passes built from train_graph.cpp's pieces (or train_fused.cpp's CUDA path).
#include "train_internal.h"

#ifdef SQLR1_WITH_CUDA
#include "ggml-cuda.h"
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>

namespace sqlr1 {

using namespace train_impl;

// ---------------------------------------------------------------------------------------------------------
// The adapter's parameter store

std::shared_ptr<param_store> lora_adapter_params(const std::shared_ptr<lora_adapter> & a) {
    static std::mutex mutex;  // made once, by whichever asks first (params() or a trainer being made)
    std::lock_guard<std::mutex> lock(mutex);
    if (auto s = a->params.lock()) return s;
    auto s = param_store_init(a->m->backends);
    s->owner = a;
    s->on_values_written = [adapter = a.get()]() { adapter->version++; };  // the store's owner keeps it alive
    for (ggml_tensor * t : a->tensors()) param_store_adopt(*s, ggml_get_name(t), t);
    a->params = s;
    return s;
}

namespace {

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
    scratch_free(*this);
    shape_device_free(*this);
    if (ev_ggml) ggml_backend_event_free(ev_ggml);
    if (ev_project) ggml_backend_event_free(ev_project);
    if (galloc) ggml_gallocr_free(galloc);
    if (buf_fixed) ggml_backend_buffer_free(buf_fixed);
    if (ctx_fixed) ggml_free(ctx_fixed);
}

std::unique_ptr<trainer> trainer_init(std::shared_ptr<model> m, std::shared_ptr<lora_adapter> lora, const trainer_options & o) {
    const ggml_type compute = o.compute;
    const int64_t max_tokens = o.max_tokens;
    if (!lora) fail("ERR_INVALID_ARG", "training needs a LoRA adapter");
    if (lora->m != m) fail("ERR_INVALID_ARG", "the adapter belongs to another model");
    if (compute != GGML_TYPE_F32 && compute != GGML_TYPE_BF16) fail("ERR_INVALID_ARG", "the compute type must be f32 or bf16");
    if (max_tokens < 1 || max_tokens > (1 << 20)) fail("ERR_INVALID_ARG", "maxTokens must be in [1, 1048576], got %lld", (long long) max_tokens);
    if (o.profile < 0 || o.profile > 2) fail("ERR_INVALID_ARG", "profile must be 0, 1 or 2, got %d", o.profile);
    auto t = std::make_unique<trainer>();
    t->m = m;
    t->lora = lora;
    t->params = lora_adapter_params(lora);
    t->compute = compute;
    t->max_tokens = max_tokens;
    t->sync = o.sync;
    t->profile = o.profile;
    t->fused_kernels = o.fused_kernels;
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

void span_validate(const std::vector<int32_t> & span, int64_t ns, int64_t nt) {
    const int64_t T = ns * nt;
    if ((int64_t) span.size() != 3 * T) fail("ERR_INVALID_ARG", "expected %lld span entries (three per token), got %zu", (long long) (3 * T), span.size());
    for (int64_t i = 0; i < T; i++) {
        const int64_t j = i % nt;
        const int32_t * sp = &span[3 * i];
        // Every token sees itself (own_from <= j): no softmax row is empty.
        if (!(sp[0] >= 0 && sp[0] <= sp[1] && sp[1] <= nt && sp[2] >= 0 && sp[2] <= j))
            fail("ERR_INVALID_ARG", "span of token %lld (position %lld of its sequence) must satisfy 0 <= from <= shared_end <= %lld and 0 <= own_from <= %lld, got {%d, %d, %d}",
                 (long long) i, (long long) j, (long long) nt, (long long) j, sp[0], sp[1], sp[2]);
    }
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
    const int64_t T = b.ns * b.nt;
    if (!b.pos.empty()) {
        if ((int64_t) b.pos.size() != T) fail("ERR_INVALID_ARG", "expected %lld positions (one per token), got %zu", (long long) T, b.pos.size());
        for (int32_t p : b.pos) if (p < 0) fail("ERR_INVALID_ARG", "positions must be >= 0, got %d", p);
    }
    if (!b.span.empty()) span_validate(b.span, b.ns, b.nt);
}

std::vector<float> trainer_forward(trainer & t, const train_batch & batch, bool use_lora, bool keep) {
    trainer_validate(t, batch);
    if (keep && !use_lora) fail("ERR_INVALID_ARG", "keeping activations for a backward pass needs the adapter on");
    shape_prepare(t, batch);
    const hparams & hp = t.m->hp;
    const int64_t T = batch.ns * batch.nt;
    if (keep) keep_alloc(t, T);
    t.kept = false;

    // On CUDA in BF16 a kept forward runs layer by layer around the SwiGLU kernel (layer_forward_fused), each
    // layer's input going straight into its checkpoint; elsewhere the whole forward is one graph.
    bool fused = false;
#ifdef SQLR1_WITH_CUDA
    // Reduced-precision forwards on CUDA read the shape inputs (positions, spans, flash attention's mask) from
    // the device copy, written once per layout (the fused kernels need only BF16, so they are covered).
    if (t.cuda && t.compute != GGML_TYPE_F32) shape_device_upload(t);
    fused = keep && use_fused_kernels(t);
    if (fused) {
        scratch_alloc(t, T);
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
    shape_prepare(t, batch);
    // profile >= 1 prints where the backward's time goes (each graph runs synchronously).
    const bool profile = t.profile > 0;
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
        shape_device_upload(t);
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
