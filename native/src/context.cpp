#include "context.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace sqlr1 {

size_t graph_max_nodes(const model & m) { return std::max<size_t>(8192, (size_t) m.hp.n_layer * 64 + 1024); }

context::~context() {
    graph_drop();
    if (sched) ggml_backend_sched_free(sched);
}

void context::graph_drop() {
    if (gctx) ggml_free(gctx);
    gctx = nullptr;
    gf = nullptr;
}

void context::graph_prepare(const forward_params & p) {
    if (gctx && gp == p) return;
    graph_drop();
    ggml_init_params ip = { meta.size(), meta.data(), true };
    gctx = ggml_init(ip);
    gf = ggml_new_graph_custom(gctx, graph_max_nodes(*m), false);
    fr = qwen2_build_forward(gctx, gf, *m, kv, p);
    gp = p;
    ggml_backend_sched_reset(sched);
    if (!ggml_backend_sched_alloc_graph(sched, gf)) {
        graph_drop();
        fail("ERR_OUT_OF_MEMORY", "could not allocate compute memory for %lld tokens: %s", (long long) (p.ns * p.nt), log_last_error().c_str());
    }
}

std::unique_ptr<context> context_init(std::shared_ptr<model> m, int64_t n_seq, int64_t n_ctx, int64_t n_batch, bool pack_adapter) {
    if (n_seq < 1 || n_seq > 4096) fail("ERR_INVALID_ARG", "nSeq must be in [1, 4096], got %lld", (long long) n_seq);
    if (n_ctx < 1 || n_ctx > (1 << 20)) fail("ERR_INVALID_ARG", "nCtx must be in [1, 1048576], got %lld", (long long) n_ctx);
    if (n_batch < 1 || n_batch > 65536) fail("ERR_INVALID_ARG", "nBatch must be in [1, 65536], got %lld", (long long) n_batch);
    auto c = std::make_unique<context>();
    c->m = m;
    c->n_batch = n_batch;
    c->pack_adapter = pack_adapter;
    kv_cache_init(c->kv, *m, n_seq, n_ctx);
    std::vector<ggml_backend_t> backends = { m->backends->primary };
    if (m->backends->primary != m->backends->cpu) backends.push_back(m->backends->cpu);
    c->sched = ggml_backend_sched_new(backends.data(), nullptr, (int) backends.size(), graph_max_nodes(*m), false, true);
    if (!c->sched) fail("ERR_INTERNAL", "could not create the graph scheduler");
    c->meta.resize(ggml_tensor_overhead() * graph_max_nodes(*m) + ggml_graph_overhead_custom(graph_max_nodes(*m), false));
    return c;
}

