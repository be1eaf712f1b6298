// The N-API surface: Model, Context and a few functions. Arguments arrive already validated and defaulted by
// lib/native/ (TypeScript); here they are type-checked once more so that no input can reach a ggml assert.
// Everything that touches a device runs on that device's executor (executor.h), in submission order: heavy
// calls return Promises (each job holds the objects it works on and a reference on its owner); synchronous
// calls that read or write device state wait for the queue (run_sync).
#include "context.h"
#include "lora.h"
#include "napi_helpers.h"
#include "ops.h"
#include "synth.h"
#include "tensor_graph.h"
#include "test_hooks.h"
#include "train.h"
#include "train_napi.h"
#include "nccl_napi.h"

#include <napi.h>
#ifdef SQLR1_WITH_CUDA
#include "ggml-cuda.h"
#endif

#include <cmath>
#include <functional>

namespace sqlr1 {

namespace {

// ---------------------------------------------------------------------------------------------------------
class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
public:
    static Napi::FunctionReference ctor;
    std::shared_ptr<model> m;

    static Napi::Function Init(Napi::Env env) {
        Napi::Function f = DefineClass(env, "Model", {
            InstanceMethod("info", &ModelWrap::Info),
            InstanceMethod("weightDigests", &ModelWrap::WeightDigests),
            InstanceMethod("dispose", &ModelWrap::Dispose),
        });
        ctor = Napi::Persistent(f);
        return f;
    }
    ModelWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<ModelWrap>(info) {}

    std::shared_ptr<model> get(Napi::Env env) const {
        if (!m) throw make_error(env, "ERR_DISPOSED", "the model was disposed");
        return m;
    }

    Napi::Value Info(const Napi::CallbackInfo & info) {
        auto mm = get(info.Env());
        const hparams & hp = mm->hp;
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("arch", hp.arch_name);
        o.Set("nVocab", (double) hp.n_vocab);
        o.Set("nCtxTrain", (double) hp.n_ctx_train);
        o.Set("nEmbd", (double) hp.n_embd);
        o.Set("nLayer", (double) hp.n_layer);
        o.Set("nFf", (double) hp.n_ff);
        o.Set("nHead", (double) hp.n_head);
        o.Set("nHeadKv", (double) hp.n_head_kv);
        o.Set("headDim", (double) hp.head_dim);
        o.Set("ropeFreqBase", hp.rope_freq_base);
        o.Set("device", mm->backends->device);
        o.Set("weightBytes", (double) mm->weight_bytes);
        o.Set("tiedOutput", mm->output == mm->tok_embd);
        o.Set("weightType", ggml_type_name(mm->layers[0].wq->type));
        int64_t qkv = 0, gate_up = 0;
        for (const layer_weights & L : mm->layers) { qkv += L.wqkv != nullptr; gate_up += L.ffn_gate_up != nullptr; }
        Napi::Object fused = Napi::Object::New(info.Env());
        fused.Set("qkv", (double) qkv);
        fused.Set("gateUp", (double) gate_up);
        o.Set("fusedLayers", fused);
        return o;
    }
    // { name: 64-bit FNV-1a of the tensor's bytes as hex } for every weight, read back from the device: lets a
    // caller check that training left the frozen base bit-identical.
    Napi::Value WeightDigests(const Napi::CallbackInfo & info) {
        auto mm = get(info.Env());
        std::vector<std::pair<std::string, std::string>> digests = run_sync(info.Env(), *mm->backends->exec, [&]() {
            std::vector<std::pair<std::string, std::string>> out;
            std::vector<uint8_t> buf;
            for (ggml_tensor * t : mm->weights) {
                buf.resize(ggml_nbytes(t));
                ggml_backend_tensor_get(t, buf.data(), 0, buf.size());
                uint64_t h = 0xcbf29ce484222325ULL;
                for (uint8_t c : buf) h = (h ^ c) * 0x100000001b3ULL;
                char hex[17];
                snprintf(hex, sizeof(hex), "%016llx", (unsigned long long) h);
                out.emplace_back(ggml_get_name(t), hex);
            }
            return out;
        });
        Napi::Object o = Napi::Object::New(info.Env());
        for (auto & [name, hex] : digests) o.Set(name, hex);
        return o;
    }
    Napi::Value Dispose(const Napi::CallbackInfo & info) {
        m.reset();  // contexts hold their own reference; memory goes with the last one
        return info.Env().Undefined();
    }
};
Napi::FunctionReference ModelWrap::ctor;

Napi::Value LoadModel(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) bad_arg(env, "loadModel(path, options): path must be a string");
    const std::string path = info[0].As<Napi::String>().Utf8Value();
    Napi::Object o = info.Length() > 1 && info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
    const std::string device = get_string(o, "device", "cpu");
    const int threads = (int) get_number(o, "threads", 0);
    auto ex = guarded(env, [&]() { return executor_for(device); });
    return submit<std::shared_ptr<model>>(env, ex,
        [=]() { return std::shared_ptr<model>(model_load(path, backend_set_init(device, threads))); },
        [](Napi::Env env, std::shared_ptr<model> & m) -> Napi::Value {
            Napi::Object obj = ModelWrap::ctor.New({});
            ModelWrap::Unwrap(obj)->m = m;
            return obj;
        });
}

