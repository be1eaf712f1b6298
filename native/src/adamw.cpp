#include "adamw.h"

#include "ggml-alloc.h"
#include "gguf.h"

#ifdef SQLR1_WITH_CUDA
#include "multi_tensor.h"
#endif

#include <cmath>
#include <cstdio>
#include <cstring>
#include <unistd.h>

namespace sqlr1 {

int64_t param_entry::n_elements() const { return ggml_nelements(value); }

param_entry::~param_entry() {
    if (buf) ggml_backend_buffer_free(buf);
    if (ctx) ggml_free(ctx);
}

void param_flag_guard::mark(const param_entry & e) {
    if (!e.external || (e.value->flags & GGML_TENSOR_FLAG_PARAM)) return;
    ggml_set_param(e.value);
    flagged.push_back(e.value);
}

param_flag_guard::~param_flag_guard() {
    for (ggml_tensor * x : flagged) x->flags &= ~GGML_TENSOR_FLAG_PARAM;
}

param_store::~param_store() {
    params.clear();  // before the backends go
    if (buf_opt) ggml_backend_buffer_free(buf_opt);
    if (ctx_opt) ggml_free(ctx_opt);
}

std::string param_shape_str(const std::vector<int64_t> & shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

int64_t param_shape_check(const std::vector<int64_t> & shape, const char * what) {
    if (shape.size() > (size_t) PARAM_MAX_DIMS)
        fail("ERR_INVALID_ARG", "%s: a shape has at most %d dimensions, got %s", what, PARAM_MAX_DIMS, param_shape_str(shape).c_str());
    int64_t n = 1;
    for (int64_t d : shape) {
        if (d < 1 || d > PARAM_MAX_ELEMENTS)
            fail("ERR_INVALID_ARG", "%s: dimensions must be integers >= 1, got %s", what, param_shape_str(shape).c_str());
        n *= d;
        if (n > PARAM_MAX_ELEMENTS)
            fail("ERR_INVALID_ARG", "%s: shape %s has more than 2^31 elements", what, param_shape_str(shape).c_str());
    }
    return n;
}

std::shared_ptr<param_store> param_store_init(std::shared_ptr<backend_set> backends) {
    auto s = std::make_shared<param_store>();
    s->backends = std::move(backends);
    ggml_init_params ip = { ggml_tensor_overhead() * 2, nullptr, true };
    s->ctx_opt = ggml_init(ip);
    if (!s->ctx_opt) fail("ERR_OUT_OF_MEMORY", "could not create the parameter store's context");
    s->adamw_params = ggml_new_tensor_1d(s->ctx_opt, GGML_TYPE_F32, 7);
    ggml_set_name(s->adamw_params, "adamw_params");
    s->buf_opt = ggml_backend_alloc_ctx_tensors(s->ctx_opt, s->backends->primary);
    if (!s->buf_opt) fail("ERR_OUT_OF_MEMORY", "could not allocate the AdamW parameters on %s", s->backends->device.c_str());
    return s;
}

std::shared_ptr<param_store> param_store_init(const std::string & device, int n_threads) {
    return param_store_init(backend_set_init(device, n_threads));
}

// Creates the entry's tensors: all four when `value` is null, else the gradient and moments of `value`.
static void param_entry_make(param_store & s, const std::string & name, const std::vector<int64_t> & shape, ggml_tensor * value) {
    if (name.empty() || name.size() >= GGML_MAX_NAME - 8)
        fail("ERR_INVALID_ARG", "ParamStore.add: a name has 1 to %d characters, got %zu", GGML_MAX_NAME - 9, name.size());
    if (s.index.count(name)) fail("ERR_INVALID_ARG", "ParamStore.add: a parameter named '%s' already exists", name.c_str());
    const int64_t n = param_shape_check(shape, "ParamStore.add");
    auto e = std::make_unique<param_entry>();
    e->name = name;
    e->shape = shape;
    ggml_init_params ip = { ggml_tensor_overhead() * 4, nullptr, true };
    e->ctx = ggml_init(ip);
    if (!e->ctx) fail("ERR_OUT_OF_MEMORY", "could not create a context for parameter '%s'", name.c_str());
    int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t d = 0; d < shape.size(); d++) ne[d] = shape[shape.size() - 1 - d];
    ggml_tensor ** slots[4] = { &e->value, &e->grad, &e->m, &e->v };
    const char * suffix[4] = { "", ".grad", ".adam_m", ".adam_v" };
    for (int i = value ? 1 : 0; i < 4; i++) {
        *slots[i] = ggml_new_tensor(e->ctx, GGML_TYPE_F32, GGML_MAX_DIMS, ne);
        ggml_format_name(*slots[i], "%s%s", name.c_str(), suffix[i]);
    }
    if (value) {
        e->value = value;
        e->external = true;
    } else {
        ggml_set_param(e->value);
    }
    e->buf = ggml_backend_alloc_ctx_tensors(e->ctx, s.backends->primary);
    if (!e->buf) fail("ERR_OUT_OF_MEMORY", "could not allocate parameter '%s' (%lld elements) on %s", name.c_str(), (long long) n, s.backends->device.c_str());
    ggml_backend_buffer_clear(e->buf, 0);
    s.index[name] = s.params.size();
    s.params.push_back(std::move(e));
}

void param_store_add(param_store & s, const std::string & name, const std::vector<int64_t> & shape, const std::vector<float> & data) {
    const int64_t n = param_shape_check(shape, "ParamStore.add");
    if ((int64_t) data.size() != n)
        fail("ERR_INVALID_ARG", "ParamStore.add('%s'): shape %s has %lld elements but data has %zu", name.c_str(),
             param_shape_str(shape).c_str(), (long long) n, data.size());
    param_entry_make(s, name, shape, nullptr);
    ggml_backend_tensor_set(s.params.back()->value, data.data(), 0, ggml_nbytes(s.params.back()->value));
}

void param_store_adopt(param_store & s, const std::string & name, ggml_tensor * value) {
    if (!value || value->type != GGML_TYPE_F32 || !ggml_is_contiguous(value) || !value->buffer)
        fail("ERR_INTERNAL", "ParamStore: '%s' is not an allocated contiguous F32 tensor", name.c_str());
    std::vector<int64_t> shape;
    for (int d = ggml_n_dims(value) - 1; d >= 0; d--) shape.push_back(value->ne[d]);
    param_entry_make(s, name, shape, value);
}

param_entry & param_store_get(param_store & s, const std::string & name) {
    auto it = s.index.find(name);
    if (it == s.index.end()) {
        std::string known;
        for (size_t i = 0; i < s.params.size() && i < 8; i++) known += (i ? ", " : "") + s.params[i]->name;
        if (s.params.size() > 8) known += ", ...";
        fail("ERR_INVALID_ARG", "unknown parameter '%s' (the store has %s)", name.c_str(), known.empty() ? "none" : known.c_str());
    }
    return *s.params[it->second];
}

std::vector<float> param_store_read(const ggml_tensor * t) {
    std::vector<float> out(ggml_nelements(t));
    ggml_backend_tensor_get(t, out.data(), 0, ggml_nbytes(t));
    return out;
}

void param_store_write(ggml_tensor * t, const std::vector<float> & data, const char * what) {
    if ((int64_t) data.size() != ggml_nelements(t))
        fail("ERR_INVALID_ARG", "%s: '%s' has %lld elements but data has %zu", what, ggml_get_name(t), (long long) ggml_nelements(t), data.size());
    ggml_backend_tensor_set(t, data.data(), 0, ggml_nbytes(t));
}

namespace {

// A small graph over a store's tensors, run on its device with intermediates in a throwaway allocator.
struct store_graph {
    ggml_context * ctx = nullptr;
    ggml_cgraph * gf = nullptr;
    ggml_gallocr_t alloc = nullptr;
    store_graph(size_t n_nodes, const char * what) {
        ggml_init_params ip = { ggml_tensor_overhead() * n_nodes + ggml_graph_overhead_custom(n_nodes, false), nullptr, true };
        ctx = ggml_init(ip);
        if (!ctx) fail("ERR_OUT_OF_MEMORY", "could not create the %s graph context", what);
        gf = ggml_new_graph_custom(ctx, n_nodes, false);
    }
    ~store_graph() {
        if (alloc) ggml_gallocr_free(alloc);
        ggml_free(ctx);
    }
    void run(const param_store & s, const char * what) {
        ggml_backend_t be = s.backends->primary;
        alloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(be));
        if (!alloc || !ggml_gallocr_alloc_graph(alloc, gf)) fail("ERR_OUT_OF_MEMORY", "could not allocate the %s graph on %s", what, s.backends->device.c_str());
        const ggml_status st = ggml_backend_graph_compute(be, gf);
        if (st != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "the %s graph failed (status %d): %s", what, (int) st, log_last_error().c_str());
    }
};

#ifdef SQLR1_WITH_CUDA
// On CUDA the optimizer passes run as one kernel launch each over all the tensors (native/cuda/multi_tensor.h);
// elsewhere as ggml graphs of one node per tensor. False where the fused passes do not apply.
bool cuda_spans(const param_store & s, const std::vector<param_entry *> & todo, std::vector<mt_span> & out) {
    if (s.backends->device != "cuda") return false;
    for (param_entry * e : todo) {
        for (ggml_tensor * x : { e->value, e->grad, e->m, e->v })
            if (!x->buffer || ggml_backend_buffer_is_host(x->buffer) || !ggml_is_contiguous(x) || x->type != GGML_TYPE_F32) return false;
        out.push_back({ (float *) e->value->data, (float *) e->grad->data, (float *) e->m->data, (float *) e->v->data, ggml_nelements(e->value) });
    }
    return true;
}
#endif

std::vector<param_entry *> with_grad(const param_store & s) {
    std::vector<param_entry *> todo;
    for (const auto & e : s.params) if (e->has_grad) todo.push_back(e.get());
    return todo;
}

} // namespace

