// A Qwen2-family model loaded from GGUF: hyperparameters, weights on one backend (CPU or CUDA), and the
// backends that run it. Everything in the file is validated before ggml sees it.
#pragma once

#include "common.h"
#include "executor.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <memory>
#include <string>
#include <vector>

struct gguf_context;  // gguf.h

namespace sqlr1 {

enum arch_kind { ARCH_QWEN2, ARCH_LLAMA };

struct hparams {
    arch_kind arch = ARCH_QWEN2;
    std::string arch_name;
    int64_t n_vocab = 0;
    int64_t n_ctx_train = 0;
    int64_t n_embd = 0;
    int64_t n_layer = 0;
    int64_t n_ff = 0;
    int64_t n_head = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;
    int64_t n_rot = 0;
    float rope_freq_base = 10000.0f;
    float rms_eps = 1e-6f;
    int rope_mode = 0;  // GGML_ROPE_TYPE_NEOX for qwen2, 0 (normal) for llama

    int64_t n_embd_q() const { return head_dim * n_head; }
    int64_t n_embd_kv() const { return head_dim * n_head_kv; }
};

struct layer_weights {
    ggml_tensor * attn_norm = nullptr;
    ggml_tensor * wq = nullptr, * wk = nullptr, * wv = nullptr, * wo = nullptr;
    ggml_tensor * bq = nullptr, * bk = nullptr, * bv = nullptr;
    ggml_tensor * ffn_norm = nullptr;
    ggml_tensor * ffn_gate = nullptr, * ffn_up = nullptr, * ffn_down = nullptr;
    // When they share one quantized type, q, k and v (and their biases) are rows of one tensor each, and so are
    // gate and up: wq, wk, wv, bq, bk, bv, ffn_gate and ffn_up are then views of these, and the sampling graph
    // runs each group as one product (one launch and one quantization of the input instead of three or two).
    // Null otherwise (lay_out_weights in model.cpp).
    ggml_tensor * wqkv = nullptr, * bqkv = nullptr, * ffn_gate_up = nullptr;
};

// The backends a model runs on: the primary one (CPU or CUDA) and always a CPU backend, which ggml's
// scheduler needs as a last resort; and the device's executor (executor.h), which every call that runs them
// goes through.
struct backend_set {
    std::string device;  // "cpu" or "cuda"
    ggml_backend_t primary = nullptr;
    ggml_backend_t cpu = nullptr;
    int n_threads = 1;
    std::shared_ptr<executor> exec;
    ~backend_set();
};

std::shared_ptr<backend_set> backend_set_init(const std::string & device, int n_threads);
bool cuda_available();
int cuda_device_count();
std::string cuda_device_name(int i);
// "major.minor" of a CUDA device, or "" when unknown (CPU builds).
std::string cuda_compute_capability(int i);
// The CUDA architectures this binary carries (CMAKE_CUDA_ARCHITECTURES, e.g. "90-real,90-virtual"), or "".
const char * cuda_architectures();

struct model {
    hparams hp;
    std::shared_ptr<backend_set> backends;
    ggml_context * ctx_w = nullptr;             // tensor metadata of the weights (with the fused groups' tensors)
    std::vector<ggml_tensor *> weights;         // the file's tensors, in file order
    ggml_backend_buffer_t buf_w = nullptr;      // the weights' memory
    ggml_tensor * tok_embd = nullptr, * output_norm = nullptr, * output = nullptr;
    std::vector<layer_weights> layers;
    std::string path;
    size_t weight_bytes = 0;
    ~model();
};

// Loads and validates a GGUF model. Throws sqlr1::error (ERR_GGUF_NOT_FOUND, ERR_GGUF_INVALID,
// ERR_UNSUPPORTED_ARCH, ERR_UNSUPPORTED_TYPE, ERR_NO_CUDA, ERR_OUT_OF_MEMORY).
std::unique_ptr<model> model_load(const std::string & path, std::shared_ptr<backend_set> backends);

// Writes a GGUF file through a temporary file and a rename, so that no half-written file is ever left at `path`.
void gguf_write_atomic(::gguf_context * g, const std::string & path);

// Where tensor `i` of a GGUF file opened without its data (gguf no_alloc) lies: its absolute byte offset and size.
// False when that range does not end inside a file of `file_size` bytes (checked without overflow). Every loader
// checks this before allocating anything, so a file cannot make ggml allocate more than it holds.
bool gguf_tensor_in_file(const ::gguf_context * g, int64_t i, uint64_t file_size, uint64_t * offset, uint64_t * nbytes);

bool weight_type_supported(ggml_type t);
// A supported weight type by name (f32, f16, bf16, q8_0, q4_0, q4_K, q6_K; any case); ERR_UNSUPPORTED_TYPE otherwise.
ggml_type weight_type_from_name(const std::string & name);

} // namespace sqlr1