void context::validate(const eval_request & req) const {
    const int64_t ns = (int64_t) req.streams.size();
    if (ns < 1) fail("ERR_INVALID_ARG", "a batch needs at least one sequence");
    if (req.nt < 1) fail("ERR_INVALID_ARG", "tokens per sequence must be >= 1, got %lld", (long long) req.nt);
    if ((int64_t) req.tokens.size() != ns * req.nt)
        fail("ERR_INVALID_ARG", "expected %lld tokens (%lld sequences x %lld), got %zu", (long long) (ns * req.nt), (long long) ns, (long long) req.nt, req.tokens.size());
    std::vector<bool> seen(kv.n_seq, false);
    for (int32_t s : req.streams) {
        if (s < 0 || s >= kv.n_seq) fail("ERR_INVALID_ARG", "sequence id %d out of range [0, %lld)", s, (long long) kv.n_seq);
        if (seen[s]) fail("ERR_INVALID_ARG", "sequence id %d listed twice in one batch", s);
        seen[s] = true;
        if (kv.len[s] + req.nt > kv.capacity())
            fail("ERR_CONTEXT_OVERFLOW", "sequence %d would hold %lld tokens but the context holds at most %lld",
                 s, (long long) (kv.len[s] + req.nt), (long long) kv.capacity());
    }
    for (int32_t t : req.tokens) {
        if (t < 0 || t >= m->hp.n_vocab) fail("ERR_TOKEN_RANGE", "token id %d out of range [0, %lld)", t, (long long) m->hp.n_vocab);
    }
    if (!req.targets.empty()) {
        if (req.targets.size() != req.tokens.size()) fail("ERR_INVALID_ARG", "expected %zu targets (one per token), got %zu", req.tokens.size(), req.targets.size());
        for (int32_t t : req.targets) {
            if (t < -1 || t >= m->hp.n_vocab) fail("ERR_TOKEN_RANGE", "target id %d out of range [0, %lld) (or -1 for none)", t, (long long) m->hp.n_vocab);
        }
        if (!(req.lp_temperature > 0.0f) || !std::isfinite(req.lp_temperature)) fail("ERR_INVALID_ARG", "temperature for log-probs must be > 0");
        if (req.sample || req.want_logits || req.all_logits) fail("ERR_INVALID_ARG", "teacher-forced log-probs cannot be combined with logits or sampling");
    }
    if (req.sample) {
        if ((int64_t) req.seeds.size() != ns) fail("ERR_INVALID_ARG", "expected %lld seeds, got %zu", (long long) ns, req.seeds.size());
        if (!(req.sp.temperature >= 0.0f) || !std::isfinite(req.sp.temperature)) fail("ERR_INVALID_ARG", "temperature must be a finite number >= 0");
        if (!(req.sp.top_p > 0.0f && req.sp.top_p <= 1.0f)) fail("ERR_INVALID_ARG", "topP must be in (0, 1], got %g", req.sp.top_p);
        if (req.sp.top_k < 0) fail("ERR_INVALID_ARG", "topK must be >= 0, got %d", req.sp.top_k);
    }
}

void context::set_lora(std::shared_ptr<lora_adapter> a) {
    lora = std::move(a);
    if (pack && pack->lora != lora) {
        graph_drop();
        pack.reset();
    }
}

void context::adapter_prepare() {
    if (!pack_adapter || !lora || !lora->enabled) return;
    if (!pack || pack->lora != lora) {
        graph_drop();  // a graph built on the old pack must not be reused (a new pack may get its address)
        pack.reset();
        pack = lora_pack_init(lora);
    }
    const uint64_t v = lora->version.load();
    if (pack->version != v) {
        lora_pack_refresh(*pack);
        pack->version = v;
    }
}

eval_result context::eval(const eval_request & req) {
    validate(req);
    adapter_prepare();
    eval_result res;
    eval_chunks(req, res);
    return res;
}

void context::eval_chunks(const eval_request & req, eval_result & res) {
    if (!req.targets.empty()) res.target_logprobs.assign(req.targets.size(), NAN);
    // Long prompts run in chunks of at most n_batch tokens; only the last chunk makes outputs unless all are wanted.
    const int64_t ns = (int64_t) req.streams.size();
    const int64_t chunk = std::max<int64_t>(1, n_batch / ns);
    for (int64_t t0 = 0; t0 < req.nt; t0 += chunk) {
        const int64_t nt = std::min(chunk, req.nt - t0);
        run_chunk(req, t0, nt, t0 + nt == req.nt, res);
    }
}