double param_store_grad_norm(const param_store & s) {
    std::vector<param_entry *> todo = with_grad(s);
    if (todo.empty()) return 0.0;
#ifdef SQLR1_WITH_CUDA
    if (std::vector<mt_span> spans; cuda_spans(s, todo, spans)) {
        double total = 0.0;
        for (double v : mt_grad_sumsq_cuda(spans)) total += v;
        return std::sqrt(total);
    }
#endif
    // Each gradient's sum of squares is taken on the device in float32; only those values come back and are
    // added up in float64 (a LoRA adapter's gradients are 100+ MB: reading them back would dominate a step).
    store_graph g(4 * todo.size() + 16, "gradient norm");
    ggml_tensor * out = ggml_new_tensor_1d(g.ctx, GGML_TYPE_F32, (int64_t) todo.size());
    for (size_t i = 0; i < todo.size(); i++) {
        ggml_tensor * ss = ggml_sum(g.ctx, ggml_sqr(g.ctx, todo[i]->grad));
        ggml_build_forward_expand(g.gf, ggml_cpy(g.ctx, ss, ggml_view_1d(g.ctx, out, 1, i * sizeof(float))));
    }
    g.run(s, "gradient norm");
    std::vector<float> sums(todo.size());
    ggml_backend_tensor_get(out, sums.data(), 0, ggml_nbytes(out));
    double total = 0.0;
    for (float v : sums) total += (double) v;
    return std::sqrt(total);
}

