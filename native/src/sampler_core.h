// The sampling rule shared by the CPU loop and the CUDA kernel, so both draw the same token from the same
// logits: Gumbel-max over logits / T with a counter-based hash RNG keyed by (seed, position, token id).
// A sequence's draw depends only on its own seed and position, not on which batch it ran in.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define SQLR1_HD __host__ __device__ __forceinline__
#else
#define SQLR1_HD inline
#endif

namespace sqlr1 {

SQLR1_HD uint64_t rng_mix64(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

// A uniform in (0, 1), never 0 or 1, so that -log(-log(u)) is finite.
SQLR1_HD float rng_uniform(uint64_t seed, uint64_t pos, uint64_t idx) {
    const uint64_t h = rng_mix64(seed ^ rng_mix64(pos * 0x9e3779b97f4a7c15ULL ^ rng_mix64(idx + 0x632be59bd9b4e019ULL)));
    return ((float) (h >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

SQLR1_HD float gumbel_noise(float u) { return -logf(-logf(u)); }

struct sample_row_params {
    uint64_t seed;
    uint64_t pos;      // position of the token being drawn: the RNG counter
};

} // namespace sqlr1
