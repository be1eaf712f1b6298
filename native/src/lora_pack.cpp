#include "lora_pack.h"

namespace sqlr1 {

lora_pack::~lora_pack() {
    if (galloc) ggml_gallocr_free(galloc);
    if (gctx) ggml_free(gctx);
    if (buf) ggml_backend_buffer_free(buf);
    if (ctx) ggml_free(ctx);
}

std::unique_ptr<lora_pack> lora_pack_init(const std::shared_ptr<lora_adapter> & adapter) {
    const lora_adapter & a = *adapter;
    const model & m = *a.m;
    const int64_t n_layer = m.hp.n_layer, r = a.rank;
    auto p = std::make_unique<lora_pack>();
    p->lora = adapter;
    p->layers.resize(n_layer);
    ggml_init_params ip = { ggml_tensor_overhead() * (size_t) (3 * LORA_N_GROUPS * n_layer + 8), nullptr, true };
    p->ctx = ggml_init(ip);
    if (!p->ctx) fail("ERR_OUT_OF_MEMORY", "could not create the packed adapter's context");
    for (int64_t il = 0; il < n_layer; il++) {
        for (int gi = 0; gi < LORA_N_GROUPS; gi++) {
            lora_group & g = p->layers[il][gi];
            int64_t in = 0, rows = 0;
            bool any_bias = false;
            for (int t : LORA_GROUP_TARGETS[gi]) {
                if (t < 0 || !a.layers[il][t].a) continue;
                const ggml_tensor * w = lora_target_weight(m, il, t);
                in = w->ne[0];
                g.target[g.n] = t;
                g.row0[g.n] = rows;
                g.rows[g.n] = w->ne[1];
                rows += g.rows[g.n];
                any_bias = any_bias || lora_target_bias(m, il, t);
                g.n++;
            }
            if (g.n == 0) continue;
            g.a = ggml_new_tensor_2d(p->ctx, GGML_TYPE_F32, in, g.n * r);
            g.b = ggml_new_tensor_2d(p->ctx, GGML_TYPE_F32, g.n * r, rows);
            if (any_bias) g.bias = ggml_new_tensor_1d(p->ctx, GGML_TYPE_F32, rows);
        }
    }
    p->buf = ggml_backend_alloc_ctx_tensors(p->ctx, m.backends->primary);
    if (!p->buf) fail("ERR_OUT_OF_MEMORY", "could not allocate the packed adapter on %s", m.backends->device.c_str());
    ggml_backend_buffer_clear(p->buf, 0);  // off-diagonal blocks and missing biases stay zero

    // The refresh graph: per target, A into its columns of A_cat, s B into its diagonal block, the bias into its rows.
    const size_t n_nodes = (size_t) n_layer * LORA_N_TARGETS * 8 + 16;
    ggml_init_params gp = { ggml_tensor_overhead() * n_nodes + ggml_graph_overhead_custom(n_nodes, false), nullptr, true };
    p->gctx = ggml_init(gp);
    if (!p->gctx) fail("ERR_OUT_OF_MEMORY", "could not create the packed adapter's refresh graph");
    p->gf = ggml_new_graph_custom(p->gctx, n_nodes, false);
    ggml_context * c = p->gctx;
    for (int64_t il = 0; il < n_layer; il++) {
        for (const lora_group & g : p->layers[il]) {
            for (int i = 0; i < g.n; i++) {
                const lora_pair & lp = a.layers[il][g.target[i]];
                ggml_tensor * ai = ggml_view_2d(c, g.a, g.a->ne[0], r, g.a->nb[1], g.a->nb[1] * r * i);
                ggml_build_forward_expand(p->gf, ggml_cpy(c, lp.a, ai));
                ggml_tensor * bi = ggml_view_2d(c, g.b, r, g.rows[i], g.b->nb[1], g.b->nb[1] * g.row0[i] + g.b->nb[0] * r * i);
                ggml_build_forward_expand(p->gf, ggml_cpy(c, ggml_scale(c, lp.b, a.scale()), bi));
                if (ggml_tensor * bias = lora_target_bias(m, il, g.target[i])) {
                    ggml_tensor * di = ggml_view_1d(c, g.bias, g.rows[i], g.bias->nb[0] * g.row0[i]);
                    ggml_build_forward_expand(p->gf, ggml_cpy(c, bias, di));
                }
            }
        }
    }
    p->galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(m.backends->primary));
    if (!p->galloc || !ggml_gallocr_alloc_graph(p->galloc, p->gf))
        fail("ERR_OUT_OF_MEMORY", "could not allocate the packed adapter's refresh memory: %s", log_last_error().c_str());
    return p;
}

void lora_pack_refresh(lora_pack & p) {
    const ggml_status st = ggml_backend_graph_compute(p.lora->m->backends->primary, p.gf);
    if (st != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "refreshing the packed adapter failed (status %d)", (int) st);
}

} // namespace sqlr1