void context::run_chunk(const eval_request & req, int64_t t0, int64_t nt, bool last, eval_result & res) {
    const hparams & hp = m->hp;
    const int32_t s_min = *std::min_element(req.streams.begin(), req.streams.end());
    const int32_t s_max = *std::max_element(req.streams.begin(), req.streams.end());
    const int64_t ns = s_max - s_min + 1;            // the batch covers a contiguous range of streams
    std::vector<int32_t> slot_of(ns, -1);            // range slot -> index into req.streams (-1: idle slot)
    for (size_t i = 0; i < req.streams.size(); i++) slot_of[req.streams[i] - s_min] = (int32_t) i;

    int64_t max_len = 1;
    for (int32_t s : req.streams) max_len = std::max(max_len, kv.len[s] + nt);
    const int64_t n_kv = std::min(kv.n_cells, ((max_len + 1 + 255) / 256) * 256);

    const bool outputs = last && (req.all_logits || req.want_logits || req.sample);
    forward_params p;
    p.s0 = s_min; p.ns = ns; p.nt = nt; p.n_kv = n_kv;
    p.lora = lora && lora->enabled ? lora.get() : nullptr;
    p.pack = p.lora && pack && pack->lora.get() == p.lora ? pack.get() : nullptr;
    const bool teacher = !req.targets.empty();
    if (teacher) {
        p.logprobs = true;
        p.inv_temp = 1.0f / req.lp_temperature;
    }
    // Every row is an output (no get_rows of output rows) when no slot is idle and all tokens or the only one count.
    p.all_outputs = ns == (int64_t) req.streams.size() && (req.all_logits || nt == 1);
    std::vector<int32_t> out_rows;                   // token rows (range-major) that produce logits
    if (outputs) {
        for (int64_t j = 0; j < ns; j++) {
            if (slot_of[j] < 0) continue;
            if (req.all_logits) for (int64_t t = 0; t < nt; t++) out_rows.push_back((int32_t) (j * nt + t));
            else out_rows.push_back((int32_t) (j * nt + nt - 1));
        }
    }
    p.n_out = (int64_t) out_rows.size();

    graph_prepare(p);

    // Inputs: tokens, positions, the cell each token's K/V goes to, and the causal mask within each stream.
    const int64_t T = ns * nt;
    std::vector<int32_t> tok(T, 0), pos(T, 0);
    std::vector<int64_t> idx(T);
    std::vector<ggml_fp16_t> mask((size_t) n_kv * T);
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), ninf = ggml_fp32_to_fp16(-INFINITY);
    for (int64_t j = 0; j < ns; j++) {
        const int64_t s = s_min + j;
        const int32_t i = slot_of[j];
        for (int64_t t = 0; t < nt; t++) {
            const int64_t r = j * nt + t;
            ggml_fp16_t * mrow = mask.data() + r * n_kv;
            std::fill(mrow, mrow + n_kv, ninf);
            if (i >= 0) {
                const int64_t ps = kv.len[s] + t;
                tok[r] = req.tokens[(size_t) i * req.nt + t0 + t];
                pos[r] = (int32_t) ps;
                idx[r] = s * kv.n_cells + ps;
                std::fill(mrow, mrow + ps + 1, zero);
            } else {
                // Never touch the stream's real cells: write to its scratch cell; attend to cell 0 so the row stays finite.
                idx[r] = s * kv.n_cells + kv.capacity();
                mrow[0] = zero;
            }
        }
    }
    ggml_backend_tensor_set(fr.in.tokens, tok.data(), 0, tok.size() * sizeof(int32_t));
    ggml_backend_tensor_set(fr.in.pos, pos.data(), 0, pos.size() * sizeof(int32_t));
    ggml_backend_tensor_set(fr.in.kv_idx, idx.data(), 0, idx.size() * sizeof(int64_t));
    ggml_backend_tensor_set(fr.in.mask, mask.data(), 0, mask.size() * sizeof(ggml_fp16_t));
    if (fr.in.out_ids) ggml_backend_tensor_set(fr.in.out_ids, out_rows.data(), 0, out_rows.size() * sizeof(int32_t));
    std::vector<int32_t> tgt(T, -1);  // range-major target of each token row
    if (teacher) {
        for (int64_t j = 0; j < ns; j++) {
            if (slot_of[j] < 0) continue;
            for (int64_t t = 0; t < nt; t++) tgt[j * nt + t] = req.targets[(size_t) slot_of[j] * req.nt + t0 + t];
        }
        const int64_t V = hp.n_vocab;
        for (size_t c = 0; c < fr.lp_idx.size(); c++) {
            const int64_t c0 = (int64_t) c * p.lp_chunk, n = fr.lp_idx[c]->ne[0];
            std::vector<int32_t> flat(n);
            for (int64_t i = 0; i < n; i++) flat[i] = (int32_t) (i * V + std::max(0, tgt[c0 + i]));
            ggml_backend_tensor_set(fr.lp_idx[c], flat.data(), 0, n * sizeof(int32_t));
        }
    }

    const ggml_status st = ggml_backend_sched_graph_compute(sched, gf);
    if (st != GGML_STATUS_SUCCESS) {
        graph_drop();
        fail("ERR_INTERNAL", "graph compute failed (status %d): %s", (int) st, log_last_error().c_str());
    }
    for (int32_t s : req.streams) kv.len[s] += nt;
    if (teacher) {
        std::vector<float> lp(T);
        for (size_t c = 0; c < fr.lp.size(); c++) {
            ggml_backend_tensor_get(fr.lp[c], lp.data() + (int64_t) c * p.lp_chunk, 0, ggml_nbytes(fr.lp[c]));
        }
        for (int64_t j = 0; j < ns; j++) {
            if (slot_of[j] < 0) continue;
            for (int64_t t = 0; t < nt; t++) {
                if (tgt[j * nt + t] >= 0) res.target_logprobs[(size_t) slot_of[j] * req.nt + t0 + t] = lp[j * nt + t];
            }
        }
    }

    if (outputs) {
        const int64_t V = hp.n_vocab, n_out = p.n_out;
        ggml_tensor * lg = fr.logits;
        if (req.want_logits || req.all_logits) {
            res.logits.resize((size_t) n_out * V);
            ggml_backend_tensor_get(lg, res.logits.data(), 0, res.logits.size() * sizeof(float));
        }
        if (req.sample) {
            // Outputs are in range order; map them back to the caller's stream order.
            std::vector<sample_row_params> rows(n_out);
            std::vector<int32_t> order;
            for (int64_t j = 0; j < ns; j++) if (slot_of[j] >= 0) order.push_back(slot_of[j]);
            for (int64_t o = 0; o < n_out; o++) {
                const int32_t i = order[req.all_logits ? o / nt : o];
                rows[o] = { req.seeds[i], (uint64_t) kv.len[req.streams[i]] };
            }
            std::vector<int32_t> tk(n_out);
            std::vector<float> lp(n_out);
            const bool simple = req.sp.top_k <= 0 && !(req.sp.top_p < 1.0f);
            ggml_backend_sched_synchronize(sched);
#ifdef SQLR1_WITH_CUDA
            if (simple && !ggml_backend_buffer_is_host(lg->buffer)) {
                sample_rows_cuda((const float *) lg->data, V, V, n_out, rows.data(), req.sp.temperature, tk.data(), lp.data());
            } else
#endif
            {
                const float * host = nullptr;
                std::vector<float> tmp;
                if (ggml_backend_buffer_is_host(lg->buffer)) host = (const float *) lg->data;
                else if (!res.logits.empty()) host = res.logits.data();
                else {
                    tmp.resize((size_t) n_out * V);
                    ggml_backend_tensor_get(lg, tmp.data(), 0, tmp.size() * sizeof(float));
                    host = tmp.data();
                }
                (void) simple;
                sample_rows_cpu(host, V, V, n_out, rows.data(), req.sp, tk.data(), lp.data());
            }
            res.tokens.assign(req.streams.size(), 0);
            res.logprobs.assign(req.streams.size(), 0.0f);
            for (int64_t o = 0; o < n_out; o++) {
                const int32_t i = order[req.all_logits ? o / nt : o];
                res.tokens[i] = tk[o];
                res.logprobs[i] = lp[o];
            }
        }
    }
}

