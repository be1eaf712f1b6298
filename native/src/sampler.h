// Draws one token per row of logits. Greedy when temperature <= 0, else Gumbel-max (an exact draw from
// softmax(logits / T)). Top-k / top-p truncate the candidate set on the CPU (a slower path).
// logprob is the sampled token's log-probability under softmax(logits / T) (T = 1 when greedy): the
// untruncated distribution, which is what teacher-forced training recomputes.
#pragma once

#include "sampler_core.h"

#include <vector>

namespace sqlr1 {

struct sampling_params {
    float temperature = 1.0f;
    int top_k = 0;        // 0 = off
    float top_p = 1.0f;   // 1 = off
};

// CPU: rows of `n_vocab` floats at `logits + i * stride`.
void sample_rows_cpu(const float * logits, int64_t n_vocab, int64_t stride, int64_t n_rows,
                     const sample_row_params * rows, const sampling_params & sp, int32_t * out_tok, float * out_lp);

#ifdef SQLR1_WITH_CUDA
// CUDA: logits on the device; outputs copied back to host arrays. Greedy / plain temperature only.
void sample_rows_cuda(const float * d_logits, int64_t n_vocab, int64_t stride, int64_t n_rows,
                      const sample_row_params * rows, float temperature, int32_t * out_tok, float * out_lp);
// The same from host logits (uploads them first): for the tests that compare the kernel with the CPU loop.
void sample_rows_cuda_from_host(const float * logits, int64_t n_vocab, int64_t n_rows, const sample_row_params * rows,
                                float temperature, int32_t * out_tok, float * out_lp);
#endif

} // namespace sqlr1