double param_store_clip_grad_norm(param_store & s, double max_norm) {
    if (!(max_norm > 0.0) || !std::isfinite(max_norm)) fail("ERR_INVALID_ARG", "clipGradNorm: maxNorm must be a positive finite number, got %g", max_norm);
    const double norm = param_store_grad_norm(s);
    const double coef = max_norm / (norm + 1e-6);
    if (!std::isfinite(norm) || coef >= 1.0) return norm;
    std::vector<param_entry *> todo = with_grad(s);
#ifdef SQLR1_WITH_CUDA
    if (std::vector<mt_span> spans; cuda_spans(s, todo, spans)) {
        mt_grad_scale_cuda(spans, (float) coef);
        return norm;
    }
#endif
    store_graph g(2 * todo.size() + 16, "gradient clipping");
    for (param_entry * e : todo) ggml_build_forward_expand(g.gf, ggml_scale_inplace(g.ctx, e->grad, (float) coef));
    g.run(s, "gradient clipping");
    return norm;
}

void param_store_zero_grad(param_store & s) {
#ifdef SQLR1_WITH_CUDA
    std::vector<param_entry *> all;
    for (auto & e : s.params) all.push_back(e.get());
    if (std::vector<mt_span> spans; cuda_spans(s, all, spans)) {
        mt_grad_zero_cuda(spans);
        for (param_entry * e : all) e->has_grad = false;
        return;
    }
#endif
    for (auto & e : s.params) {
        ggml_backend_tensor_memset(e->grad, 0, 0, ggml_nbytes(e->grad));
        e->has_grad = false;
    }
}