decode_result context::decode(const decode_request & req) {
    const size_t n = req.streams.size();
    if (req.tokens.size() != n || req.seeds.size() != n || req.budget.size() != n)
        fail("ERR_INVALID_ARG", "decode: streams, tokens, seeds and budget must have one entry per sequence");
    if (req.n_steps < 1) fail("ERR_INVALID_ARG", "decode: steps must be >= 1, got %d", req.n_steps);
    adapter_prepare();  // once: the adapter cannot change within the call
    decode_result res;
    std::vector<int32_t> next = req.tokens, budget = req.budget;
    eval_request er;
    er.nt = 1;
    er.sample = true;
    er.sp = req.sp;
    for (int32_t step = 0; step < req.n_steps; step++) {
        er.streams.clear(); er.tokens.clear(); er.seeds.clear();
        std::vector<size_t> live;
        for (size_t i = 0; i < n; i++) {
            if (budget[i] <= 0) continue;
            live.push_back(i);
            er.streams.push_back(req.streams[i]);
            er.tokens.push_back(next[i]);
            er.seeds.push_back(req.seeds[i]);
        }
        if (live.empty()) break;
        validate(er);
        eval_result r;
        eval_chunks(er, r);
        res.tokens.resize(res.tokens.size() + n, -1);
        res.logprobs.resize(res.logprobs.size() + n, 0.0f);
        for (size_t j = 0; j < live.size(); j++) {
            const size_t i = live[j];
            const int32_t tok = r.tokens[j];
            res.tokens[step * n + i] = tok;
            res.logprobs[step * n + i] = r.logprobs[j];
            next[i] = tok;
            budget[i]--;
            for (int32_t e : req.eog) if (tok == e) budget[i] = 0;
        }
        res.steps = step + 1;
    }
    return res;
}