// ---------------------------------------------------------------------------------------------------------
class LoraWrap : public Napi::ObjectWrap<LoraWrap> {
public:
    static Napi::FunctionReference ctor;
    std::shared_ptr<lora_adapter> a;

    static Napi::Function Init(Napi::Env env) {
        Napi::Function f = DefineClass(env, "LoraAdapter", {
            InstanceMethod("info", &LoraWrap::Info),
            InstanceMethod("setEnabled", &LoraWrap::SetEnabled),
            InstanceMethod("tensorNames", &LoraWrap::TensorNames),
            InstanceMethod("getTensor", &LoraWrap::GetTensor),
            InstanceMethod("setTensor", &LoraWrap::SetTensor),
            InstanceMethod("save", &LoraWrap::Save),
            InstanceMethod("params", &LoraWrap::Params),
            InstanceMethod("dispose", &LoraWrap::Dispose),
        });
        ctor = Napi::Persistent(f);
        return f;
    }
    LoraWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<LoraWrap>(info) {}

    std::shared_ptr<lora_adapter> get(Napi::Env env) const {
        if (!a) throw make_error(env, "ERR_DISPOSED", "the adapter was disposed");
        return a;
    }
    static Napi::Object wrap(std::shared_ptr<lora_adapter> ad) {
        Napi::Object obj = ctor.New({});
        Unwrap(obj)->a = std::move(ad);
        return obj;
    }
    ggml_tensor * tensor_arg(const Napi::CallbackInfo & info) {
        auto ad = get(info.Env());
        if (info.Length() < 1 || !info[0].IsString()) bad_arg(info.Env(), "tensor name must be a string");
        const std::string name = info[0].As<Napi::String>().Utf8Value();
        ggml_tensor * t = ggml_get_tensor(ad->ctx, name.c_str());
        if (!t) bad_arg(info.Env(), "the adapter has no tensor '" + name + "'");
        return t;
    }
    Napi::Value Info(const Napi::CallbackInfo & info) {
        auto ad = get(info.Env());
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("rank", (double) ad->rank);
        o.Set("alpha", ad->alpha);
        o.Set("enabled", ad->enabled);
        Napi::Array targets = Napi::Array::New(info.Env());
        for (int t = 0, j = 0; t < LORA_N_TARGETS; t++) if (ad->targets & (1u << t)) targets.Set(j++, LORA_TARGET_NAME[t]);
        o.Set("targets", targets);
        o.Set("bytes", (double) ggml_backend_buffer_get_size(ad->buf));
        return o;
    }
    Napi::Value SetEnabled(const Napi::CallbackInfo & info) {
        auto ad = get(info.Env());
        const bool on = info.Length() > 0 && info[0].ToBoolean();
        run_sync(info.Env(), *ad->m->backends->exec, [&]() { ad->enabled = on; });
        return info.Env().Undefined();
    }
    Napi::Value TensorNames(const Napi::CallbackInfo & info) {
        auto ts = get(info.Env())->tensors();
        Napi::Array out = Napi::Array::New(info.Env(), ts.size());
        for (size_t i = 0; i < ts.size(); i++) out.Set((uint32_t) i, ggml_get_name(ts[i]));
        return out;
    }
    Napi::Value GetTensor(const Napi::CallbackInfo & info) {
        ggml_tensor * t = tensor_arg(info);
        Napi::Float32Array out = Napi::Float32Array::New(info.Env(), ggml_nelements(t));
        float * dst = out.Data();
        run_sync(info.Env(), *a->m->backends->exec, [&]() { ggml_backend_tensor_get(t, dst, 0, ggml_nbytes(t)); });
        return out;
    }
    Napi::Value SetTensor(const Napi::CallbackInfo & info) {
        ggml_tensor * t = tensor_arg(info);
        if (info.Length() < 2 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
            bad_arg(info.Env(), "data must be a Float32Array");
        Napi::Float32Array d = info[1].As<Napi::Float32Array>();
        if ((int64_t) d.ElementLength() != ggml_nelements(t))
            bad_arg(info.Env(), std::string("tensor '") + ggml_get_name(t) + "' has " + std::to_string(ggml_nelements(t)) + " values, got " + std::to_string(d.ElementLength()));
        const float * src = d.Data();
        run_sync(info.Env(), *a->m->backends->exec, [&]() {
            ggml_backend_tensor_set(t, src, 0, ggml_nbytes(t));
            a->version++;
        });
        return info.Env().Undefined();
    }
    Napi::Value Save(const Napi::CallbackInfo & info) {
        auto ad = get(info.Env());
        if (info.Length() < 1 || !info[0].IsString()) bad_arg(info.Env(), "save(path): path must be a string");
        const std::string path = info[0].As<Napi::String>().Utf8Value();
        return submit<int>(info.Env(), ad->m->backends->exec, [ad, path]() { lora_adapter_save(*ad, path); return 0; },
            [](Napi::Env env, int &) -> Napi::Value { return env.Undefined(); }, info.This());
    }
    // The adapter's tensors as a ParamStore (gradients, AdamW moments); the same store on every call.
    Napi::Value Params(const Napi::CallbackInfo & info) {
        auto ad = get(info.Env());
        return param_store_to_js(info.Env(), run_sync(info.Env(), *ad->m->backends->exec, [&]() { return lora_adapter_params(ad); }));
    }
    Napi::Value Dispose(const Napi::CallbackInfo & info) {
        a.reset();
        return info.Env().Undefined();
    }
};
Napi::FunctionReference LoraWrap::ctor;

std::shared_ptr<model> model_arg(const Napi::CallbackInfo & info) {
    if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(ModelWrap::ctor.Value()))
        bad_arg(info.Env(), "the first argument must be a Model");
    return ModelWrap::Unwrap(info[0].As<Napi::Object>())->get(info.Env());
}