void adamw_options_check(const adamw_options & o) {
    auto bad = [](const char * what, double v, const char * range) {
        fail("ERR_INVALID_ARG", "adamwStep: %s must be %s, got %g", what, range, v);
    };
    if (!(o.lr > 0.0) || !std::isfinite(o.lr)) bad("lr", o.lr, "a positive finite number");
    if (!(o.beta1 >= 0.0 && o.beta1 < 1.0)) bad("beta1", o.beta1, "in [0, 1)");
    if (!(o.beta2 >= 0.0 && o.beta2 < 1.0)) bad("beta2", o.beta2, "in [0, 1)");
    if (!(o.eps > 0.0) || !std::isfinite(o.eps)) bad("eps", o.eps, "a positive finite number");
    if (!(o.weight_decay >= 0.0 && o.weight_decay <= 1.0)) bad("weightDecay", o.weight_decay, "in [0, 1]");
    if (!(o.lr * o.weight_decay <= 1.0)) bad("lr * weightDecay", o.lr * o.weight_decay, "at most 1");
    if (o.step < 1) fail("ERR_INVALID_ARG", "adamwStep: step must be an integer >= 1, got %lld", (long long) o.step);
}

static void values_written(const param_store & s) {
    if (s.on_values_written) s.on_values_written();
}

void param_store_set_value(param_store & s, const std::string & name, const std::vector<float> & data, const char * what) {
    param_store_write(param_store_get(s, name).value, data, what);
    values_written(s);
}

