// Optimizer passes over many parameter tensors in one kernel launch each: the global gradient norm, clipping,
// zeroing and the AdamW update. A LoRA adapter on all seven linear layers of a 36-layer model has 504 tensors;
// one ggml node per tensor spends most of a step launching kernels, these take a launch per pass.
//
// Each tensor is cut into chunks of up to MT_CHUNK elements and a block handles one chunk, so a large tensor
// spreads over the GPU and many small ones share it. Results match ggml's per-tensor ops: the AdamW update is
// the same float32 formula as ggml_opt_step_adamw (hyperparameters in ggml-opt's layout).
#pragma once

#include <cstdint>
#include <vector>

namespace sqlr1 {

// One parameter: device pointers to its value, gradient and AdamW moments (F32, contiguous), n elements.
struct mt_span {
    float * value = nullptr;
    float * grad = nullptr;
    float * m = nullptr;
    float * v = nullptr;
    int64_t n = 0;
};

constexpr int64_t MT_CHUNK = 16384;

#ifdef SQLR1_WITH_CUDA
// Per-tensor sums of squares of the gradients: each chunk sums in float64 on the device, the chunks of a tensor
// are added in order on the host (so the result is the same on every run).
std::vector<double> mt_grad_sumsq_cuda(const std::vector<mt_span> & ts);
void mt_grad_scale_cuda(const std::vector<mt_span> & ts, float scale);  // grad *= scale
void mt_grad_zero_cuda(const std::vector<mt_span> & ts);                // grad = 0
// p = [lr, beta1, beta2, eps, weight decay, 1 / (1 - beta1^t), 1 / (1 - beta2^t)]
void mt_adamw_cuda(const std::vector<mt_span> & ts, const float p[7]);
#endif

} // namespace sqlr1
