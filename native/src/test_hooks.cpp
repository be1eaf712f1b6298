#include "test_hooks.h"

#include "attention.h"
#include "dequant.h"
#include "model.h"
#include "napi_helpers.h"
#include "swiglu.h"
#include "train.h"

#include <cmath>

namespace sqlr1 {

namespace {

// A dimension of a request: an integer in [1, 65535].
int64_t dim_arg(Napi::Env env, const Napi::Object & o, const char * key) {
    const double v = get_number(o, key, 0);
    if (!(v >= 1 && v <= 65535 && v == std::floor(v))) bad_arg(env, std::string(key) + " must be an integer in [1, 65535]");
    return (int64_t) v;
}

// The training attention kernels from host arrays (native/cuda/attention.h), for the tests against a
// plain-loop reference: { q, k, v, dout: Float32Array, headDim, heads, kvHeads, nt, ns, scale, span? } ->
// { o, lse, dq, dk, dv } (dk, dv per KV head).
Napi::Value AttentionCuda(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "request");
    auto dim = [&](const char * key) { return dim_arg(env, o, key); };
    attn_dims d;
    d.hd = dim("headDim");
    d.H = dim("heads");
    d.Hk = dim("kvHeads");
    d.nt = dim("nt");
    d.ns = dim("ns");
    d.scale = (float) get_number(o, "scale", 1.0 / std::sqrt((double) d.hd));
    if (d.H % d.Hk != 0) bad_arg(env, "heads must be a multiple of kvHeads");
    const int64_t T = d.nt * d.ns, nq = d.hd * d.H * T, nk = d.hd * d.Hk * T;
    const std::vector<float> q = get_f32(env, o.Get("q"), "q", nq), k = get_f32(env, o.Get("k"), "k", nk);
    const std::vector<float> v = get_f32(env, o.Get("v"), "v", nk), dout = get_f32(env, o.Get("dout"), "dout", nq);
    std::vector<int32_t> span;
    if (!o.Get("span").IsUndefined()) {
        span = get_i32_array(o, "span");
        guarded(env, [&]() { span_validate(span, d.ns, d.nt); return 0; });
    }
    attn_host_result r;
    guarded(env, [&]() {
#ifdef SQLR1_WITH_CUDA
        if (cuda_device_count() == 0) fail("ERR_NO_CUDA", "no CUDA device is visible");
        r = executor_for("cuda")->run_sync([&]() { return attn_cuda_from_host(d, q.data(), k.data(), v.data(), dout.data(), span.empty() ? nullptr : span.data()); });
#else
        fail("ERR_NO_CUDA", "this binary was built without CUDA");
#endif
        return 0;
    });
    Napi::Object out = Napi::Object::New(env);
    for (auto [name, vec] : { std::pair{ "o", &r.o }, std::pair{ "lse", &r.lse }, std::pair{ "dq", &r.dq }, std::pair{ "dk", &r.dk }, std::pair{ "dv", &r.dv } })
        out.Set(name, to_js(env, *vec));
    return out;
}

// The flash attention mask written on the device (native/cuda/attention.h) from host data, for the tests:
// { nt, ns, span? } -> Uint16Array of nt * nt * ns F16 words ([nt keys, nt queries, ns]).
Napi::Value AttentionMaskCuda(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "request");
    auto dim = [&](const char * key) { return dim_arg(env, o, key); };
    const int64_t nt = dim("nt"), ns = dim("ns");
    if (nt * nt * ns > ((int64_t) 1 << 28)) bad_arg(env, "nt * nt * ns must be at most 2^28");
    std::vector<int32_t> span;
    if (!o.Get("span").IsUndefined()) {
        span = get_i32_array(o, "span");
        guarded(env, [&]() { span_validate(span, ns, nt); return 0; });
    }
    std::vector<uint16_t> out;
    guarded(env, [&]() {
#ifdef SQLR1_WITH_CUDA
        if (cuda_device_count() == 0) fail("ERR_NO_CUDA", "no CUDA device is visible");
        out = executor_for("cuda")->run_sync([&]() { return attn_mask_f16_from_host(span.empty() ? nullptr : span.data(), nt, ns); });
#else
        fail("ERR_NO_CUDA", "this binary was built without CUDA");
#endif
        return 0;
    });
    return to_js(env, out);
}