// createLora(model, { rank, alpha, targets: string[], seed })
Napi::Value CreateLora(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto m = model_arg(info);
    Napi::Object o = need_object(info, 1, "options");
    const int64_t rank = (int64_t) get_number(o, "rank", 16);
    const float alpha = (float) get_number(o, "alpha", 32);
    const uint64_t seed = (uint64_t) get_number(o, "seed", 0);
    uint32_t targets = 0;
    Napi::Value tv = o.Get("targets");
    if (!tv.IsArray()) bad_arg(env, "targets must be an array of names (q, k, v, o, gate, up, down)");
    Napi::Array ta = tv.As<Napi::Array>();
    for (uint32_t i = 0; i < ta.Length(); i++) {
        const std::string name = ta.Get(i).ToString().Utf8Value();
        int found = -1;
        for (int t = 0; t < LORA_N_TARGETS; t++) if (name == LORA_TARGET_NAME[t]) found = t;
        if (found < 0) bad_arg(env, "unknown LoRA target '" + name + "'; expected q, k, v, o, gate, up or down");
        targets |= 1u << found;
    }
    return LoraWrap::wrap(run_sync(env, *m->backends->exec, [&]() { return lora_adapter_init(m, rank, alpha, targets, seed); }));
}

Napi::Value LoadLora(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto m = model_arg(info);
    if (info.Length() < 2 || !info[1].IsString()) bad_arg(env, "loadLora(model, path): path must be a string");
    const std::string path = info[1].As<Napi::String>().Utf8Value();
    return submit<std::shared_ptr<lora_adapter>>(env, m->backends->exec, [m, path]() { return lora_adapter_load(m, path); },
        [](Napi::Env, std::shared_ptr<lora_adapter> & a) -> Napi::Value { return LoraWrap::wrap(a); });
}

