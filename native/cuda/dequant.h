// Dequantizing frozen Q4_0 weights to BF16 for the training graphs' matrix products: all of a layer's weights in
// one launch, each into its place in a group's region (ggml's get_rows does one weight per node, at a fraction
// of the memory bandwidth). The values are ggml's: (q - 8) * d in float32, rounded to nearest even.
#pragma once

#include <cstdint>
#include <vector>

namespace sqlr1 {

struct dequant_job {
    const void * src = nullptr;   // Q4_0 blocks (device)
    uint16_t * dst = nullptr;     // BF16 (device), 16-byte aligned
    int64_t n = 0;                // elements, a multiple of 32
};

#ifdef SQLR1_WITH_CUDA
void dequant_q4_0_bf16_cuda(const std::vector<dequant_job> & jobs);  // returns when done

// The same on host data (tests): n elements from Q4_0 blocks to BF16 words.
void dequant_q4_0_bf16_from_host(const uint8_t * blocks, int64_t n, uint16_t * out);
#endif

} // namespace sqlr1