int64_t param_store_adamw_step(param_store & s, const adamw_options & o) {
    adamw_options_check(o);
    std::vector<param_entry *> todo = with_grad(s);
    if (todo.empty()) return 0;
    struct told { const param_store & s; ~told() { values_written(s); } } tell{s};  // also when a step fails halfway

    // ggml-opt's layout and bias corrections: beta1h = 1 / (1 - beta1^t), beta2h = 1 / (1 - beta2^t).
    const float p[7] = {
        (float) o.lr, (float) o.beta1, (float) o.beta2, (float) o.eps, (float) o.weight_decay,
        (float) (1.0 / (1.0 - std::pow(o.beta1, (double) o.step))),
        (float) (1.0 / (1.0 - std::pow(o.beta2, (double) o.step))),
    };
#ifdef SQLR1_WITH_CUDA
    if (std::vector<mt_span> spans; cuda_spans(s, todo, spans)) {
        mt_adamw_cuda(spans, p);
        return (int64_t) todo.size();
    }
#endif
    ggml_backend_tensor_set(s.adamw_params, p, 0, sizeof(p));

    const size_t n_graph = std::max<size_t>(GGML_DEFAULT_GRAPH_SIZE, 2 * todo.size() + 16);
    ggml_init_params ip = { ggml_tensor_overhead() * (todo.size() + 8) + ggml_graph_overhead_custom(n_graph, false), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) fail("ERR_OUT_OF_MEMORY", "could not create the AdamW graph context");
    struct ctx_free { ggml_context * c; ~ctx_free() { ggml_free(c); } } guard{ctx};

    param_flag_guard flags;  // ggml_opt_step_adamw asserts the parameter flag
    for (param_entry * e : todo) flags.mark(*e);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, n_graph, false);
    for (param_entry * e : todo) {
        // The result is a view of the parameter, updated in place (as are m and v).
        ggml_tensor * t = ggml_opt_step_adamw(ctx, e->value, e->grad, e->m, e->v, s.adamw_params);
        if (ggml_backend_view_init(t) != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "could not set up the AdamW step of '%s'", e->name.c_str());
        ggml_build_forward_expand(gf, t);
    }
    ggml_backend_t be = s.backends->primary;
    for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
        ggml_tensor * node = ggml_graph_node(gf, i);
        if (!ggml_backend_supports_op(be, node))
            fail("ERR_UNSUPPORTED_TYPE", "%s does not support %s", s.backends->device.c_str(), ggml_op_desc(node));
    }
    const ggml_status st = ggml_backend_graph_compute(be, gf);
    if (st != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "the AdamW step failed (status %d): %s", (int) st, log_last_error().c_str());
    return (int64_t) todo.size();
}

// ---------------------------------------------------------------------------------------------------------
// The optimizer-state file

// Steps beyond 2^53 would not survive the trip through a JS number.
constexpr int64_t STATE_MAX_STEP = int64_t(1) << 53;
static const char * const STATE_SUFFIX[2] = {".adam_m", ".adam_v"};

void param_store_save_state(const param_store & s, const std::string & path, int64_t step, double lr) {
    if (path.empty()) fail("ERR_INVALID_ARG", "saveState: the path must not be empty");
    if (step < 0 || step > STATE_MAX_STEP) fail("ERR_INVALID_ARG", "saveState: step must be an integer in [0, 2^53], got %lld", (long long) step);
    if (!(lr > 0.0) || !std::isfinite(lr)) fail("ERR_INVALID_ARG", "saveState: lr must be a positive finite number, got %g", lr);
    gguf_context * g = gguf_init_empty();
    struct guard { gguf_context * g; ~guard() { gguf_free(g); } } gg{g};
    gguf_set_val_str(g, "general.type", "optimizer");
    gguf_set_val_str(g, "sqlr1.optimizer.kind", "adamw");
    gguf_set_val_u64(g, "sqlr1.optimizer.step", (uint64_t) step);
    gguf_set_val_f64(g, "sqlr1.optimizer.lr", lr);
    gguf_set_val_u64(g, "sqlr1.optimizer.count", (uint64_t) s.params.size());
    // The moments are already named <name>.adam_m / .adam_v (param_entry_make); gguf reads their data from the
    // backend buffer while writing (host or device alike).
    for (const auto & e : s.params) {
        gguf_add_tensor(g, e->m);
        gguf_add_tensor(g, e->v);
    }
    gguf_write_atomic(g, path);
}

// Outermost-first shape of a GGUF tensor's ne (trailing 1s of ne dropped, as ggml_n_dims does).
static std::string state_shape_str(const int64_t * ne) {
    int n = GGML_MAX_DIMS;
    while (n > 1 && ne[n - 1] == 1) n--;
    std::vector<int64_t> shape;
    for (int d = n - 1; d >= 0; d--) shape.push_back(ne[d]);
    return param_shape_str(shape);
}

