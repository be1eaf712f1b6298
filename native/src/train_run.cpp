// Running the training graphs (train_internal.h): each graph is checked against the backend, allocated in the
// trainer's reusable compute memory and given its inputs, then computed: at once and waited for, or, inside a
// queued CUDA pass, queued on ggml's stream with the project's kernels ordered around it by events (no host
// waits until the pass ends). The trainer's profile option times graphs, or runs them node by node.
#include "train_internal.h"

// ggml_graph_view, for the node-by-node profile (profile 2); the header's unused helpers are ggml's.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "ggml-impl.h"
#pragma GCC diagnostic pop

#ifdef SQLR1_WITH_CUDA
#include "ggml-backend-impl.h"  // ggml_backend_event::context, the CUDA event the project's stream waits on
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

namespace sqlr1::train_impl {

namespace {

void check_supported(trainer & t, ggml_cgraph * gf) {
    ggml_backend_t be = t.m->backends->primary;
    for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
        ggml_tensor * node = ggml_graph_node(gf, i);
        if (!ggml_backend_supports_op(be, node))
            fail("ERR_UNSUPPORTED_TYPE", "%s cannot run %s on %s for training (%s)", t.m->backends->device.c_str(), ggml_op_desc(node),
                 ggml_type_name(node->src[0] ? node->src[0]->type : node->type), ggml_get_name(node));
    }
}

} // namespace

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
    // profile 2: run node by node and print the ops that took most of the time (a diagnostic; slow).
    if (t.profile >= 2) {
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

// Prints the node-by-node profile gathered since the last print (profile 2), heaviest ops first.
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

#ifdef SQLR1_WITH_CUDA
double project_kernels(trainer & t, const std::function<void()> & fn) {
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

queued_pass::queued_pass(trainer & t) : t(t) {
    if (t.profile || t.sync) return;
    ggml_backend_dev_t dev = ggml_backend_get_device(t.m->backends->primary);
    if (!t.ev_ggml) t.ev_ggml = ggml_backend_event_new(dev);
    if (!t.ev_project) t.ev_project = ggml_backend_event_new(dev);
    if (!t.ev_ggml || !t.ev_project) return;
    scope.emplace();
    t.queued = true;
}

void queued_pass::finish() {
    if (!t.queued) return;
    t.queued = false;
    scope.reset();
    project_stream_sync(t.ckpt[0]->data);
    ggml_backend_synchronize(t.m->backends->primary);
}

queued_pass::~queued_pass() {
    if (!t.queued) return;
    try { finish(); } catch (...) {}
}
#endif

} // namespace sqlr1::train_impl
