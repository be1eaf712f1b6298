// See dequant.h. One thread per 32-element block: it reads the block's 18 bytes and writes 64 bytes of BF16 as
// four 16-byte stores; a job table lets one launch cover every weight of a layer.
#include "dequant.h"
#include "common.h"
#include "cuda_check.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

namespace sqlr1 {

namespace {

constexpr int QK = 32;
constexpr int BLOCK_BYTES = 18;   // fp16 scale + 16 bytes of nibbles
constexpr int THREADS = 256;
constexpr int MAX_JOBS = 8;

struct job_table {
    dequant_job jobs[MAX_JOBS];
    int64_t first_block[MAX_JOBS + 1];  // prefix sums of the jobs' block counts
    int n_jobs;
};

__global__ void __launch_bounds__(THREADS) dequant_q4_0_kernel(const job_table tab) {
    const int64_t blk = (int64_t) blockIdx.x * THREADS + threadIdx.x;
    if (blk >= tab.first_block[tab.n_jobs]) return;
    int j = 0;
    while (blk >= tab.first_block[j + 1]) j++;
    const int64_t b = blk - tab.first_block[j];
    const uint8_t * src = (const uint8_t *) tab.jobs[j].src + b * BLOCK_BYTES;
    const float d = __half2float(*reinterpret_cast<const __half *>(src));
    uint8_t qs[16];
#pragma unroll
    for (int i = 0; i < 8; i++) {  // the nibbles start 2 bytes in: 2-byte loads
        const uint16_t w = reinterpret_cast<const uint16_t *>(src + 2)[i];
        qs[2 * i] = (uint8_t) (w & 0xff);
        qs[2 * i + 1] = (uint8_t) (w >> 8);
    }
    __align__(16) __nv_bfloat16 y[QK];
#pragma unroll
    for (int i = 0; i < 16; i++) {
        y[i] = __float2bfloat16((float) ((int) (qs[i] & 0x0f) - 8) * d);
        y[i + 16] = __float2bfloat16((float) ((int) (qs[i] >> 4) - 8) * d);
    }
    uint4 * dst = reinterpret_cast<uint4 *>(tab.jobs[j].dst + b * QK);
#pragma unroll
    for (int i = 0; i < 4; i++) dst[i] = reinterpret_cast<const uint4 *>(y)[i];
}

} // namespace

void dequant_q4_0_bf16_cuda(const std::vector<dequant_job> & jobs) {
    cudaStream_t st = nullptr;
    for (size_t k = 0; k < jobs.size(); k += MAX_JOBS) {
        job_table tab{};
        tab.n_jobs = (int) std::min<size_t>(MAX_JOBS, jobs.size() - k);
        tab.first_block[0] = 0;
        for (int i = 0; i < tab.n_jobs; i++) {
            const dequant_job & jb = jobs[k + i];
            if (jb.n <= 0 || jb.n % QK != 0 || ((uintptr_t) jb.dst % 16) != 0 || !jb.src)
                fail("ERR_INTERNAL", "Q4_0 dequantization: bad job (%lld elements)", (long long) jb.n);
            tab.jobs[i] = jb;
            tab.first_block[i + 1] = tab.first_block[i] + jb.n / QK;
        }
        const int64_t blocks = tab.first_block[tab.n_jobs];
        st = project_stream(tab.jobs[0].dst);
        dequant_q4_0_kernel<<<(unsigned) ((blocks + THREADS - 1) / THREADS), THREADS, 0, st>>>(tab);
        cuda_check(cudaGetLastError(), "dequant launch");
    }
    if (st) project_launched(st, "dequant");
}

void dequant_q4_0_bf16_from_host(const uint8_t * blocks, int64_t n, uint16_t * out) {
    if (n <= 0 || n % QK != 0) fail("ERR_INVALID_ARG", "Q4_0 dequantization: %lld elements is not a positive multiple of 32", (long long) n);
    const size_t in_bytes = (size_t) (n / QK) * BLOCK_BYTES, out_bytes = (size_t) n * 2;
    uint8_t * dev = nullptr;
    cuda_check(cudaMalloc(&dev, out_bytes + in_bytes + 16), "cudaMalloc");
    struct guard { uint8_t * p; ~guard() { cudaFree(p); } } gd{dev};
    cuda_check(cudaMemcpy(dev + out_bytes, blocks, in_bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
    uploads_done();
    dequant_q4_0_bf16_cuda({ { dev + out_bytes, reinterpret_cast<uint16_t *>(dev), n } });
    cuda_check(cudaMemcpy(out, dev, out_bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
}

} // namespace sqlr1
