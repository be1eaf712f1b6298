#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <thread>

namespace sqlr1 {

static void sample_row(const float * l, int64_t V, const sample_row_params & rp, const sampling_params & sp,
                       int32_t * out_tok, float * out_lp, std::vector<int32_t> & idx) {
    const bool greedy = !(sp.temperature > 0.0f);
    const float inv_t = greedy ? 1.0f : 1.0f / sp.temperature;
    float mx = -INFINITY;
    for (int64_t i = 0; i < V; i++) mx = std::max(mx, l[i] * inv_t);
    double sum = 0.0;
    for (int64_t i = 0; i < V; i++) sum += std::exp((double) (l[i] * inv_t - mx));
    const float lse = mx + (float) std::log(sum);

    int64_t best = 0;
    if (greedy) {
        for (int64_t i = 1; i < V; i++) if (l[i] > l[best]) best = i;
    } else if (sp.top_k <= 0 && !(sp.top_p < 1.0f)) {
        float bv = -INFINITY;
        for (int64_t i = 0; i < V; i++) {
            const float g = l[i] * inv_t + gumbel_noise(rng_uniform(rp.seed, rp.pos, (uint64_t) i));
            if (g > bv) { bv = g; best = i; }
        }
    } else {
        // Truncated sampling: candidates sorted by logit, cut by top-k then top-p, then Gumbel-max among them.
        idx.resize(V);
        std::iota(idx.begin(), idx.end(), 0);
        int64_t k = sp.top_k > 0 ? std::min<int64_t>(sp.top_k, V) : V;
        auto by_logit = [l](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
        if (k < V) std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
        else std::sort(idx.begin(), idx.end(), by_logit);
        if (sp.top_p < 1.0f) {
            double cum = 0.0;
            int64_t n = 0;
            while (n < k) {
                cum += std::exp((double) (l[idx[n]] * inv_t - lse));
                n++;
                if (cum >= sp.top_p) break;
            }
            k = std::max<int64_t>(n, 1);
        }
        float bv = -INFINITY;
        for (int64_t j = 0; j < k; j++) {
            const int32_t i = idx[j];
            const float g = l[i] * inv_t + gumbel_noise(rng_uniform(rp.seed, rp.pos, (uint64_t) i));
            if (g > bv) { bv = g; best = i; }
        }
    }
    *out_tok = (int32_t) best;
    *out_lp = l[best] * inv_t - lse;
}

void sample_rows_cpu(const float * logits, int64_t n_vocab, int64_t stride, int64_t n_rows,
                     const sample_row_params * rows, const sampling_params & sp, int32_t * out_tok, float * out_lp) {
    const int64_t n_threads = std::min<int64_t>(n_rows, std::max(1u, std::thread::hardware_concurrency()));
    auto work = [&](int64_t t) {
        std::vector<int32_t> idx;
        for (int64_t r = t; r < n_rows; r += n_threads) {
            sample_row(logits + r * stride, n_vocab, rows[r], sp, out_tok + r, out_lp + r, idx);
        }
    };
    if (n_threads <= 1) { work(0); return; }
    std::vector<std::thread> th;
    for (int64_t t = 0; t < n_threads; t++) th.emplace_back(work, t);
    for (auto & x : th) x.join();
}

} // namespace sqlr1