// The training graphs' Q4_0 -> BF16 dequantization (native/cuda/dequant.h) on host data, for the tests:
// (blocks: Uint8Array of 18-byte Q4_0 blocks, n elements) -> Uint16Array of BF16 words.
Napi::Value DequantQ4_0Cuda(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || !info[1].IsNumber())
        bad_arg(env, "dequantQ4_0Cuda(blocks: Uint8Array, n: number)");
    Napi::Uint8Array blocks = info[0].As<Napi::Uint8Array>();
    const double n = info[1].As<Napi::Number>().DoubleValue();
    if (!(n >= 32 && n <= (1 << 28) && n == std::floor(n) && std::fmod(n, 32) == 0))
        bad_arg(env, "n must be a positive multiple of 32 (at most 2^28)");
    if ((double) blocks.ByteLength() != n / 32 * 18) bad_arg(env, "blocks must hold n / 32 Q4_0 blocks of 18 bytes");
    std::vector<uint16_t> out((size_t) n);
    guarded(env, [&]() {
#ifdef SQLR1_WITH_CUDA
        if (cuda_device_count() == 0) fail("ERR_NO_CUDA", "no CUDA device is visible");
        executor_for("cuda")->run_sync([&]() { dequant_q4_0_bf16_from_host(blocks.Data(), (int64_t) n, out.data()); });
#else
        fail("ERR_NO_CUDA", "this binary was built without CUDA");
#endif
        return 0;
    });
    return to_js(env, out);
}

