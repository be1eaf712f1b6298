// Persistent trainable parameters on one device and their optimizer state: a param_store holds named F32
// tensors, each with a gradient accumulator and the AdamW moments m and v, all in the store's backend memory.
// Backward passes (tensor_graph.cpp) add into the gradients; adamw_step applies ggml_opt_step_adamw's update to
// every parameter that received a gradient since the last zero_grad. On CUDA the norm, clipping, zeroing and
// AdamW passes each run as one kernel over all the tensors (native/cuda/multi_tensor.h); elsewhere as ggml graphs.
//
// Shapes are given outermost first (row-major, as JS writes them): shape [R, C] is ggml's ne = [C, R].
// Every function validates its input and throws sqlr1::error before ggml sees anything.
#pragma once

#include "model.h"

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace sqlr1 {

constexpr int PARAM_MAX_DIMS = 4;
constexpr int64_t PARAM_MAX_ELEMENTS = int64_t(1) << 31;

struct param_entry {
    std::string name;
    std::vector<int64_t> shape;            // outermost first
    ggml_context * ctx = nullptr;          // the four tensors' metadata
    ggml_backend_buffer_t buf = nullptr;   // their memory, on the store's device
    ggml_tensor * value = nullptr;         // flagged GGML_TENSOR_FLAG_PARAM for ggml's autodiff
    ggml_tensor * grad = nullptr;          // gradient accumulator (ggml_build_backward_expand's grad_accs)
    ggml_tensor * m = nullptr;             // AdamW first moment
    ggml_tensor * v = nullptr;             // AdamW second moment
    bool has_grad = false;                 // a backward added to `grad` since the last zero_grad
    bool external = false;                 // `value` belongs to another owner (a LoRA adapter's tensor)
    int64_t n_elements() const;
    ~param_entry();
};

// Adopted tensors (LoRA A/B) carry ggml's parameter flag only while a graph that differentiates or steps them is
// built and run: model graphs that read them must keep treating them as plain leaves. Flags on `mark`, clears
// on destruction.
struct param_flag_guard {
    std::vector<ggml_tensor *> flagged;
    void mark(const param_entry & e);
    ~param_flag_guard();
};

struct param_store {
    std::shared_ptr<backend_set> backends;
    std::vector<std::unique_ptr<param_entry>> params;     // in insertion order
    std::unordered_map<std::string, size_t> index;
    ggml_context * ctx_opt = nullptr;                     // the AdamW hyperparameter tensor
    ggml_backend_buffer_t buf_opt = nullptr;
    ggml_tensor * adamw_params = nullptr;                 // [alpha, beta1, beta2, eps, wd, beta1h, beta2h]
    std::shared_ptr<void> owner;                          // keeps external parameter values alive
    std::function<void()> on_values_written;              // told after a write to the values (set, AdamW)
    ~param_store();
};

struct adamw_options {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    int64_t step = 1;   // 1-based step count, for the bias corrections 1 / (1 - beta^step)
};

// Device "cpu" or "cuda" (ERR_NO_CUDA on a CPU-only build or without a device).
std::shared_ptr<param_store> param_store_init(const std::string & device, int n_threads);
// A store on existing backends (a model's), for parameters that live with the model.
std::shared_ptr<param_store> param_store_init(std::shared_ptr<backend_set> backends);

// Validates a shape (0 to 4 dimensions, each >= 1; [] is a scalar) and returns its element count.
int64_t param_shape_check(const std::vector<int64_t> & shape, const char * what);
std::string param_shape_str(const std::vector<int64_t> & shape);

void param_store_add(param_store & s, const std::string & name, const std::vector<int64_t> & shape, const std::vector<float> & data);
// Adopts an existing contiguous F32 tensor on the store's device as a parameter (a LoRA adapter's A or B): the
// store allocates its gradient and moments; the value stays where it is, owned by `s.owner`.
void param_store_adopt(param_store & s, const std::string & name, ggml_tensor * value);
// The entry of `name`, or ERR_INVALID_ARG naming the known parameters.
param_entry & param_store_get(param_store & s, const std::string & name);
std::vector<float> param_store_read(const ggml_tensor * t);
void param_store_write(ggml_tensor * t, const std::vector<float> & data, const char * what);
// Writes a parameter's value and tells the store's on_values_written.
void param_store_set_value(param_store & s, const std::string & name, const std::vector<float> & data, const char * what);

// Global L2 norm over the gradients of the parameters that have one: per-tensor sums of squares on the device
// (float32 through ggml; float64 per chunk on CUDA), added up in float64 on the host.
double param_store_grad_norm(const param_store & s);
// Scales the gradients by max_norm / (norm + 1e-6) when that is below 1 (PyTorch's clip_grad_norm_); returns
// the norm before clipping. A non-finite norm leaves the gradients as they are.
double param_store_clip_grad_norm(param_store & s, double max_norm);
void param_store_zero_grad(param_store & s);

void adamw_options_check(const adamw_options & o);
// One AdamW step (ggml_opt_step_adamw) on every parameter with a gradient; returns how many were updated.
int64_t param_store_adamw_step(param_store & s, const adamw_options & o);

// The optimizer-state file: AdamW's moments, step count and learning rate as GGUF, apart from the LoRA adapter
// so that the adapter file stays a plain llama.cpp adapter and resuming training restores the optimizer exactly.
// Keys general.type = "optimizer", sqlr1.optimizer.{kind = "adamw", step, lr, count}; tensors <name>.adam_m and
// <name>.adam_v (F32, the parameter's shape) for every parameter.
struct optimizer_state {
    int64_t step = 0;   // steps taken so far (0 before the first)
    double lr = 0.0;
};

// Writes through a temporary file and a rename, so that a failed save never leaves a half-written file.
void param_store_save_state(const param_store & s, const std::string & path, int64_t step, double lr);
// Checks the whole file against the store (ERR_GGUF_NOT_FOUND, ERR_STATE_INVALID) before writing any moment, so
// that a failed load leaves the store as it was; returns the saved step and lr.
optimizer_state param_store_load_state(param_store & s, const std::string & path);

} // namespace sqlr1
