// Training the LoRA adapter of a frozen base model: teacher-forced log-probs with the activations saved for a
// backward pass, and the backward pass itself, into the adapter's tensors only.
//
// The training graph is its own (the sampling graph's flash attention and KV cache have no backward):
//  - on CUDA with BF16, the kept forward and the backward run layer by layer, in graphs around the project's
//    kernels (native/cuda): Q4_0 dequantization (all of a layer's weights in one launch), attention forward and
//    backward, SwiGLU with the adapters' terms (forward, and backward with the gate/up/down adapter sums), and
//    the optimizer's passes. Targets that share an input (q/k/v, gate/up) run as one product with s A stacked
//    after the weights, and the input gradient W^T dy comes with dz = s B^T dy from one product over a stacked
//    transposed copy [W^T; s B^T]; see layer_forward_fused and layer_backward_fused in train_fused.cpp;
//  - elsewhere attention is written out (K^T Q, softmax with a causal mask, V P), so that its backward is plain
//    ops; forward-only passes use flash attention where the backend has it;
//  - frozen weights of any type enter matrix products converted to one compute type: dequantized (get_rows,
//    or the Q4_0 kernel) and, for the input gradient W^T dy, transposed into a scratch copy. BF16 runs on the
//    GPU's matrix units with F32 accumulation (ggml's cuBLAS path); F32 is exact, for the CPU and for checks;
//  - activation checkpointing: the forward keeps only each layer's input; the backward recomputes one layer
//    at a time from it, so activation memory is one layer's, whatever the depth;
//  - the output head runs in token chunks: no [tokens x vocab] buffer outlives its chunk.
// Gradients are written by hand per op (RMSNorm, RoPE, softmax, SwiGLU and LoRA), each checked against
// finite differences in test/train/model-grad.test.ts; they add into the adapter's param_store.
#pragma once

#include "adamw.h"
#include "graph.h"

#include <map>
#include <string>

namespace sqlr1 {

// The adapter's A and B tensors as the parameters of a store (one store per adapter, made on first use and
// shared while anything holds it): gradients, AdamW moments, clipping and the optimizer-state file come from it.
std::shared_ptr<param_store> lora_adapter_params(const std::shared_ptr<lora_adapter> & a);

struct train_batch {
    int64_t ns = 0, nt = 0;           // sequences, tokens per sequence (padded at the end)
    std::vector<int32_t> tokens;      // [ns * nt], sequence-major
    std::vector<int32_t> targets;     // [ns * nt]: the next token at each position, -1 for none
    float inv_temp = 1.0f;            // log-probs of softmax(logits / T)
    // Optional layout of each sequence (both empty: one causal sequence per row, positions 0..nt-1). With them a
    // row can hold a prompt once and several completions after it, each seeing the prompt and itself:
    //  - pos [ns * nt]: each token's position (RoPE);
    //  - span [3 * ns * nt]: {from, shared_end, own_from} per token, row-local: token j sees the keys in
    //    [from, shared_end) and [own_from, j] (causal is {0, 0, 0}).
    std::vector<int32_t> pos, span;
};

// How a trainer runs its passes (LoraTrainer.create's options; the CLI reads the SQLR1_TRAIN_* variables once).
struct trainer_options {
    ggml_type compute = GGML_TYPE_F32;  // F32 or BF16
    int64_t max_tokens = 16384;
    // Wait after each graph and kernel of a layer-by-layer CUDA pass instead of queuing them (for comparisons).
    bool sync = false;
    // 1: print where each backward's time goes (implies sync, so that each part is timed alone); 2: also run
    // every graph node by node and print the heaviest ops (a diagnostic; slow).
    int profile = 0;
    // On CUDA in BF16, run the kept forward and the backward around the project's kernels (false: the
    // written-out graphs, for comparisons).
    bool fused_kernels = true;
};

struct trainer {
    std::shared_ptr<model> m;
    std::shared_ptr<lora_adapter> lora;
    std::shared_ptr<param_store> params;
    ggml_type compute = GGML_TYPE_F32;  // F32 or BF16
    bool cuda = false;                  // the model runs on a CUDA device
    int64_t lp_chunk = 512;
    int64_t max_tokens = 16384;
    bool sync = false;                  // trainer_options
    int profile = 0;
    bool fused_kernels = true;

    // Persistent: an iota for dequantizing (0, 1, 2, ...) and the output weight in the compute type, both
    // directions (converted once; the base is frozen).
    ggml_context * ctx_fixed = nullptr;
    ggml_backend_buffer_t buf_fixed = nullptr;
    ggml_tensor * iota = nullptr;
    ggml_tensor * head_w = nullptr;   // [E, V]
    ggml_tensor * head_wt = nullptr;  // [V, E]

    // Saved by a forward with keep: each layer's input and the final hidden state, plus two gradient carriers.
    ggml_context * ctx_keep = nullptr;
    ggml_backend_buffer_t buf_keep = nullptr;
    std::vector<ggml_tensor *> ckpt;  // n_layer + 1, F32 [E, T]
    ggml_tensor * grad_a = nullptr, * grad_b = nullptr;
    int64_t keep_capacity = 0;        // tokens the saved tensors hold
    bool kept = false;
    train_batch kept_batch;