optimizer_state param_store_load_state(param_store & s, const std::string & path) {
    FILE * f = fopen(path.c_str(), "rb");
    if (!f) fail("ERR_GGUF_NOT_FOUND", "optimizer state file not found: %s", path.c_str());
    struct file_guard { FILE * f; ~file_guard() { fclose(f); } } fg{f};
    char magic[4] = {0};
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "GGUF", 4) != 0) fail("ERR_STATE_INVALID", "%s is not a GGUF file", path.c_str());
    if (fseeko(f, 0, SEEK_END) != 0) fail("ERR_STATE_INVALID", "could not read %s", path.c_str());
    const int64_t file_size = (int64_t) ftello(f);

    // Metadata only: each tensor's byte range is checked against the file size before anything is read, so a
    // truncated or hostile file cannot make gguf allocate or read past the end.
    gguf_init_params ip = { true, nullptr };
    gguf_context * g = gguf_init_from_file(path.c_str(), ip);
    if (!g) fail("ERR_STATE_INVALID", "%s could not be parsed as GGUF: %s", path.c_str(), log_last_error().c_str());
    struct guard { gguf_context * g; ~guard() { gguf_free(g); } } gg{g};
    auto str = [&](const char * key) -> std::string {
        const int64_t id = gguf_find_key(g, key);
        return id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_STRING ? gguf_get_val_str(g, id) : "";
    };
    // A non-negative integer of any width, or -1 when absent, negative or not an integer.
    auto integer = [&](const char * key) -> int64_t {
        const int64_t id = gguf_find_key(g, key);
        if (id < 0) return -1;
        switch (gguf_get_kv_type(g, id)) {
            case GGUF_TYPE_UINT32: return gguf_get_val_u32(g, id);
            case GGUF_TYPE_INT32: return std::max<int64_t>(gguf_get_val_i32(g, id), -1);
            case GGUF_TYPE_UINT64: return gguf_get_val_u64(g, id) > (uint64_t) INT64_MAX ? -1 : (int64_t) gguf_get_val_u64(g, id);
            case GGUF_TYPE_INT64: return std::max<int64_t>(gguf_get_val_i64(g, id), -1);
            default: return -1;
        }
    };
    if (str("general.type") != "optimizer" || str("sqlr1.optimizer.kind") != "adamw")
        fail("ERR_STATE_INVALID", "%s is not an AdamW optimizer state: expected general.type 'optimizer' and sqlr1.optimizer.kind 'adamw', found '%s' and '%s'",
             path.c_str(), str("general.type").c_str(), str("sqlr1.optimizer.kind").c_str());
    optimizer_state out;
    out.step = integer("sqlr1.optimizer.step");
    if (out.step < 0 || out.step > STATE_MAX_STEP)
        fail("ERR_STATE_INVALID", "%s: sqlr1.optimizer.step must be an integer in [0, 2^53]", path.c_str());
    const int64_t lr_id = gguf_find_key(g, "sqlr1.optimizer.lr");
    const gguf_type lr_type = lr_id >= 0 ? gguf_get_kv_type(g, lr_id) : GGUF_TYPE_COUNT;
    out.lr = lr_type == GGUF_TYPE_FLOAT64 ? gguf_get_val_f64(g, lr_id) : lr_type == GGUF_TYPE_FLOAT32 ? gguf_get_val_f32(g, lr_id) : NAN;
    if (!(out.lr > 0.0) || !std::isfinite(out.lr))
        fail("ERR_STATE_INVALID", "%s: sqlr1.optimizer.lr must be a positive finite float, found %g", path.c_str(), out.lr);
    const int64_t count = integer("sqlr1.optimizer.count");
    if (count < 0) fail("ERR_STATE_INVALID", "%s has no integer sqlr1.optimizer.count", path.c_str());

    const int64_t n_tensors = gguf_get_n_tensors(g);
    auto file_names = [&]() {
        std::string names;
        for (int64_t i = 0; i < n_tensors && i < 6; i++) names += (i ? ", " : "") + std::string(gguf_get_tensor_name(g, i));
        if (n_tensors > 6) names += ", ...";
        return names.empty() ? std::string("none") : names;
    };

    // Every parameter of the store needs both moments, F32, with exactly its shape, inside the file.
    struct pending { ggml_tensor * dst; uint64_t offset; size_t nbytes; };
    std::vector<pending> todo;
    for (const auto & e : s.params) {
        for (int k = 0; k < 2; k++) {
            ggml_tensor * dst = k == 0 ? e->m : e->v;
            const std::string name = e->name + STATE_SUFFIX[k];
            const int64_t id = gguf_find_tensor(g, name.c_str());
            if (id < 0)
                fail("ERR_STATE_INVALID", "%s has no tensor '%s' for the store's parameter '%s' %s (the file has %lld tensors: %s)", path.c_str(),
                     name.c_str(), e->name.c_str(), param_shape_str(e->shape).c_str(), (long long) n_tensors, file_names().c_str());
            const ggml_type type = gguf_get_tensor_type(g, id);
            if (type != GGML_TYPE_F32)
                fail("ERR_STATE_INVALID", "tensor '%s' in %s should be f32, found %s", name.c_str(), path.c_str(), ggml_type_name(type));
            const int64_t * ne = gguf_get_tensor_ne(g, id);
            for (int d = 0; d < GGML_MAX_DIMS; d++) {
                if (ne[d] != dst->ne[d])
                    fail("ERR_STATE_INVALID", "tensor '%s' in %s has shape %s, the store's parameter '%s' has shape %s", name.c_str(), path.c_str(),
                         state_shape_str(ne).c_str(), e->name.c_str(), param_shape_str(e->shape).c_str());
            }
            uint64_t offset, nbytes;
            if (!gguf_tensor_in_file(g, id, (uint64_t) file_size, &offset, &nbytes))
                fail("ERR_STATE_INVALID", "%s is truncated: tensor '%s' needs bytes up to %llu, the file has %lld", path.c_str(), name.c_str(),
                     (unsigned long long) (offset + nbytes), (long long) file_size);
            todo.push_back({dst, offset, (size_t) nbytes});
        }
    }
    // All 2 x count names were found and gguf rejects duplicate names, so any other tensor is unknown.
    if (n_tensors != 2 * (int64_t) s.params.size()) {
        for (int64_t i = 0; i < n_tensors; i++) {
            const std::string name = gguf_get_tensor_name(g, i);
            bool known = false;
            for (const char * suffix : STATE_SUFFIX) {
                const size_t n = strlen(suffix);
                if (name.size() > n && name.compare(name.size() - n, n, suffix) == 0 && s.index.count(name.substr(0, name.size() - n))) known = true;
            }
            if (!known) {
                std::string names;
                for (size_t j = 0; j < s.params.size() && j < 6; j++) names += (j ? ", " : "") + s.params[j]->name;
                if (s.params.size() > 6) names += ", ...";
                fail("ERR_STATE_INVALID", "%s holds tensor '%s', which is not a moment of any of the store's %zu parameters (%s)", path.c_str(),
                     name.c_str(), s.params.size(), names.empty() ? "none" : names.c_str());
            }
        }
    }
    if (count != (int64_t) s.params.size())
        fail("ERR_STATE_INVALID", "%s: sqlr1.optimizer.count says %lld parameters, the file has moments for %zu", path.c_str(), (long long) count, s.params.size());

    // Read everything before writing anything: a read error must leave the store as it was.
    size_t total = 0;
    for (const pending & p : todo) total += p.nbytes;
    std::vector<uint8_t> data(total);
    size_t pos = 0;
    for (size_t i = 0; i < todo.size(); i++) {
        const pending & p = todo[i];
        if (fseeko(f, (off_t) p.offset, SEEK_SET) != 0 || fread(data.data() + pos, 1, p.nbytes, f) != p.nbytes)
            fail("ERR_STATE_INVALID", "could not read tensor '%s' from %s", ggml_get_name(p.dst), path.c_str());
        pos += p.nbytes;
    }
    pos = 0;
    for (const pending & p : todo) {
        ggml_backend_tensor_set(p.dst, data.data() + pos, 0, p.nbytes);
        pos += p.nbytes;
    }
    return out;
}

} // namespace sqlr1