// createTrainer(model, lora, { compute: 'f32' | 'bf16', maxTokens, sync?, profile?: 0 | 1 | 2, fusedKernels? })
Napi::Value CreateTrainer(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto m = model_arg(info);
    if (info.Length() < 2 || !info[1].IsObject() || !info[1].As<Napi::Object>().InstanceOf(LoraWrap::ctor.Value()))
        bad_arg(env, "the second argument must be a LoraAdapter");
    auto ad = LoraWrap::Unwrap(info[1].As<Napi::Object>())->get(env);
    Napi::Object o = need_object(info, 2, "options");
    const std::string compute = get_string(o, "compute", "f32");
    if (compute != "f32" && compute != "bf16") bad_arg(env, "compute must be 'f32' or 'bf16', got '" + compute + "'");
    const double max_tokens = get_number(o, "maxTokens", 16384);
    if (!(max_tokens >= 1 && max_tokens <= (1 << 20) && std::floor(max_tokens) == max_tokens)) bad_arg(env, "maxTokens must be an integer in [1, 1048576]");
    trainer_options to;
    to.compute = compute == "bf16" ? GGML_TYPE_BF16 : GGML_TYPE_F32;
    to.max_tokens = (int64_t) max_tokens;
    to.sync = o.Get("sync").ToBoolean();
    const double profile = get_number(o, "profile", 0);
    if (profile != 0 && profile != 1 && profile != 2) bad_arg(env, "profile must be 0, 1 or 2");
    to.profile = (int) profile;
    to.fused_kernels = o.Get("fusedKernels").IsUndefined() ? true : o.Get("fusedKernels").ToBoolean();
    return submit<std::shared_ptr<trainer>>(env, m->backends->exec,
        [m, ad, to]() { return std::shared_ptr<trainer>(trainer_init(m, ad, to)); },
        [](Napi::Env env, std::shared_ptr<trainer> & t) -> Napi::Value { return trainer_to_js(env, t); });
}

// ---------------------------------------------------------------------------------------------------------
class ContextWrap : public Napi::ObjectWrap<ContextWrap> {
public:
    std::shared_ptr<context> c;

    static Napi::Function Init(Napi::Env env) {
        return DefineClass(env, "Context", {
            InstanceMethod("eval", &ContextWrap::Eval),
            InstanceMethod("decode", &ContextWrap::Decode),
            InstanceMethod("seqCopy", &ContextWrap::SeqCopy),
            InstanceMethod("seqClear", &ContextWrap::SeqClear),
            InstanceMethod("seqLength", &ContextWrap::SeqLength),
            InstanceMethod("memory", &ContextWrap::Memory),
            InstanceMethod("setLora", &ContextWrap::SetLora),
            InstanceMethod("dispose", &ContextWrap::Dispose),
        });
    }