    // The backward's fused CUDA kernels (native/cuda/attention.h, swiglu.h): their inputs and outputs between the
    // graphs of one layer (the graphs' own memory is reused by the next graph). Some graph nodes are placed
    // here directly, so that no copy is needed.
    ggml_context * ctx_scratch = nullptr;
    ggml_backend_buffer_t buf_scratch = nullptr;
    ggml_tensor * aq = nullptr, * ak = nullptr, * av = nullptr, * ado = nullptr;     // attention: BF16, after RoPE
    ggml_tensor * ao = nullptr, * alse = nullptr, * adsum = nullptr, * adof = nullptr;  // F32; adof: dO
    ggml_tensor * adq = nullptr, * adk = nullptr, * adv = nullptr, * aph = nullptr;  // F32; aph per query head
    ggml_tensor * fdh = nullptr, * fdz = nullptr;                                    // SwiGLU: F32 W_down^T dy [F, T], s B^T dy [r, T]
    ggml_tensor * fx2 = nullptr, * fn2 = nullptr, * fn1 = nullptr;                   // F32 [E, T]: residual, the norms
    ggml_tensor * fdgb = nullptr, * fdub = nullptr;                                  // BF16 [F, T] copies of dg, du
    ggml_tensor * fpart = nullptr;   // the SwiGLU kernel's partial gradient sums (rank <= 16; swiglu_reduces)
    // Targets that share an input run as one product (group_forward): the dequantized weights with s A stacked
    // after them, BF16 [in, rows], and the product's output F32 [rows, T] where a later graph or kernel reads it.
    ggml_tensor * group_w[LORA_N_GROUPS] = {}, * group_y[LORA_N_GROUPS] = {};
    // Per target but down: the frozen weight transposed, with s B^T stacked under it, BF16 [out, in + r], made
    // in the graph that dequantizes the weight for W x and read by the backward's product (one for dx and dz).
    ggml_tensor * stacked[LORA_N_TARGETS] = {};
    int64_t scratch_capacity = 0;

    // Host copies of the inputs that depend only on the batch's shape and layout: positions, the mask (F32, F16).
    // Made for the batch a pass runs (shape_prepare); `version` changes whenever they do.
    struct shape_inputs {
        int64_t ns = 0, nt = 0;
        std::vector<int32_t> given_pos, span;  // the batch's layout (train_batch::pos, span)
        std::vector<int32_t> pos;
        std::vector<float> mask;           // [nt, nt, 1, mask_rows], made when first needed (shape_mask)
        std::vector<ggml_fp16_t> mask16;   // per sequence: [nt, nt, 1, ns], likewise (shape_mask16)
        int64_t mask_rows = 1;             // 1 (causal, shared by every sequence) or ns (spans)
        uint64_t version = 0;
    } shape_cache;
    // The positions, the F16 mask and the spans in device memory, for the layer-by-layer CUDA passes: their
    // graphs then have no host inputs and queue without waits.
    struct shape_device {
        uint64_t version = 0;
        ggml_context * ctx = nullptr;
        ggml_backend_buffer_t buf = nullptr;
        ggml_tensor * pos = nullptr, * mask16 = nullptr, * span = nullptr;  // span: null for causal
    } shape_dev;
    // While `queued` (a layer-by-layer CUDA pass), graphs and the project's kernels queue without host waits,
    // ordered by these events (ggml's stream -> the project's, and back).
    bool queued = false;
    ggml_backend_event_t ev_ggml = nullptr, ev_project = nullptr;

    ggml_gallocr_t galloc = nullptr;  // compute memory, reused by every graph
    std::vector<uint8_t> meta;        // graph metadata, reused by every graph
    double compute_ms = 0.0;          // time inside ggml's graph compute since the last backward began (profiling)
    int graphs_run = 0;
    std::map<std::string, std::pair<double, int>> node_profile;  // profile 2: op -> (us, count)
    ~trainer();
};

std::unique_ptr<trainer> trainer_init(std::shared_ptr<model> m, std::shared_ptr<lora_adapter> lora, const trainer_options & o);

void trainer_validate(const trainer & t, const train_batch & b);
// ERR_INVALID_ARG unless span (train_batch::span) holds a valid entry for each of ns x nt tokens.
void span_validate(const std::vector<int32_t> & span, int64_t ns, int64_t nt);

// Per-position log-probs of the targets (NaN where the target is -1). `use_lora` false runs the frozen base
// (the reference policy). `keep` saves the activations for trainer_backward (needs use_lora).
std::vector<float> trainer_forward(trainer & t, const train_batch & b, bool use_lora, bool keep);

// d loss / d logp per position ([ns * nt], the kept batch's layout; ignored where the target is -1) -> the
// gradients of every adapter tensor, added to the store's accumulators. Consumes the kept activations.
void trainer_backward(trainer & t, const std::vector<float> & dlogp);

struct trainer_memory {
    size_t fixed = 0, kept = 0, compute = 0;
};
trainer_memory trainer_memory_use(const trainer & t);

// Frees the kept activations and the compute memory (they are made again on the next call).
void trainer_release(trainer & t);

} // namespace sqlr1
