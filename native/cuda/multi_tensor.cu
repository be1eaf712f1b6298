// See multi_tensor.h. The tensor and chunk tables go to the device in one copy per call, into a buffer kept
// per device; every call runs on the legacy stream and returns when its kernel is done.
#include "multi_tensor.h"
#include "common.h"
#include "cuda_check.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

namespace sqlr1 {

namespace {

constexpr int THREADS = 256;

struct mt_chunk {
    int32_t tensor;
    int32_t len;
    int64_t off;
};

enum class pass { sumsq, scale, zero, adamw };

struct mt_params {
    const mt_span * ts;
    const mt_chunk * cs;
    double * partial;  // sumsq: one per chunk
    float scale;
    float lr, beta1, beta2, eps, wd, beta1h, beta2h;
};

template <pass P>
__global__ void __launch_bounds__(THREADS) mt_kernel(mt_params a) {
    const mt_chunk c = a.cs[blockIdx.x];
    const mt_span t = a.ts[c.tensor];
    float * g = t.grad + c.off;
    if constexpr (P == pass::sumsq) {
        double acc = 0.0;
        for (int i = threadIdx.x; i < c.len; i += THREADS) acc += (double) g[i] * (double) g[i];
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
        __shared__ double warp_sums[THREADS / 32];
        if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
        __syncthreads();
        if (threadIdx.x == 0) {
            double s = 0.0;
            for (int w = 0; w < THREADS / 32; w++) s += warp_sums[w];
            a.partial[blockIdx.x] = s;
        }
    } else if constexpr (P == pass::scale) {
        for (int i = threadIdx.x; i < c.len; i += THREADS) g[i] *= a.scale;
    } else if constexpr (P == pass::zero) {
        for (int i = threadIdx.x; i < c.len; i += THREADS) g[i] = 0.0f;
    } else {
        float * x = t.value + c.off, * m = t.m + c.off, * v = t.v + c.off;
        for (int i = threadIdx.x; i < c.len; i += THREADS) {
            const float gi = g[i];
            const float mi = m[i] * a.beta1 + gi * (1.0f - a.beta1);
            const float vi = v[i] * a.beta2 + gi * gi * (1.0f - a.beta2);
            m[i] = mi;
            v[i] = vi;
            const float mh = mi * a.beta1h;
            const float vh = sqrtf(vi * a.beta2h) + a.eps;
            x[i] = x[i] * (1.0f - a.lr * a.wd) - a.lr * mh / vh;
        }
    }
}

// A device buffer per device that grows as needed and is kept (the tables are a few KB to a few hundred KB).
struct table_buffer {
    void * p = nullptr;
    size_t cap = 0;
};
std::mutex table_mutex;
std::map<int, table_buffer> tables;

template <pass P>
void run(const std::vector<mt_span> & ts, mt_params a, std::vector<double> * partial_out = nullptr) {
    if (ts.empty()) return;
    std::vector<mt_chunk> cs;
    for (size_t i = 0; i < ts.size(); i++) {
        if (!ts[i].grad || ts[i].n < 0 || (P == pass::adamw && (!ts[i].value || !ts[i].m || !ts[i].v)))
            fail("ERR_INTERNAL", "multi-tensor pass: tensor %zu is incomplete", i);
        for (int64_t off = 0; off < ts[i].n; off += MT_CHUNK)
            cs.push_back({ (int32_t) i, (int32_t) std::min<int64_t>(MT_CHUNK, ts[i].n - off), off });
    }
    if (cs.empty()) return;
    if (cs.size() > (size_t) INT32_MAX) fail("ERR_INVALID_ARG", "multi-tensor pass: too many chunks");
    cudaStream_t st = project_stream(ts[0].grad);
    int device = 0;
    cuda_check(cudaGetDevice(&device), "cudaGetDevice");

    // [spans][chunks][partials], each part 16-byte aligned.
    auto align = [](size_t x) { return (x + 15) / 16 * 16; };
    const size_t n_ts = align(ts.size() * sizeof(mt_span)), n_cs = align(cs.size() * sizeof(mt_chunk));
    const size_t n_partial = P == pass::sumsq ? cs.size() * sizeof(double) : 0;
    std::lock_guard<std::mutex> lock(table_mutex);
    table_buffer & tb = tables[device];
    if (tb.cap < n_ts + n_cs + n_partial) {
        if (tb.p) cuda_check(cudaFree(tb.p), "cudaFree");
        tb.p = nullptr;
        tb.cap = 0;
        cuda_check(cudaMalloc(&tb.p, 2 * (n_ts + n_cs + n_partial)), "cudaMalloc");
        tb.cap = 2 * (n_ts + n_cs + n_partial);
    }
    std::vector<uint8_t> host(n_ts + n_cs);
    memcpy(host.data(), ts.data(), ts.size() * sizeof(mt_span));
    memcpy(host.data() + n_ts, cs.data(), cs.size() * sizeof(mt_chunk));
    uint8_t * dev = (uint8_t *) tb.p;
    cuda_check(cudaMemcpyAsync(dev, host.data(), host.size(), cudaMemcpyHostToDevice, st), "cudaMemcpyAsync");
    a.ts = (const mt_span *) dev;
    a.cs = (const mt_chunk *) (dev + n_ts);
    a.partial = P == pass::sumsq ? (double *) (dev + n_ts + n_cs) : nullptr;
    mt_kernel<P><<<(unsigned) cs.size(), THREADS, 0, st>>>(a);
    cuda_check(cudaGetLastError(), "multi-tensor launch");
    cuda_check(cudaStreamSynchronize(st), "multi-tensor pass");  // always: the table buffer is reused and host data read back
    if (P == pass::sumsq) {
        std::vector<double> partial(cs.size());
        cuda_check(cudaMemcpy(partial.data(), a.partial, n_partial, cudaMemcpyDeviceToHost), "cudaMemcpy");
        partial_out->assign(ts.size(), 0.0);
        for (size_t k = 0; k < cs.size(); k++) (*partial_out)[cs[k].tensor] += partial[k];
    }
}

} // namespace

std::vector<double> mt_grad_sumsq_cuda(const std::vector<mt_span> & ts) {
    std::vector<double> out(ts.size(), 0.0);
    run<pass::sumsq>(ts, mt_params{}, &out);
    return out;
}

void mt_grad_scale_cuda(const std::vector<mt_span> & ts, float scale) {
    mt_params a{};
    a.scale = scale;
    run<pass::scale>(ts, a);
}

void mt_grad_zero_cuda(const std::vector<mt_span> & ts) { run<pass::zero>(ts, mt_params{}); }

void mt_adamw_cuda(const std::vector<mt_span> & ts, const float p[7]) {
    mt_params a{};
    a.lr = p[0];
    a.beta1 = p[1];
    a.beta2 = p[2];
    a.eps = p[3];
    a.wd = p[4];
    a.beta1h = p[5];
    a.beta2h = p[6];
    run<pass::adamw>(ts, a);
}

} // namespace sqlr1