    // new Context(model, { nSeq, nCtx, nBatch, packAdapter })
    ContextWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<ContextWrap>(info) {
        Napi::Env env = info.Env();
        if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(ModelWrap::ctor.Value()))
            bad_arg(env, "new Context(model, options): model must be a Model");
        auto m = ModelWrap::Unwrap(info[0].As<Napi::Object>())->get(env);
        Napi::Object o = need_object(info, 1, "options");
        const int64_t n_seq = (int64_t) get_number(o, "nSeq", 1);
        const int64_t n_ctx = (int64_t) get_number(o, "nCtx", 2048);
        const int64_t n_batch = (int64_t) get_number(o, "nBatch", 512);
        const bool pack = o.Get("packAdapter").IsUndefined() ? true : o.Get("packAdapter").ToBoolean();
        c = run_sync(env, *m->backends->exec, [&]() { return std::shared_ptr<context>(context_init(m, n_seq, n_ctx, n_batch, pack)); });
    }

    context & get(Napi::Env env) {
        if (!c) throw make_error(env, "ERR_DISPOSED", "the context was disposed");
        return *c;
    }
    executor & exec() { return *c->m->backends->exec; }

    // eval({ streams, tokens, nt, allLogits, wantLogits, sample: { temperature, topK, topP, seeds } })
    Napi::Value Eval(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        context & cx = get(env);
        Napi::Object o = need_object(info, 0, "request");
        eval_request req;
        req.streams = get_i32_array(o, "streams");
        req.tokens = get_i32_array(o, "tokens");
        req.nt = (int64_t) get_number(o, "nt", 1);
        req.all_logits = o.Get("allLogits").ToBoolean();
        req.want_logits = o.Get("wantLogits").ToBoolean();
        if (!o.Get("targets").IsUndefined()) {
            req.targets = get_i32_array(o, "targets");
            req.lp_temperature = (float) get_number(o, "temperature", 1.0);
        }
        if (o.Get("sample").IsObject()) {
            Napi::Object s = o.Get("sample").As<Napi::Object>();
            req.sample = true;
            req.sp.temperature = (float) get_number(s, "temperature", 1.0);
            req.sp.top_k = (int) get_number(s, "topK", 0);
            req.sp.top_p = (float) get_number(s, "topP", 1.0);
            Napi::Value sv = s.Get("seeds");
            if (!sv.IsTypedArray() || sv.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array)
                bad_arg(env, "sample.seeds must be a BigUint64Array");
            Napi::TypedArrayOf<uint64_t> seeds = sv.As<Napi::TypedArrayOf<uint64_t>>();
            req.seeds.assign(seeds.Data(), seeds.Data() + seeds.ElementLength());
        }
        // Validated on the executor (eval does): the sequences' lengths depend on the calls queued before it.
        std::shared_ptr<context> keep = c;
        const int64_t n_vocab = cx.m->hp.n_vocab;
        return submit<eval_result>(env, cx.m->backends->exec,
            [keep, req]() { return keep->eval(req); },
            [n_vocab](Napi::Env env, eval_result & r) -> Napi::Value {
                Napi::Object out = Napi::Object::New(env);
                if (!r.logits.empty()) {
                    Napi::Float32Array a = Napi::Float32Array::New(env, r.logits.size());
                    std::copy(r.logits.begin(), r.logits.end(), a.Data());
                    out.Set("logits", a);
                    out.Set("nVocab", (double) n_vocab);
                }
                if (!r.target_logprobs.empty()) {
                    Napi::Float32Array a = Napi::Float32Array::New(env, r.target_logprobs.size());
                    std::copy(r.target_logprobs.begin(), r.target_logprobs.end(), a.Data());
                    out.Set("targetLogprobs", a);
                }
                if (!r.tokens.empty()) {
                    Napi::Int32Array t = Napi::Int32Array::New(env, r.tokens.size());
                    std::copy(r.tokens.begin(), r.tokens.end(), t.Data());
                    Napi::Float32Array lp = Napi::Float32Array::New(env, r.logprobs.size());
                    std::copy(r.logprobs.begin(), r.logprobs.end(), lp.Data());
                    out.Set("tokens", t);
                    out.Set("logprobs", lp);
                }
                return out;
            },
            info.This());
    }

    // decode({ streams, tokens, seeds, budget, eog, steps, temperature, topK, topP })
    Napi::Value Decode(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        context & cx = get(env);
        Napi::Object o = need_object(info, 0, "request");
        decode_request req;
        req.streams = get_i32_array(o, "streams");
        req.tokens = get_i32_array(o, "tokens");
        req.budget = get_i32_array(o, "budget");
        req.eog = get_i32_array(o, "eog");
        req.n_steps = (int32_t) get_number(o, "steps", 1);
        req.sp.temperature = (float) get_number(o, "temperature", 1.0);
        req.sp.top_k = (int) get_number(o, "topK", 0);
        req.sp.top_p = (float) get_number(o, "topP", 1.0);
        Napi::Value sv = o.Get("seeds");
        if (!sv.IsTypedArray() || sv.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array)
            bad_arg(env, "seeds must be a BigUint64Array");
        Napi::TypedArrayOf<uint64_t> seeds = sv.As<Napi::TypedArrayOf<uint64_t>>();
        req.seeds.assign(seeds.Data(), seeds.Data() + seeds.ElementLength());
        // The whole request is checked on the executor before the first step (the sequences' lengths depend on
        // the calls queued before it), so that bad input fails before anything runs.
        std::shared_ptr<context> keep = c;
        return submit<decode_result>(env, cx.m->backends->exec,
            [keep, req]() {
                context & cx = *keep;
                eval_request first;
                first.streams = req.streams; first.tokens = req.tokens; first.seeds = req.seeds; first.sp = req.sp; first.sample = true;
                if (req.budget.size() != req.streams.size()) fail("ERR_INVALID_ARG", "budget needs one entry per sequence");
                if (req.n_steps < 1 || req.n_steps > 1 << 20) fail("ERR_INVALID_ARG", "steps must be in [1, 2^20], got %d", req.n_steps);
                cx.validate(first);
                for (size_t i = 0; i < req.streams.size(); i++) {
                    const int64_t room = cx.kv.capacity() - cx.kv.len[req.streams[i]];
                    if (std::min<int64_t>(req.budget[i], req.n_steps) > room)
                        fail("ERR_CONTEXT_OVERFLOW", "sequence %d has room for %lld more tokens, %d requested",
                             req.streams[i], (long long) room, std::min(req.budget[i], req.n_steps));
                }
                return cx.decode(req);
            },
            [](Napi::Env env, decode_result & r) -> Napi::Value {
                Napi::Object out = Napi::Object::New(env);
                Napi::Int32Array t = Napi::Int32Array::New(env, r.tokens.size());
                std::copy(r.tokens.begin(), r.tokens.end(), t.Data());
                Napi::Float32Array lp = Napi::Float32Array::New(env, r.logprobs.size());
                std::copy(r.logprobs.begin(), r.logprobs.end(), lp.Data());
                out.Set("steps", (double) r.steps);
                out.Set("tokens", t);
                out.Set("logprobs", lp);
                return out;
            },
            info.This());
    }

    Napi::Value SeqCopy(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        context & cx = get(env);
        if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsTypedArray()) bad_arg(env, "seqCopy(src, dsts: Int32Array)");
        const int32_t src = info[0].As<Napi::Number>().Int32Value();
        Napi::Int32Array d = info[1].As<Napi::Int32Array>();
        std::vector<int32_t> dsts(d.Data(), d.Data() + d.ElementLength());
        run_sync(env, exec(), [&]() { cx.seq_copy(src, dsts); });
        return env.Undefined();
    }
    int32_t seq_arg(const Napi::CallbackInfo & info, context & cx) {
        if (info.Length() < 1 || !info[0].IsNumber()) bad_arg(info.Env(), "sequence id must be a number");
        const int32_t s = info[0].As<Napi::Number>().Int32Value();
        if (s < 0 || s >= cx.kv.n_seq) bad_arg(info.Env(), "sequence id " + std::to_string(s) + " out of range [0, " + std::to_string(cx.kv.n_seq) + ")");
        return s;
    }
    Napi::Value SeqClear(const Napi::CallbackInfo & info) {
        context & cx = get(info.Env());
        const int32_t s = seq_arg(info, cx);
        run_sync(info.Env(), exec(), [&]() { cx.seq_clear(s); });
        return info.Env().Undefined();
    }
    Napi::Value SeqLength(const Napi::CallbackInfo & info) {
        context & cx = get(info.Env());
        const int32_t s = seq_arg(info, cx);
        return Napi::Number::New(info.Env(), (double) run_sync(info.Env(), exec(), [&]() { return cx.kv.len[s]; }));
    }
    Napi::Value Memory(const Napi::CallbackInfo & info) {
        context & cx = get(info.Env());
        const double compute = (double) run_sync(info.Env(), exec(), [&]() { return ggml_backend_sched_get_buffer_size(cx.sched, cx.m->backends->primary); });
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("kvBytes", (double) ggml_backend_buffer_get_size(cx.kv.buf));
        o.Set("computeBytes", compute);
        o.Set("weightBytes", (double) cx.m->weight_bytes);
        o.Set("capacity", (double) cx.kv.capacity());
        o.Set("nSeq", (double) cx.kv.n_seq);
        return o;
    }
    // setLora(adapter | null): the adapter must belong to this context's model.
    Napi::Value SetLora(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        context & cx = get(env);
        std::shared_ptr<lora_adapter> ad;
        if (info.Length() >= 1 && !info[0].IsNull() && !info[0].IsUndefined()) {
            if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(LoraWrap::ctor.Value())) bad_arg(env, "setLora expects a LoraAdapter or null");
            ad = LoraWrap::Unwrap(info[0].As<Napi::Object>())->get(env);
            if (ad->m != cx.m) bad_arg(env, "the adapter was made for another model");
        }
        run_sync(env, exec(), [&]() { cx.set_lora(ad); });  // passes queued before keep the adapter they were given
        return env.Undefined();
    }
    // Queued calls keep the context alive until they have run; later calls get ERR_DISPOSED.
    Napi::Value Dispose(const Napi::CallbackInfo & info) {
        c.reset();
        return info.Env().Undefined();
    }
};

