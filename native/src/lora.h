// LoRA adapters on the linear layers of a model: y = W x + (alpha / r) B (A x), with A [in, r] and B [r, out]
// in ggml order (llama.cpp's adapter layout). A new adapter follows PEFT's initialization (A uniform in
// +-1/sqrt(in), B zero), so it changes nothing until trained. The same tensors serve sampling and training.
#pragma once

#include "model.h"

#include <array>
#include <atomic>
#include <string>

namespace sqlr1 {

struct param_store;

constexpr int LORA_MAX_RANK = 4096;

enum lora_target { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_N_TARGETS };

// The targets of a layer that share an input (q/k/v, o, gate/up, down): the sampling graph packs each group into
// one product pair (lora_pack.h) and the training graphs run each as one product (train_fused.cpp).
enum lora_group_id { LORA_GROUP_QKV, LORA_GROUP_O, LORA_GROUP_GATE_UP, LORA_GROUP_DOWN, LORA_N_GROUPS };
// The targets of each group, in their order in the stacked product (-1: no further member).
constexpr int LORA_GROUP_TARGETS[LORA_N_GROUPS][3] = {
    { LORA_Q, LORA_K, LORA_V }, { LORA_O, -1, -1 }, { LORA_GATE, LORA_UP, -1 }, { LORA_DOWN, -1, -1 },
};

// GGUF tensor base names, in lora_target order ("attn_q" -> blk.N.attn_q.weight.lora_a).
extern const char * const LORA_TARGET_TENSOR[LORA_N_TARGETS];
// Names users pick targets by ("q", "k", "v", "o", "gate", "up", "down").
extern const char * const LORA_TARGET_NAME[LORA_N_TARGETS];

struct lora_pair {
    ggml_tensor * a = nullptr;  // [in, r]
    ggml_tensor * b = nullptr;  // [r, out]
};

struct lora_adapter {
    std::shared_ptr<model> m;
    int64_t rank = 0;
    float alpha = 0.0f;
    bool enabled = true;
    uint32_t targets = 0;       // bit i set: lora_target i is adapted
    std::vector<std::array<lora_pair, LORA_N_TARGETS>> layers;
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    // The store of this adapter's parameters (train.h), while anything holds it. The store keeps the adapter
    // alive (its values are the adapter's tensors), so this side is weak.
    std::weak_ptr<param_store> params;
    // Moves on every write to A or B (setTensor; the store's set and AdamW steps): the sampling graph's packed
    // copy (lora_pack.h) is refreshed only when it moved.
    std::atomic<uint64_t> version{0};
    float scale() const { return alpha / (float) rank; }
    std::vector<ggml_tensor *> tensors() const;  // a, b of every adapted layer, in file order
    ~lora_adapter();
};

// The weight matrix a target adapts in layer `il`.
ggml_tensor * lora_target_weight(const model & m, int64_t il, int target);
// The bias a target's base layer adds (q, k, v may have one), or null.
ggml_tensor * lora_target_bias(const model & m, int64_t il, int target);

std::shared_ptr<lora_adapter> lora_adapter_init(std::shared_ptr<model> m, int64_t rank, float alpha, uint32_t targets, uint64_t seed);
// Saves in llama.cpp's adapter format (through a temporary file and a rename).
void lora_adapter_save(const lora_adapter & a, const std::string & path);
// Loads and validates an adapter against the model (ERR_ADAPTER_INVALID on any mismatch). The file's metadata is
// read without its data and every tensor's name, type, shape and byte range is checked before anything is allocated.
std::shared_ptr<lora_adapter> lora_adapter_load(std::shared_ptr<model> m, const std::string & path);

} // namespace sqlr1
