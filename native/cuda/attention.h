// Self-attention for training on the GPU's matrix units (causal, or each query seeing a shared prefix and its own
// segment): a forward that also returns each row's
// log-sum-exp, and a backward that recomputes the probabilities tile by tile from it, so the
// [tokens x tokens x heads] scores never exist in memory (the written-out form in train.cpp keeps them, and
// spends most of a layer's backward on them and on the permutes around them).
//
// Layouts are the training graph's own, so no permutes are needed around the kernels: for T = ns * nt tokens
// (ns sequences of nt, sequence-major), Q [hd, H, T] and K, V [hd, Hk, T]; query head h reads KV head
// h / (H / Hk). Q, K and V are BF16; dO comes in F32 and the kernels read a BF16 copy of it; O, the gradients,
// the log-sum-exp and D = rowsum(dO * O) are F32 ([H, T] for the last two).
#pragma once

#include <cstdint>
#include <vector>

namespace sqlr1 {

struct attn_dims {
    int64_t hd = 0, H = 0, Hk = 0, nt = 0, ns = 0;
    float scale = 1.0f;  // applied to Q K^T before the softmax
    // Which keys each query sees, in device memory: null for causal attention within each sequence; else
    // [3 * T] int32 {from, shared_end, own_from} per token, sequence-local: token j of a sequence sees the keys
    // in [from, shared_end) and [own_from, j], never one after itself (a prompt shared by several completions
    // packed after it, each seeing the prompt and itself: see train_batch::span).
    const int32_t * span = nullptr;
};

struct attn_host_result {
    std::vector<float> o, lse, dq, dk, dv;
};

#ifdef SQLR1_WITH_CUDA
// ggml's flash attention mask for the same batches, written on the device: F16 [nt keys, nt queries, 1, ns],
// 0 where a query sees a key (by `span`, device memory, as in attn_dims; causal when null) and -inf elsewhere.
// The training graphs' flash attention reads it instead of a host-built copy uploaded for every new layout.
void attn_mask_f16_cuda(void * mask, const int32_t * span, int64_t nt, int64_t ns);

// The same from host data (tests): `span` host [3 * ns * nt] or null; nt * nt * ns F16 words.
std::vector<uint16_t> attn_mask_f16_from_host(const int32_t * span, int64_t nt, int64_t ns);

// Whether the kernels cover this head size on the device that holds `ptr` (BF16 matrix units: sm_80 or later).
bool attn_cuda_supported(int64_t hd, const void * ptr);

// o [hd, H, T], lse [H, T] (natural log of the row's sum of exp(scale * q.k)).
void attn_cuda_forward(const attn_dims & d, const void * q, const void * k, const void * v, float * o, float * lse);

// From the forward's o and lse and the gradient dout [hd, H, T] at o: dq [hd, H, T]; dk, dv [hd, Hk, T]. dsum
// [H, T] and dout_bf16 (BF16 [hd, H, T]) are scratch: the first pass computes D = rowsum(dO * O) in F32 and
// writes the BF16 copy of dO that the tile kernels read. With grouped heads (H > Hk), `per_head`
// [2 * hd * H * T] holds each query head's part before the group sums (null when H == Hk).
void attn_cuda_backward(const attn_dims & d, const void * q, const void * k, const void * v, const float * o, const float * dout,
                        void * dout_bf16, const float * lse, float * dsum, float * dq, float * dk, float * dv, float * per_head);

// The same from host F32 arrays (q, k, v rounded to BF16 on upload; dout stays F32 as in training), for the
// tests against a plain-loop reference.
// dk and dv come back per KV head.
// `span` is host data here ([3 * T], or null for causal).
attn_host_result attn_cuda_from_host(const attn_dims & d, const float * q, const float * k, const float * v, const float * dout,
                                     const int32_t * span = nullptr);
#endif

} // namespace sqlr1