// The training SwiGLU kernel from host arrays (native/cuda/swiglu.h), for the tests against a plain-loop
// reference: { F, T, rank, g, u, dh?, bg?, zg?, bu?, zu?, ad?, dzd?, ld?, ldz?, bf16? } -> { h, dg?, du?, dgBf16?,
// duBf16? }. Without dh the kernel runs forward only (h); ld and ldz are the token strides of g, u and of zg,
// zu; bf16 also returns the kernel's BF16 copies of dg and du, as raw 16-bit words. grads { bg?, bu?, ad? }:
// the adapters' gradient sums are added into these (rank <= 16) and returned; dg and du then stay on the device.
Napi::Value SwigluCuda(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "request");
    auto dim = [&](const char * key, double lo) {
        const double v = get_number(o, key, -1);
        if (!(v >= lo && v <= (1 << 24) && v == std::floor(v))) bad_arg(env, std::string(key) + " must be an integer in [" + std::to_string((int) lo) + ", 16777216]");
        return (int64_t) v;
    };
    auto given = [&](const char * key) { Napi::Value v = o.Get(key); return !v.IsUndefined() && !v.IsNull(); };
    swiglu_args a;
    a.F = dim("F", 1);
    a.T = dim("T", 1);
    a.r = dim("rank", 0);
    a.ld = given("ld") ? dim("ld", (double) a.F) : a.F;
    a.ldz = given("ldz") ? dim("ldz", (double) a.r) : a.r;
    std::vector<float> g = get_f32(env, o.Get("g"), "g", a.ld * a.T), u = get_f32(env, o.Get("u"), "u", a.ld * a.T);
    std::vector<float> dh = given("dh") ? get_f32(env, o.Get("dh"), "dh", a.F * a.T) : std::vector<float>();
    a.g = g.data();
    a.u = u.data();
    a.dh = dh.empty() ? nullptr : dh.data();
    // Each LoRA term: its factor [r, F] and its inputs [r, T], both given or both left out.
    std::vector<float> lora[6];
    const char * keys[3][2] = { { "bg", "zg" }, { "bu", "zu" }, { "ad", "dzd" } };
    const float ** ptrs[3][2] = { { &a.bg, &a.zg }, { &a.bu, &a.zu }, { &a.ad, &a.dzd } };
    for (int w = 0; w < 3; w++) {
        const bool has_f = given(keys[w][0]), has_z = given(keys[w][1]);
        if (has_f != has_z) bad_arg(env, "each LoRA term needs both of its arrays");
        if (!has_f) continue;
        if (w == 2 && !a.dh) bad_arg(env, "the down projection's LoRA term needs dh (it is part of the backward)");
        lora[2 * w] = get_f32(env, o.Get(keys[w][0]), keys[w][0], a.r * a.F);
        lora[2 * w + 1] = get_f32(env, o.Get(keys[w][1]), keys[w][1], (w < 2 ? a.ldz : a.r) * a.T);
        *ptrs[w][0] = lora[2 * w].data();
        *ptrs[w][1] = lora[2 * w + 1].data();
    }
    // grads: { bg?, bu?, ad? } gradients the kernel adds the adapters' sums into (returned as `grads`).
    std::vector<float> gr[3];
    if (given("grads")) {
        if (!o.Get("grads").IsObject()) bad_arg(env, "grads must be an object { bg?, bu?, ad? }");
        Napi::Object go = o.Get("grads").As<Napi::Object>();
        const char * gk[3] = { "bg", "bu", "ad" };
        float ** gp[3] = { &a.dbg, &a.dbu, &a.dad };
        for (int w = 0; w < 3; w++) {
            Napi::Value v = go.Get(gk[w]);
            if (v.IsUndefined() || v.IsNull()) continue;
            gr[w] = get_f32(env, v, gk[w], a.r * a.F);
            *gp[w] = gr[w].data();
        }
    }
    const bool bf16 = a.dh && o.Has("bf16") && o.Get("bf16").ToBoolean();
    std::vector<uint16_t> dg16(bf16 ? a.F * a.T : 0), du16(dg16.size());
    if (bf16) {
        a.dg_bf16 = dg16.data();
        a.du_bf16 = du16.data();
    }
    guarded(env, [&]() {
#ifdef SQLR1_WITH_CUDA
        if (cuda_device_count() == 0) fail("ERR_NO_CUDA", "no CUDA device is visible");
        executor_for("cuda")->run_sync([&]() { swiglu_cuda_from_host(a); });
#else
        fail("ERR_NO_CUDA", "this binary was built without CUDA");
#endif
        return 0;
    });
    Napi::Object out = Napi::Object::New(env);  // in place: g, u, dh now hold h, dg, du ([ld, T] for h and dg)
    out.Set("h", to_js(env, g));
    if (a.dh && !(a.dbg || a.dbu || a.dad)) {
        out.Set("dg", to_js(env, u));
        out.Set("du", to_js(env, dh));
    }
    if (a.dbg || a.dbu || a.dad) {
        Napi::Object go = Napi::Object::New(env);
        const char * gk[3] = { "bg", "bu", "ad" };
        for (int w = 0; w < 3; w++) if (!gr[w].empty()) go.Set(gk[w], to_js(env, gr[w]));
        out.Set("grads", go);
    }
    if (bf16) {
        out.Set("dgBf16", to_js(env, dg16));
        out.Set("duBf16", to_js(env, du16));
    }
    return out;
}

} // namespace

Napi::Value test_hooks(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("attentionCuda", Napi::Function::New(env, AttentionCuda));
    o.Set("attentionMaskCuda", Napi::Function::New(env, AttentionMaskCuda));
    o.Set("swigluCuda", Napi::Function::New(env, SwigluCuda));
    o.Set("dequantQ4_0Cuda", Napi::Function::New(env, DequantQ4_0Cuda));
    return o;
}

} // namespace sqlr1
