// The trainer's internals, shared by its source files (never an API):
//   train_graph.cpp  the training graph's pieces: shape inputs, the LoRA linear layers, a layer's forward and
//                    its hand-written backward, the output head over the positions that have a target;
//   train_run.cpp    running one graph (support check, inputs, compute) synchronously, queued on CUDA streams
//                    with no host waits, or node by node for the profile;
//   train_fused.cpp  the layer-by-layer CUDA BF16 path around the project's kernels (native/cuda);
//   train.cpp        the trainer itself: its memory, the forward with kept activations, the backward.
#pragma once

#include "train.h"

#ifdef SQLR1_WITH_CUDA
#include "stream.h"
#include <optional>
#endif

#include <functional>
#include <utility>
#include <vector>

namespace sqlr1::train_impl {

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

// What one graph needs besides the weights: positions and the mask (made when first asked for, from the
// trainer's host copies), and a place for per-graph inputs.
struct graph_inputs {
    ggml_tensor * pos = nullptr;      // I32 [T]: 0..nt-1 per sequence
    ggml_tensor * mask = nullptr;     // F32 [nt, nt, 1, 1 or ns]: 0 where the query sees the key, -inf elsewhere
    ggml_tensor * mask_f16 = nullptr; // the same in F16 per sequence [nt, nt, 1, ns], for flash attention
    std::vector<std::pair<ggml_tensor *, const void *>> shared;  // data the trainer holds
    std::vector<std::pair<ggml_tensor *, std::vector<int32_t>>> i32;
    std::vector<std::pair<ggml_tensor *, std::vector<int64_t>>> i64;
    std::vector<std::pair<ggml_tensor *, std::vector<float>>> f32;
};

// train_graph.cpp: shape inputs
const trainer::shape_inputs & shape_prepare(trainer & t, const train_batch & b);  // at the start of every pass
const std::vector<float> & shape_mask(trainer & t);          // the prepared batch's F32 mask
const std::vector<ggml_fp16_t> & shape_mask16(trainer & t);  // and its F16 one, per sequence
void shape_device_free(trainer & t);
#ifdef SQLR1_WITH_CUDA
void shape_device_upload(trainer & t);  // trainer::shape_dev for the prepared batch
// The prepared batch's spans on the device (uploaded), or null for causal attention.
inline const int32_t * shape_span(const trainer & t) { return t.shape_dev.span ? (const int32_t *) t.shape_dev.span->data : nullptr; }
#endif
// The adapter's pair on a layer's target, or null where it has none.
const lora_pair * adapter_pair(const trainer & t, int64_t il, int target);

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

    // The shape inputs of the batch the pass prepared (shape_prepare), which has this builder's shape.
    const trainer::shape_inputs & shape() {
        if (t.shape_cache.version == 0 || t.shape_cache.ns != ns || t.shape_cache.nt != nt) fail("ERR_INTERNAL", "training graph built before its batch's shape inputs");
        return t.shape_cache;
    }
    bool shape_on_device() { return t.shape_dev.pos && t.shape_dev.version == shape().version; }
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
        if (!in.mask) {
            const int64_t rows = shape().mask_rows;
            in.mask = shared_input(GGML_TYPE_F32, nt, nt, shape_mask(t).data(), rows);
        }
        return in.mask;
    }
    ggml_tensor * mask_f16() {
        if (!in.mask_f16) {
            in.mask_f16 = shape_on_device() ? t.shape_dev.mask16 : shared_input(GGML_TYPE_F16, nt, nt, shape_mask16(t).data(), ns);
        }
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

// The output head runs only at the positions that have a target (the completions'; a prompt's logits are never
// needed): xs [E, n_sel] holds those rows, gathered from the final hidden state.
struct head_rows {
    std::vector<int32_t> pos;         // positions with a target, ascending
    std::vector<int32_t> target;      // their targets
};

// The head over selected rows [c0, c0 + n) of xs: probabilities softmax(W_out^T norm(x) / T) [V, n] and the
// log-prob of each row's target [1, n].
struct head_chunk {
    ggml_tensor * xc = nullptr, * P = nullptr, * lp = nullptr;
    std::vector<int32_t> flat;        // row * V + target
};

// train_graph.cpp: the pieces of a layer's forward and backward, and the head
linear_fwd linear(builder & b, int64_t il, int target, ggml_tensor * w, ggml_tensor * bias, ggml_tensor * x, bool for_backward);
ggml_tensor * linear_back(builder & b, const linear_fwd & f, ggml_tensor * dy, bool need_dx);
ggml_tensor * rms_norm_w(builder & b, ggml_tensor * x, ggml_tensor * w);
ggml_tensor * rms_norm_w_back(builder & b, ggml_tensor * x, ggml_tensor * w, ggml_tensor * dn);
ggml_tensor * rope(builder & b, ggml_tensor * x, bool back);
ggml_tensor * attention(builder & b, layer_fwd & f, bool for_backward);
layer_fwd layer_forward(builder & b, int64_t il, ggml_tensor * x, bool for_backward);
ggml_tensor * layer_backward(builder & b, const layer_fwd & f, ggml_tensor * dy, int64_t il, bool need_dx);
head_rows head_select(const train_batch & batch);
head_chunk head_forward(builder & b, ggml_tensor * xs, const head_rows & rows, float inv_temp, int64_t c0, int64_t n);

// train_run.cpp: running graphs
void run_graph(trainer & t, ggml_cgraph * gf, graph_inputs & in);
void print_node_profile(trainer & t, const char * what);

// Runs one graph built by `build` in the trainer's reusable metadata.
template <typename F>
void run_built(trainer & t, const train_batch & batch, bool use_lora, F build) {
    graph_ctx g(t, TRAIN_GRAPH_NODES);
    graph_inputs in;
    builder b{t, g.ctx, g.gf, in, batch.ns, batch.nt, use_lora};
    build(b);
    run_graph(t, g.gf, in);
}

#ifdef SQLR1_WITH_CUDA
// Runs `fn`, which launches project kernels. In a queued pass they wait for the work ggml has queued, and ggml's
// later work waits for them; no host waits. Returns fn's host time (launches only, in a queued pass).
double project_kernels(trainer & t, const std::function<void()> & fn);

// A layer-by-layer pass whose graphs and kernels queue without host waits (trainer::queued), then wait once in
// finish(). The options profile (per-graph timings) and sync run it with a wait after each graph and kernel, as
// do backends without events.
class queued_pass {
public:
    explicit queued_pass(trainer & t);
    // Waits for the pass; a kernel's error surfaces here (as ERR_INTERNAL).
    void finish();
    ~queued_pass();  // on an error inside the pass: nothing may still run on the trainer's memory after it
private:
    trainer & t;
    std::optional<queue_scope> scope;
};
#endif

// train_fused.cpp: the fused CUDA path's memory and layers
void scratch_free(trainer & t);
#ifdef SQLR1_WITH_CUDA
bool use_fused_kernels(const trainer & t);
void scratch_alloc(trainer & t, int64_t T);
// Places a graph node's result in a persistent tensor of the same size (see train_fused.cpp).
ggml_tensor * place(builder & b, ggml_tensor * node, ggml_tensor * at, size_t offset = 0);
void layer_forward_fused(trainer & t, const train_batch & batch, int64_t il);
void layer_backward_fused(trainer & t, const train_batch & batch, int64_t il, ggml_tensor * dy, ggml_tensor * dx_buf, double & kernel_ms);
#endif

} // namespace sqlr1::train_impl
