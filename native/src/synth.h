// Random-weight models with a real architecture and vocabulary (`sqlr1 make-model`): for tests and benchmarks,
// where speed does not depend on weight values.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace sqlr1 {

struct synth_shape {
    std::string name;
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    float rope_base;
    bool tied;
};

// Known shapes: tiny, demo, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b. Throws ERR_INVALID_ARG otherwise.
synth_shape synth_shape_get(const std::string & name);

struct synth_options {
    std::string shape = "tiny";
    std::string type = "f32";       // f32 f16 bf16 q8_0 q4_0 q4_K q6_K (linear layers and embeddings)
    std::string out;
    std::string vocab;              // GGUF to copy tokenizer.* metadata from
    uint64_t seed = 42;
    int n_threads = 0;
    std::function<void(double)> progress;  // fraction done
};

// Writes the model to `out` (through a temporary file and a rename). Returns the number of bytes written.
uint64_t synth_model_write(const synth_options & o);

} // namespace sqlr1