// ---------------------------------------------------------------------------------------------------------
Napi::Value MakeModel(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "options");
    synth_options so;
    so.shape = get_string(o, "shape", "tiny");
    so.type = get_string(o, "type", "f32");
    so.out = get_string(o, "out", "", true);
    so.vocab = get_string(o, "vocab", "");
    so.seed = (uint64_t) get_number(o, "seed", 42);
    so.n_threads = (int) get_number(o, "threads", 0);
    // Validate the names now so that a typo fails at once rather than in the worker.
    guarded(env, [&]() { synth_shape_get(so.shape); return 0; });
    return queue<double>(env, [so]() { return (double) synth_model_write(so); },
        [](Napi::Env env, double & n) -> Napi::Value { return Napi::Number::New(env, n); });
}

// sampleRows({ device, logits, nVocab, seeds, positions, temperature, topK, topP }): the sampler alone, on given
// logits, so the tests can compare the CUDA kernel with the CPU loop and check draw frequencies.
Napi::Value SampleRows(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "request");
    const std::string device = get_string(o, "device", "cpu");
    Napi::Value lv = o.Get("logits");
    if (!lv.IsTypedArray() || lv.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) bad_arg(env, "logits must be a Float32Array");
    Napi::Float32Array logits = lv.As<Napi::Float32Array>();
    const int64_t V = (int64_t) get_number(o, "nVocab", 0);
    if (V < 1 || logits.ElementLength() % (size_t) V != 0) bad_arg(env, "logits must hold whole rows of nVocab values");
    const int64_t n = (int64_t) (logits.ElementLength() / V);
    auto u64 = [&](const char * key) {
        Napi::Value v = o.Get(key);
        if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) bad_arg(env, std::string(key) + " must be a BigUint64Array");
        Napi::TypedArrayOf<uint64_t> a = v.As<Napi::TypedArrayOf<uint64_t>>();
        if ((int64_t) a.ElementLength() != n) bad_arg(env, std::string(key) + " needs one entry per row");
        return std::vector<uint64_t>(a.Data(), a.Data() + a.ElementLength());
    };
    const auto seeds = u64("seeds"), positions = u64("positions");
    sampling_params sp;
    sp.temperature = (float) get_number(o, "temperature", 1.0);
    sp.top_k = (int) get_number(o, "topK", 0);
    sp.top_p = (float) get_number(o, "topP", 1.0);
    std::vector<sample_row_params> rows(n);
    for (int64_t r = 0; r < n; r++) rows[r] = { seeds[r], positions[r] };
    std::vector<int32_t> tok(n);
    std::vector<float> lp(n);
    guarded(env, [&]() {
        if (device == "cuda") {
#ifdef SQLR1_WITH_CUDA
            if (cuda_device_count() == 0) fail("ERR_NO_CUDA", "no CUDA device is visible");
            if (sp.top_k > 0 || sp.top_p < 1.0f) fail("ERR_INVALID_ARG", "the CUDA sampler draws without top-k / top-p");
            executor_for("cuda")->run_sync([&]() { sample_rows_cuda_from_host(logits.Data(), V, n, rows.data(), sp.temperature, tok.data(), lp.data()); });
#else
            fail("ERR_NO_CUDA", "this binary was built without CUDA");
#endif
        } else {
            sample_rows_cpu(logits.Data(), V, V, n, rows.data(), sp, tok.data(), lp.data());
        }
        return 0;
    });
    Napi::Object out = Napi::Object::New(env);
    Napi::Int32Array t = Napi::Int32Array::New(env, n);
    std::copy(tok.begin(), tok.end(), t.Data());
    Napi::Float32Array l = Napi::Float32Array::New(env, n);
    std::copy(lp.begin(), lp.end(), l.Data());
    out.Set("tokens", t);
    out.Set("logprobs", l);
    return out;
}

