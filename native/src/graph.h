// The Qwen2-family forward graph (qwen2_build_forward): RMSNorm, RoPE, grouped-query attention over a
// per-sequence KV cache, SwiGLU, QKV bias, tied or separate output.
#pragma once

#include "lora_pack.h"

namespace sqlr1 {

// The KV cache: one stream per sequence (like llama.cpp's non-unified cache), so a decode step attends only to
// its own sequence's cells. Cell c of stream s holds position c. The last cell of each stream is scratch for
// batch slots that carry no real token.
struct kv_cache {
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    std::vector<ggml_tensor *> k, v;   // per layer: [n_embd_kv, n_cells, n_seq], F16
    int64_t n_cells = 0;               // cells per stream (a multiple of 256)
    int64_t n_seq = 0;
    std::vector<int64_t> len;          // tokens stored per stream
    int64_t capacity() const { return n_cells - 1; }
    ~kv_cache();
};

void kv_cache_init(kv_cache & kv, const model & m, int64_t n_seq, int64_t n_ctx);

// The inputs of one forward pass. Streams [s0, s0 + ns) each take nt tokens.
struct batch_inputs {
    ggml_tensor * tokens = nullptr;    // I32 [nt * ns]
    ggml_tensor * pos = nullptr;       // I32 [nt * ns]
    ggml_tensor * kv_idx = nullptr;    // I64 [nt * ns]: global cell index each token's K/V is written to
    ggml_tensor * mask = nullptr;      // F16 [n_kv, nt, 1, ns]
    ggml_tensor * out_ids = nullptr;   // I32 [n_out] (null when every token is an output)
};

struct forward_params {
    int64_t s0 = 0, ns = 1, nt = 1;
    int64_t n_kv = 256;
    int64_t n_out = 1;                 // rows of logits; 0 = no output projection
    bool all_outputs = false;
    const lora_adapter * lora = nullptr;  // applied when set (null: the base model, e.g. the reference policy)
    const lora_pack * pack = nullptr;     // the adapter packed per group (lora_pack.h), when the caller has one
    // Teacher-forced log-probs: for every token, log softmax(logits / T)[target], computed on the device in
    // chunks of lp_chunk tokens so that no [tokens x vocab] buffer outlives its chunk.
    bool logprobs = false;
    float inv_temp = 1.0f;
    int64_t lp_chunk = 512;
    bool operator==(const forward_params & o) const {
        return s0 == o.s0 && ns == o.ns && nt == o.nt && n_kv == o.n_kv && n_out == o.n_out && all_outputs == o.all_outputs &&
               lora == o.lora && pack == o.pack && logprobs == o.logprobs && inv_temp == o.inv_temp && lp_chunk == o.lp_chunk;
    }
};

struct forward_result {
    batch_inputs in;
    ggml_tensor * logits = nullptr;    // F32 [n_vocab, n_out]
    std::vector<ggml_tensor *> lp_idx; // I32 [chunk]: flat index token * n_vocab + target, per chunk (inputs)
    std::vector<ggml_tensor *> lp;     // F32 [chunk]: the log-probs, per chunk (outputs)
};

// y = W x (+ b) (+ scale * B (A x) when `p` has tensors): every linear layer of the graph.
ggml_tensor * qwen2_linear(ggml_context * ctx, ggml_tensor * w, ggml_tensor * b, ggml_tensor * x, const lora_pair * p, float scale);

// The targets of one group (lora_pack.h) on their shared input x, in the group's order (unused entries null):
// y_i = W_i x (+ b_i) (+ s B_i A_i x). Targets in `pack` take their adapter and bias terms from its stacked
// product; the others go through qwen2_linear with `lora`'s pair, if any. When the model holds the group as one
// tensor (layer_weights::wqkv, ffn_gate_up) and the adapter is packed over all of the group's targets or none
// of them, the group runs as one product: `whole` is its [rows, T] result and each y_i a view of its rows.
struct linear_group {
    std::array<ggml_tensor *, 3> y = {};
    ggml_tensor * whole = nullptr;
};
linear_group qwen2_linear_group(ggml_context * ctx, const model & m, int64_t il, int group, ggml_tensor * x,
                                const lora_adapter * lora, const lora_pack * pack);

// A frozen weight W [in, out] of any supported type as `type` for a matrix product: W itself when it already
// has that type, else dequantized (get_rows over `iota`, an I32 [>= out] tensor holding 0, 1, 2, ...) and
// converted. Transposed: W^T as a contiguous [out, in] scratch copy, for input gradients. `rows_in_type`
// (CUDA only: the CPU's get_rows writes F32 alone) dequantizes straight into F16 or BF16.
ggml_tensor * frozen_weight(ggml_context * ctx, ggml_tensor * w, ggml_tensor * iota, ggml_type type, bool transposed, bool rows_in_type = false);

// A contiguous tensor with dimensions 0 and 1 swapped (same type; x contiguous).
ggml_tensor * transpose01(ggml_context * ctx, ggml_tensor * x);

// dx = W^T dy for a frozen weight W [in, out] of any supported type and dy [out, T]: the input gradient of a
// linear layer, all on the weight's device, through frozen_weight's transposed copy in `type` (F16 or BF16
// run on the matrix units; ggml's CUDA OUT_PROD, what its autodiff would use, takes only F32).
ggml_tensor * frozen_input_grad(ggml_context * ctx, ggml_tensor * w, ggml_tensor * dy, ggml_tensor * iota, ggml_type type = GGML_TYPE_F16);

forward_result qwen2_build_forward(ggml_context * ctx, ggml_cgraph * gf, const model & m, kv_cache & kv, const forward_params & p);

} // namespace sqlr1