void context::seq_copy(int32_t src, const std::vector<int32_t> & dsts) {
    if (src < 0 || src >= kv.n_seq) fail("ERR_INVALID_ARG", "sequence id %d out of range [0, %lld)", src, (long long) kv.n_seq);
    for (int32_t d : dsts) {
        if (d < 0 || d >= kv.n_seq) fail("ERR_INVALID_ARG", "sequence id %d out of range [0, %lld)", d, (long long) kv.n_seq);
    }
    const int64_t n = kv.len[src];
    if (n == 0 || dsts.empty()) {
        for (int32_t d : dsts) kv.len[d] = n;
        return;
    }
    // One graph: per layer and K/V, one repeat of the source cells into each run of consecutive destination
    // streams, then one strided copy into the cache (not a copy per destination: launch costs add up at B=32).
    std::vector<std::pair<int32_t, int32_t>> runs;  // [first, count)
    std::vector<int32_t> sorted;
    for (int32_t d : dsts) if (d != src) sorted.push_back(d);
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    for (int32_t d : sorted) {
        if (!runs.empty() && runs.back().first + runs.back().second == d) runs.back().second++;
        else runs.push_back({d, 1});
    }
    const size_t n_nodes = kv.k.size() * 2 * runs.size() * 6 + 16;
    ggml_init_params ip = { ggml_tensor_overhead() * n_nodes * 2 + ggml_graph_overhead_custom(n_nodes, false), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, n_nodes, false);
    const int64_t E = m->hp.n_embd_kv();
    const size_t row = ggml_row_size(GGML_TYPE_F16, E), stream = row * kv.n_cells;
    for (const auto & r : runs) {
        for (size_t il = 0; il < kv.k.size(); il++) {
            for (ggml_tensor * t : {kv.k[il], kv.v[il]}) {
                ggml_tensor * a = ggml_view_3d(ctx, t, E, n, 1, row, stream, stream * src);
                ggml_tensor * b = ggml_view_3d(ctx, t, E, n, r.second, row, stream, stream * r.first);
                ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_repeat(ctx, a, b), b));
            }
        }
    }
    ggml_gallocr_t galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(m->backends->primary));
    const bool ok = galloc && ggml_gallocr_alloc_graph(galloc, gf);
    const ggml_status st = ok ? ggml_backend_graph_compute(m->backends->primary, gf) : GGML_STATUS_ALLOC_FAILED;
    if (galloc) ggml_gallocr_free(galloc);
    ggml_free(ctx);
    if (st != GGML_STATUS_SUCCESS) fail(st == GGML_STATUS_ALLOC_FAILED ? "ERR_OUT_OF_MEMORY" : "ERR_INTERNAL", "KV copy failed (status %d)", (int) st);
    for (int32_t d : dsts) kv.len[d] = n;
}

} // namespace sqlr1