Napi::Value BuildInfo(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
#ifdef SQLR1_WITH_CUDA
    o.Set("cuda", true);
#else
    o.Set("cuda", false);
#endif
    o.Set("cudaArchitectures", cuda_architectures());
    o.Set("ggmlVersion", ggml_version());
    o.Set("ggmlCommit", ggml_commit());
    return o;
}

Napi::Value CudaDevices(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const int n = cuda_device_count();
    Napi::Array a = Napi::Array::New(env, n);
    for (int i = 0; i < n; i++) {
        Napi::Object d = Napi::Object::New(env);
        d.Set("name", cuda_device_name(i));
        d.Set("computeCapability", cuda_compute_capability(i));
#ifdef SQLR1_WITH_CUDA
        size_t free = 0, total = 0;
        ggml_backend_cuda_get_device_memory(i, &free, &total);
        d.Set("freeBytes", (double) free);
        d.Set("totalBytes", (double) total);
#endif
        a.Set(i, d);
    }
    return a;
}

Napi::Value RunOp(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "op request");
    op_request req;
    req.op = get_string(o, "op", "", true);
    req.device = get_string(o, "device", "cpu");
    Napi::Value ins = o.Get("inputs");
    if (!ins.IsArray()) bad_arg(env, "inputs must be an array");
    Napi::Array arr = ins.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
        Napi::Value v = arr.Get(i);
        if (!v.IsObject()) bad_arg(env, "each input must be { data: Float32Array, shape: number[], type?: string }");
        Napi::Object io = v.As<Napi::Object>();
        op_input in;
        Napi::Value dv = io.Get("data");
        if (!dv.IsTypedArray()) bad_arg(env, "input data must be a Float32Array or Int32Array");
        Napi::TypedArray ta = dv.As<Napi::TypedArray>();
        if (ta.TypedArrayType() == napi_float32_array) {
            Napi::Float32Array f = dv.As<Napi::Float32Array>();
            in.f32.assign(f.Data(), f.Data() + f.ElementLength());
        } else if (ta.TypedArrayType() == napi_int32_array) {
            Napi::Int32Array f = dv.As<Napi::Int32Array>();
            in.i32.assign(f.Data(), f.Data() + f.ElementLength());
        } else {
            bad_arg(env, "input data must be a Float32Array or Int32Array");
        }
        Napi::Value sv = io.Get("shape");
        if (!sv.IsArray()) bad_arg(env, "input shape must be an array of numbers");
        Napi::Array sa = sv.As<Napi::Array>();
        for (uint32_t k = 0; k < sa.Length(); k++) in.shape.push_back((int64_t) sa.Get(k).As<Napi::Number>().Int64Value());
        in.type = get_string(io, "type", in.i32.empty() ? "f32" : "i32");
        req.inputs.push_back(std::move(in));
    }
    Napi::Value pv = o.Get("params");
    if (pv.IsArray()) {
        Napi::Array pa = pv.As<Napi::Array>();
        for (uint32_t k = 0; k < pa.Length(); k++) req.params.push_back(pa.Get(k).As<Napi::Number>().DoubleValue());
    }
    auto ex = guarded(env, [&]() { return executor_for(req.device); });
    return submit<op_result>(env, ex, [req]() { return op_run(req); },
        [](Napi::Env env, op_result & r) -> Napi::Value {
            Napi::Object out = Napi::Object::New(env);
            Napi::Float32Array a = Napi::Float32Array::New(env, r.data.size());
            std::copy(r.data.begin(), r.data.end(), a.Data());
            Napi::Array shape = Napi::Array::New(env, r.shape.size());
            for (size_t i = 0; i < r.shape.size(); i++) shape.Set((uint32_t) i, (double) r.shape[i]);
            out.Set("data", a);
            out.Set("shape", shape);
            return out;
        });
}

} // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
    log_init();
    exports.Set("Model", ModelWrap::Init(env));
    exports.Set("Context", ContextWrap::Init(env));
    exports.Set("LoraAdapter", LoraWrap::Init(env));
    exports.Set("createLora", Napi::Function::New(env, CreateLora));
    exports.Set("loadLora", Napi::Function::New(env, LoadLora));
    exports.Set("createTrainer", Napi::Function::New(env, CreateTrainer));
    exports.Set("loadModel", Napi::Function::New(env, LoadModel));
    exports.Set("makeModel", Napi::Function::New(env, MakeModel));
    exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
    exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
    exports.Set("runOp", Napi::Function::New(env, RunOp));
    exports.Set("sampleRows", Napi::Function::New(env, SampleRows));
    exports.Set("testHooks", Napi::Function::New(env, test_hooks));
    tensor_graph_register(env, exports);
    train_register(env, exports);
    nccl_register(env, exports);
    return exports;
}

} // namespace sqlr1

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return sqlr1::Init(env, exports); }

NODE_API_MODULE(sqlr1, InitAddon)
