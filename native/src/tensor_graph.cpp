#include "tensor_graph.h"

#include "napi_helpers.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <cmath>
#include <cstring>

// How each op maps to ggml, and why some are compositions. Gradients come from ggml_compute_backward (ggml.c);
// every op used below has a backward there and is supported by the CPU and CUDA backends
// (ggml_backend_cuda_device_supports_op): ADD, SUB, MUL, DIV, SCALE (with bias), SUM, SUM_ROWS, REPEAT
// (backward REPEAT_BACK), UNARY NEG/EXP/RELU/STEP, LOG.
//  - add, mul: ggml_add / ggml_mul broadcast src1 to src0 and their backward reduces src1's gradient with
//    ggml_repeat_back, so the smaller operand goes second (the ops commute).
//  - sub, div: ggml's backward for src1 of SUB and DIV does not reduce a broadcast gradient (it would trip an
//    assert), so the smaller operand is first expanded with ggml_repeat (whose backward sums it back).
//  - clamp: GGML_OP_CLAMP has no backward. clamp(x, lo, hi) = min(max(x, lo), hi) with
//    max(x, lo) = x + relu(lo - x) and min(y, hi) = y - relu(y - hi): relu's backward is step(x) * grad, so
//    the gradient is exactly 1 inside [lo, hi] and exactly 0 outside, and values inside are returned exactly.
//  - min(a, b) = a - relu(a - b), max(a, b) = a + relu(b - a): same reasons (at a tie the gradient goes to a).
//  - mean: ggml_mean reduces rows only and its backward uses ADD1 with a non-scalar operand when a gradient
//    already exists, so mean = scale(sum(x), 1/n) and mean_rows = scale(sum_rows(x), 1/ncols).
//  - add_scalar: ggml_scale_bias(x, 1, c) (SCALE's backward ignores the bias, which is right).
//  - masked means: the denominator max(s, 1) = 1 + relu(s - 1), as TRL's clamp(min=1), so an empty mask gives 0.

namespace sqlr1 {

namespace {

using shape_t = std::vector<int64_t>;

struct op_spec {
    const char * name;
    int n_inputs;
    int n_params;
};

const op_spec OPS[] = {
    {"const", 0, 0}, {"param", 0, 0},
    {"add", 2, 0}, {"sub", 2, 0}, {"mul", 2, 0}, {"div", 2, 0}, {"min", 2, 0}, {"max", 2, 0},
    {"neg", 1, 0}, {"exp", 1, 0}, {"log", 1, 0}, {"step", 1, 0}, {"reshape", 1, 0},
    {"scale", 1, 1}, {"add_scalar", 1, 1}, {"clamp", 1, 2},
    {"sum", 1, 0}, {"mean", 1, 0}, {"sum_rows", 1, 0}, {"mean_rows", 1, 0},
    {"masked_sum", 2, 0}, {"masked_mean", 2, 0}, {"masked_mean_rows", 2, 0},
};

const op_spec * op_find(const std::string & name) {
    for (const auto & o : OPS) if (name == o.name) return &o;
    return nullptr;
}

std::string op_names() {
    std::string s;
    for (const auto & o : OPS) s += (s.empty() ? "" : ", ") + std::string(o.name);
    return s;
}

int64_t n_elements(const shape_t & s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
}

// True when `small` broadcasts to `big` (right-aligned; each dimension equal or 1).
bool broadcasts_to(const shape_t & small, const shape_t & big) {
    if (small.size() > big.size()) return false;
    const size_t off = big.size() - small.size();
    for (size_t i = 0; i < small.size(); i++) if (small[i] != big[off + i] && small[i] != 1) return false;
    return true;
}

// The broadcast rule of binary ops, in one place: one shape must cover the other. runGraph checks it before ggml
// would assert, and exports it as broadcastShape to the TypeScript layer, which needs each op's shape where the
// op is written (lib/train/tensor.ts).
bool broadcast_shape(const shape_t & a, const shape_t & b, shape_t & out) {
    if (broadcasts_to(b, a)) out = a;
    else if (broadcasts_to(a, b)) out = b;
    else return false;
    return true;
}

shape_t rows_shape(const shape_t & s) {
    shape_t r = s;
    if (!r.empty()) r.back() = 1;
    return r;
}

void ne_from_shape(const shape_t & s, int64_t ne[GGML_MAX_DIMS]) {
    for (int d = 0; d < GGML_MAX_DIMS; d++) ne[d] = 1;
    for (size_t d = 0; d < s.size(); d++) ne[d] = s[s.size() - 1 - d];
}

[[noreturn]] void node_fail(size_t i, const tensor_graph_node & n, const std::string & msg) {
    fail("ERR_INVALID_ARG", "node %zu (%s): %s", i, n.op.c_str(), msg.c_str());
}

// Kahn's algorithm over the input edges; returns nodes in an order where inputs come first.
std::vector<size_t> topo_order(const tensor_graph_request & req) {
    const size_t n = req.nodes.size();
    std::vector<int> pending(n, 0);
    std::vector<std::vector<size_t>> users(n);
    for (size_t i = 0; i < n; i++) {
        for (int32_t j : req.nodes[i].inputs) {
            pending[i]++;
            users[(size_t) j].push_back(i);
        }
    }
    std::vector<size_t> order, ready;
    for (size_t i = n; i-- > 0;) if (pending[i] == 0) ready.push_back(i);
    while (!ready.empty()) {
        const size_t i = ready.back();
        ready.pop_back();
        order.push_back(i);
        for (size_t u : users[i]) if (--pending[u] == 0) ready.push_back(u);
    }
    if (order.size() != n) {
        for (size_t i = 0; i < n; i++) {
            if (pending[i] > 0) {
                fail("ERR_INVALID_ARG", "the graph has a cycle through node %zu (%s): inputs must not depend on the node itself",
                     i, req.nodes[i].op.c_str());
            }
        }
    }
    return order;
}

} // namespace

std::vector<shape_t> tensor_graph_validate(const tensor_graph_request & req) {
    const size_t n = req.nodes.size();
    if (n == 0) fail("ERR_INVALID_ARG", "runGraph: the graph has no nodes");
    if (n > TENSOR_GRAPH_MAX_NODES) fail("ERR_INVALID_ARG", "runGraph: at most %zu nodes, got %zu", TENSOR_GRAPH_MAX_NODES, n);
    if (req.n_threads < 0 || req.n_threads > 1024) fail("ERR_INVALID_ARG", "runGraph: threads must be in [0, 1024], got %d", req.n_threads);

    // Arity, parameters and input indices first, so that the order below is well defined.
    for (size_t i = 0; i < n; i++) {
        const tensor_graph_node & nd = req.nodes[i];
        const op_spec * spec = op_find(nd.op);
        if (!spec) node_fail(i, nd, "unknown op; expected one of " + op_names());
        if ((int) nd.inputs.size() != spec->n_inputs)
            node_fail(i, nd, "expects " + std::to_string(spec->n_inputs) + " input(s), got " + std::to_string(nd.inputs.size()));
        if ((int) nd.params.size() != spec->n_params)
            node_fail(i, nd, "expects " + std::to_string(spec->n_params) + " parameter(s), got " + std::to_string(nd.params.size()));
        for (double p : nd.params) if (!std::isfinite(p)) node_fail(i, nd, "parameters must be finite numbers");
        for (size_t k = 0; k < nd.inputs.size(); k++) {
            const int32_t j = nd.inputs[k];
            if (j < 0 || (size_t) j >= n)
                node_fail(i, nd, "input " + std::to_string(k) + " refers to node " + std::to_string(j) + ", out of range [0, " + std::to_string(n) + ")");
            if ((size_t) j == i) node_fail(i, nd, "input " + std::to_string(k) + " refers to the node itself (a cycle)");
        }
        if (nd.requires_grad && nd.op != "const") node_fail(i, nd, "only const nodes can be marked requiresGrad");
        if (nd.op == "param") {
            if (!req.store) node_fail(i, nd, "a param node needs a ParamStore in the request");
            param_store_get(*req.store, nd.param);  // ERR_INVALID_ARG for an unknown name
        }
        if (nd.op == "clamp" && !(nd.params[0] <= nd.params[1]))
            node_fail(i, nd, "needs min <= max, got [" + std::to_string(nd.params[0]) + ", " + std::to_string(nd.params[1]) + "]");
        if (nd.op == "scale" || nd.op == "add_scalar" || nd.op == "clamp") {
            for (double p : nd.params) if (std::fabs(p) > 3.0e38) node_fail(i, nd, "parameters must fit in a float");
        }
    }

    std::vector<shape_t> shapes(n);
    for (size_t i : topo_order(req)) {
        const tensor_graph_node & nd = req.nodes[i];
        const std::string & op = nd.op;
        auto in = [&](size_t k) -> const shape_t & { return shapes[(size_t) nd.inputs[k]]; };
        if (op == "const") {
            const int64_t ne = param_shape_check(nd.shape, ("node " + std::to_string(i) + " (const)").c_str());
            if ((int64_t) nd.data.size() != ne)
                node_fail(i, nd, "shape " + param_shape_str(nd.shape) + " has " + std::to_string(ne) + " elements but data has " + std::to_string(nd.data.size()));
            shapes[i] = nd.shape;
        } else if (op == "param") {
            shapes[i] = param_store_get(*req.store, nd.param).shape;
        } else if (op == "add" || op == "sub" || op == "mul" || op == "div" || op == "min" || op == "max") {
            const shape_t & a = in(0), & b = in(1);
            if (!broadcast_shape(a, b, shapes[i])) node_fail(i, nd, "shapes " + param_shape_str(a) + " and " + param_shape_str(b) +
                           " do not broadcast (one shape must cover the other, each dimension equal or 1, aligned on the right)");
        } else if (op == "masked_sum" || op == "masked_mean" || op == "masked_mean_rows") {
            const shape_t & x = in(0), & m = in(1);
            if (!broadcasts_to(m, x))
                node_fail(i, nd, "the mask's shape " + param_shape_str(m) + " must broadcast to the input's " + param_shape_str(x));
            shapes[i] = op == "masked_mean_rows" ? rows_shape(x) : shape_t{};
        } else if (op == "reshape") {
            param_shape_check(nd.shape, ("node " + std::to_string(i) + " (reshape)").c_str());
            if (n_elements(nd.shape) != n_elements(in(0)))
                node_fail(i, nd, "cannot reshape " + param_shape_str(in(0)) + " to " + param_shape_str(nd.shape) + ": the element counts differ");
            shapes[i] = nd.shape;
        } else if (op == "sum" || op == "mean") {
            shapes[i] = {};
        } else if (op == "sum_rows" || op == "mean_rows") {
            shapes[i] = rows_shape(in(0));
        } else {
            shapes[i] = in(0);  // element-wise unary ops
        }
    }

    if (req.loss >= 0) {
        if ((size_t) req.loss >= n) fail("ERR_INVALID_ARG", "runGraph: loss refers to node %d, out of range [0, %zu)", req.loss, n);
        if (n_elements(shapes[(size_t) req.loss]) != 1)
            fail("ERR_INVALID_ARG", "runGraph: the loss must be a scalar, node %d has shape %s", req.loss, param_shape_str(shapes[(size_t) req.loss]).c_str());
    } else if (req.loss != -1) {
        fail("ERR_INVALID_ARG", "runGraph: loss must be a node index, got %d", req.loss);
    }
    return shapes;
}

namespace {

struct graph_resources {
    ggml_context * ctx = nullptr;
    ggml_gallocr_t galloc = nullptr;
    ~graph_resources() {
        if (galloc) ggml_gallocr_free(galloc);
        if (ctx) ggml_free(ctx);
    }
};

// Expands `t` to the shape of `like` (which t broadcasts to) with ggml_repeat; a no-op when the shapes match.
ggml_tensor * expand_to(ggml_context * ctx, ggml_tensor * t, ggml_tensor * like) {
    if (ggml_are_same_shape(t, like)) return t;
    return ggml_repeat(ctx, t, like);
}

// max(s, 1) = 1 + relu(s - 1)
ggml_tensor * at_least_one(ggml_context * ctx, ggml_tensor * s) {
    return ggml_scale_bias(ctx, ggml_relu(ctx, ggml_scale_bias(ctx, s, 1.0f, -1.0f)), 1.0f, 1.0f);
}

} // namespace

tensor_graph_result tensor_graph_run(const tensor_graph_request & req) {
    const std::vector<shape_t> shapes = tensor_graph_validate(req);
    const std::vector<size_t> order = topo_order(req);
    const size_t n = req.nodes.size();

    std::shared_ptr<backend_set> bs = req.store ? req.store->backends : backend_set_init(req.device, req.n_threads);
    ggml_backend_t be = bs->primary;

    // Upper bound on tensors: at most 8 per op forward (masked_mean_rows), and backward adds at most ~6 per
    // forward tensor; the store's parameters are outside this context.
    const size_t n_graph = std::max<size_t>(GGML_DEFAULT_GRAPH_SIZE, 64 * n + 64);
    graph_resources res;
    ggml_init_params ip = { ggml_tensor_overhead() * n_graph + ggml_graph_overhead_custom(n_graph, true), nullptr, true };
    res.ctx = ggml_init(ip);
    if (!res.ctx) fail("ERR_OUT_OF_MEMORY", "could not create the graph context");
    ggml_context * ctx = res.ctx;

    std::vector<ggml_tensor *> t(n, nullptr);
    std::vector<bool> external(n, false);   // a store tensor, not allocated here
    param_flag_guard flags;
    bool any_grad = false;
    for (size_t i : order) {
        const tensor_graph_node & nd = req.nodes[i];
        const std::string & op = nd.op;
        auto in = [&](size_t k) { return t[(size_t) nd.inputs[k]]; };
        ggml_tensor * r = nullptr;
        if (op == "const") {
            int64_t ne[GGML_MAX_DIMS];
            ne_from_shape(nd.shape, ne);
            r = ggml_new_tensor(ctx, GGML_TYPE_F32, GGML_MAX_DIMS, ne);
            ggml_set_input(r);
            if (nd.requires_grad) {
                ggml_set_param(r);
                any_grad = true;
            }
        } else if (op == "param") {
            param_entry & e = param_store_get(*req.store, nd.param);
            r = e.value;
            flags.mark(e);
            external[i] = true;
            any_grad = true;
        } else if (op == "add" || op == "mul") {
            ggml_tensor * a = in(0), * b = in(1);
            if (n_elements(shapes[(size_t) nd.inputs[0]]) < n_elements(shapes[i])) std::swap(a, b);  // the smaller one second
            r = op == "add" ? ggml_add(ctx, a, b) : ggml_mul(ctx, a, b);
        } else if (op == "sub" || op == "div" || op == "min" || op == "max") {
            ggml_tensor * a = in(0), * b = in(1);
            ggml_tensor * like = ggml_are_same_shape(a, b) ? a : (ggml_nelements(a) >= ggml_nelements(b) ? a : b);
            a = expand_to(ctx, a, like);
            b = expand_to(ctx, b, like);
            if (op == "sub") r = ggml_sub(ctx, a, b);
            else if (op == "div") r = ggml_div(ctx, a, b);
            else if (op == "min") r = ggml_sub(ctx, a, ggml_relu(ctx, ggml_sub(ctx, a, b)));
            else r = ggml_add(ctx, a, ggml_relu(ctx, ggml_sub(ctx, b, a)));
        } else if (op == "neg") {
            r = ggml_neg(ctx, in(0));
        } else if (op == "exp") {
            r = ggml_exp(ctx, in(0));
        } else if (op == "log") {
            r = ggml_log(ctx, in(0));
        } else if (op == "step") {
            r = ggml_step(ctx, in(0));
        } else if (op == "reshape") {
            int64_t ne[GGML_MAX_DIMS];
            ne_from_shape(nd.shape, ne);
            r = ggml_reshape_4d(ctx, in(0), ne[0], ne[1], ne[2], ne[3]);
        } else if (op == "scale") {
            r = ggml_scale(ctx, in(0), (float) nd.params[0]);
        } else if (op == "add_scalar") {
            r = ggml_scale_bias(ctx, in(0), 1.0f, (float) nd.params[0]);
        } else if (op == "clamp") {
            const float lo = (float) nd.params[0], hi = (float) nd.params[1];
            ggml_tensor * x = in(0);
            ggml_tensor * y = ggml_add(ctx, x, ggml_relu(ctx, ggml_scale_bias(ctx, x, -1.0f, lo)));   // max(x, lo)
            r = ggml_sub(ctx, y, ggml_relu(ctx, ggml_scale_bias(ctx, y, 1.0f, -hi)));                 // min(y, hi)
        } else if (op == "sum") {
            r = ggml_sum(ctx, in(0));
        } else if (op == "mean") {
            r = ggml_scale(ctx, ggml_sum(ctx, in(0)), (float) (1.0 / (double) ggml_nelements(in(0))));
        } else if (op == "sum_rows") {
            r = ggml_sum_rows(ctx, in(0));
        } else if (op == "mean_rows") {
            r = ggml_scale(ctx, ggml_sum_rows(ctx, in(0)), (float) (1.0 / (double) in(0)->ne[0]));
        } else if (op == "masked_sum" || op == "masked_mean" || op == "masked_mean_rows") {
            ggml_tensor * x = in(0), * m = in(1);
            ggml_tensor * xm = ggml_mul(ctx, x, m);   // the mask broadcasts as src1
            if (op == "masked_sum") {
                r = ggml_sum(ctx, xm);
            } else if (op == "masked_mean") {
                ggml_tensor * s = ggml_sum(ctx, m);
                const int64_t rep = ggml_nelements(x) / ggml_nelements(m);  // a broadcast mask counts once per copy
                if (rep != 1) s = ggml_scale(ctx, s, (float) rep);
                r = ggml_div(ctx, ggml_sum(ctx, xm), at_least_one(ctx, s));
            } else {
                ggml_tensor * s = ggml_sum_rows(ctx, expand_to(ctx, m, x));
                r = ggml_div(ctx, ggml_sum_rows(ctx, xm), at_least_one(ctx, s));
            }
        } else {
            fail("ERR_INTERNAL", "op '%s' passed validation but has no implementation", op.c_str());
        }
        t[i] = r;
        if (!external[i]) ggml_format_name(r, "node_%zu_%s", i, op.c_str());
    }

    ggml_cgraph * gf = ggml_new_graph_custom(ctx, n_graph, true);
    for (size_t i : order) ggml_build_forward_expand(gf, t[i]);

    // The loss must be an op of this context (ggml_set_loss flags the tensor itself).
    ggml_tensor * loss = nullptr;
    if (req.loss >= 0) {
        loss = t[(size_t) req.loss];
        if (loss->op == GGML_OP_NONE) {
            loss = ggml_scale(ctx, loss, 1.0f);
            ggml_build_forward_expand(gf, loss);
        }
        ggml_set_loss(loss);
        ggml_set_output(loss);
    }
    for (size_t i = 0; i < n; i++) if (req.nodes[i].output && !external[i]) ggml_set_output(t[i]);

    const bool backward = loss && any_grad;
    std::vector<param_entry *> store_params;
    if (backward) {
        // The store's gradient accumulators receive the gradients in place (grad += d loss / d param).
        std::vector<ggml_tensor *> grad_accs(ggml_graph_n_nodes(gf), nullptr);
        for (int k = 0; k < ggml_graph_n_nodes(gf); k++) {
            ggml_tensor * node = ggml_graph_node(gf, k);
            if (!req.store || !(node->flags & GGML_TENSOR_FLAG_PARAM) || node->buffer == nullptr) continue;
            for (auto & e : req.store->params) {
                if (e->value == node) {
                    grad_accs[k] = e->grad;
                    store_params.push_back(e.get());
                }
            }
        }
        ggml_build_backward_expand(ctx, gf, grad_accs.data());
        ggml_tensor * loss_grad = ggml_graph_get_grad_acc(gf, loss);
        if (!loss_grad) fail("ERR_INTERNAL", "ggml built no gradient for the loss");
        ggml_set_input(loss_grad);
        for (size_t i = 0; i < n; i++) {
            if (!req.nodes[i].requires_grad) continue;
            ggml_tensor * g = ggml_graph_get_grad(gf, t[i]);
            if (g) ggml_set_output(g);
        }
    }

    for (int k = 0; k < ggml_graph_n_nodes(gf); k++) {
        ggml_tensor * node = ggml_graph_node(gf, k);
        if (!ggml_backend_supports_op(be, node))
            fail("ERR_UNSUPPORTED_TYPE", "%s does not support %s (%s)", bs->device.c_str(), ggml_op_desc(node), ggml_get_name(node));
    }

    res.galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(be));
    if (!res.galloc || !ggml_gallocr_alloc_graph(res.galloc, gf))
        fail("ERR_OUT_OF_MEMORY", "could not allocate the graph on %s", bs->device.c_str());

    for (size_t i = 0; i < n; i++) {
        if (req.nodes[i].op == "const") ggml_backend_tensor_set(t[i], req.nodes[i].data.data(), 0, ggml_nbytes(t[i]));
    }
    if (backward) {
        // The loss's gradient seed is 1. It is not in the graph when no gradient flows from the loss.
        ggml_tensor * loss_grad = ggml_graph_get_grad_acc(gf, loss);
        const float one = 1.0f;
        if (loss_grad->buffer) ggml_backend_tensor_set(loss_grad, &one, 0, sizeof(one));
    }

    const ggml_status st = ggml_backend_graph_compute(be, gf);
    if (st != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "the graph failed to run (status %d): %s", (int) st, log_last_error().c_str());

    tensor_graph_result out;
    if (loss) {
        float v = 0.0f;
        ggml_backend_tensor_get(loss, &v, 0, sizeof(v));
        out.has_loss = true;
        out.loss = v;
    }
    for (size_t i = 0; i < n; i++) {
        const tensor_graph_node & nd = req.nodes[i];
        if (nd.output) {
            tensor_graph_tensor o;
            o.node = (int32_t) i;
            o.shape = shapes[i];
            o.data = nd.op == "const" ? nd.data : param_store_read(t[i]);
            out.outputs.push_back(std::move(o));
        }
        if (nd.requires_grad) {
            tensor_graph_tensor g;
            g.node = (int32_t) i;
            g.shape = shapes[i];
            ggml_tensor * gt = backward ? ggml_graph_get_grad(gf, t[i]) : nullptr;
            g.data = gt ? param_store_read(gt) : std::vector<float>((size_t) n_elements(shapes[i]), 0.0f);
            out.grads.push_back(std::move(g));
        }
    }
    for (param_entry * e : store_params) {
        // grads[] still pointing at the accumulator itself means nothing flowed into it.
        if (ggml_graph_get_grad(gf, e->value) != e->grad) {
            e->has_grad = true;
            out.params_with_grad.push_back(e->name);
        }
    }
    return out;
}

// ---------------------------------------------------------------------------------------------------------
// N-API surface

namespace {

std::vector<int64_t> get_shape(Napi::Env env, Napi::Value v, const std::string & what) {
    if (!v.IsArray()) bad_arg(env, what + " must be an array of integers");
    Napi::Array a = v.As<Napi::Array>();
    if (a.Length() > (uint32_t) PARAM_MAX_DIMS) bad_arg(env, what + " has at most " + std::to_string(PARAM_MAX_DIMS) + " dimensions");
    std::vector<int64_t> s;
    for (uint32_t k = 0; k < a.Length(); k++) {
        Napi::Value d = a.Get(k);
        const double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : NAN;
        if (!(x >= 1 && x <= (double) PARAM_MAX_ELEMENTS && std::floor(x) == x)) bad_arg(env, what + " must hold integers >= 1");
        s.push_back((int64_t) x);
    }
    return s;
}

std::string get_name(const Napi::CallbackInfo & info, size_t i = 0) {
    if (info.Length() <= i || !info[i].IsString()) bad_arg(info.Env(), "the parameter name must be a string");
    return info[i].As<Napi::String>().Utf8Value();
}

Napi::Array shape_to_js(Napi::Env env, const std::vector<int64_t> & s) {
    Napi::Array a = Napi::Array::New(env, s.size());
    for (size_t k = 0; k < s.size(); k++) a.Set((uint32_t) k, (double) s[k]);
    return a;
}

class ParamStoreWrap : public Napi::ObjectWrap<ParamStoreWrap> {
public:
    static Napi::FunctionReference ctor;
    std::shared_ptr<param_store> s;

    static Napi::Function Init(Napi::Env env) {
        Napi::Function f = DefineClass(env, "ParamStore", {
            InstanceMethod("info", &ParamStoreWrap::Info),
            InstanceMethod("add", &ParamStoreWrap::Add),
            InstanceMethod("get", &ParamStoreWrap::Get),
            InstanceMethod("set", &ParamStoreWrap::Set),
            InstanceMethod("shape", &ParamStoreWrap::Shape),
            InstanceMethod("names", &ParamStoreWrap::Names),
            InstanceMethod("grad", &ParamStoreWrap::Grad),
            InstanceMethod("setGrad", &ParamStoreWrap::SetGrad),
            InstanceMethod("getMoment", &ParamStoreWrap::GetMoment),
            InstanceMethod("setMoment", &ParamStoreWrap::SetMoment),
            InstanceMethod("gradNorm", &ParamStoreWrap::GradNorm),
            InstanceMethod("clipGradNorm", &ParamStoreWrap::ClipGradNorm),
            InstanceMethod("zeroGrad", &ParamStoreWrap::ZeroGrad),
            InstanceMethod("adamwStep", &ParamStoreWrap::AdamwStep),
            InstanceMethod("saveState", &ParamStoreWrap::SaveState),
            InstanceMethod("loadState", &ParamStoreWrap::LoadState),
            InstanceMethod("dispose", &ParamStoreWrap::Dispose),
        });
        ctor = Napi::Persistent(f);
        return f;
    }

    // new ParamStore({ device, threads })
    ParamStoreWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<ParamStoreWrap>(info) {
        Napi::Env env = info.Env();
        if (info.Length() > 0 && info[0].IsExternal()) {  // param_store_to_js: wrap an existing store
            s = *info[0].As<Napi::External<std::shared_ptr<param_store>>>().Data();
            return;
        }
        Napi::Object o = info.Length() > 0 && info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
        const std::string device = get_string(o, "device", "cpu");
        const double threads = get_number(o, "threads", 0);
        if (!(threads >= 0 && threads <= 1024 && std::floor(threads) == threads)) bad_arg(env, "threads must be an integer in [0, 1024]");
        auto ex = guarded(env, [&]() { return executor_for(device); });
        s = run_sync(env, *ex, [&]() { return param_store_init(device, (int) threads); });
    }

    // Reads and writes of the store's values, gradients and moments run on its device's executor after the
    // calls queued before them (a graph run, an AdamW step, a trainer's backward).
    param_store & get(Napi::Env env) {
        if (!s) throw make_error(env, "ERR_DISPOSED", "the parameter store was disposed");
        return *s;
    }
    executor & exec() { return *s->backends->exec; }

    Napi::Value Info(const Napi::CallbackInfo & info) {
        param_store & st = get(info.Env());
        Napi::Object o = Napi::Object::New(info.Env());
        double elements = 0, bytes = 0;
        for (auto & e : st.params) {
            elements += (double) e->n_elements();
            bytes += (double) ggml_backend_buffer_get_size(e->buf);
        }
        o.Set("device", st.backends->device);
        o.Set("threads", (double) st.backends->n_threads);
        o.Set("count", (double) st.params.size());
        o.Set("elements", elements);
        o.Set("bytes", bytes);
        return o;
    }
    Napi::Value Add(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        const std::string name = get_name(info);
        if (info.Length() < 3) bad_arg(env, "add(name, shape, data: Float32Array)");
        std::vector<int64_t> shape = get_shape(env, info[1], "shape");
        std::vector<float> data = get_f32(env, info[2], "data");
        run_sync(env, exec(), [&]() { param_store_add(st, name, shape, data); });
        return env.Undefined();
    }
    Napi::Value Get(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        const std::string name = get_name(info);
        return to_js(env, run_sync(env, exec(), [&]() { return param_store_read(param_store_get(st, name).value); }));
    }
    Napi::Value Set(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        const std::string name = get_name(info);
        if (info.Length() < 2) bad_arg(env, "set(name, data: Float32Array)");
        std::vector<float> data = get_f32(env, info[1], "data");
        run_sync(env, exec(), [&]() { param_store_set_value(st, name, data, "ParamStore.set"); });
        return env.Undefined();
    }
    Napi::Value Shape(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        const std::string name = get_name(info);
        return shape_to_js(env, guarded(env, [&]() { return param_store_get(st, name).shape; }));
    }
    Napi::Value Names(const Napi::CallbackInfo & info) {
        param_store & st = get(info.Env());
        Napi::Array a = Napi::Array::New(info.Env(), st.params.size());
        for (size_t i = 0; i < st.params.size(); i++) a.Set((uint32_t) i, st.params[i]->name);
        return a;
    }
    // grad(name): the accumulated gradient, or null when none arrived since the last zeroGrad.
    Napi::Value Grad(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        const std::string name = get_name(info);
        param_entry & e = guarded(env, [&]() -> param_entry & { return param_store_get(st, name); });
        bool has = false;
        std::vector<float> g = run_sync(env, exec(), [&]() {
            has = e.has_grad;
            return has ? param_store_read(e.grad) : std::vector<float>();
        });
        if (!has) return env.Null();
        return to_js(env, g);
    }
    // setGrad(name, data): replaces the accumulated gradient (a data-parallel run writes back the all-reduced sum).
    Napi::Value SetGrad(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        const std::string name = get_name(info);
        if (info.Length() < 2) bad_arg(env, "setGrad(name, data: Float32Array)");
        std::vector<float> data = get_f32(env, info[1], "data");
        param_entry & e = guarded(env, [&]() -> param_entry & { return param_store_get(st, name); });
        run_sync(env, exec(), [&]() {
            param_store_write(e.grad, data, "ParamStore.setGrad");
            e.has_grad = true;
        });
        return env.Undefined();
    }
    ggml_tensor * moment_arg(const Napi::CallbackInfo & info, param_store & st) {
        Napi::Env env = info.Env();
        const std::string name = get_name(info);
        if (info.Length() < 2 || !info[1].IsString()) bad_arg(env, "the moment must be 'm' or 'v'");
        const std::string which = info[1].As<Napi::String>().Utf8Value();
        if (which != "m" && which != "v") bad_arg(env, "the moment must be 'm' or 'v', got '" + which + "'");
        param_entry & e = guarded(env, [&]() -> param_entry & { return param_store_get(st, name); });
        return which == "m" ? e.m : e.v;
    }
    Napi::Value GetMoment(const Napi::CallbackInfo & info) {
        param_store & st = get(info.Env());
        ggml_tensor * t = moment_arg(info, st);
        return to_js(info.Env(), run_sync(info.Env(), exec(), [&]() { return param_store_read(t); }));
    }
    Napi::Value SetMoment(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        ggml_tensor * t = moment_arg(info, st);
        if (info.Length() < 3) bad_arg(env, "setMoment(name, 'm' | 'v', data: Float32Array)");
        std::vector<float> data = get_f32(env, info[2], "data");
        run_sync(env, exec(), [&]() { param_store_write(t, data, "ParamStore.setMoment"); });
        return env.Undefined();
    }
    Napi::Value GradNorm(const Napi::CallbackInfo & info) {
        param_store & st = get(info.Env());
        return Napi::Number::New(info.Env(), run_sync(info.Env(), exec(), [&]() { return param_store_grad_norm(st); }));
    }
    Napi::Value ClipGradNorm(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        if (info.Length() < 1 || !info[0].IsNumber()) bad_arg(env, "clipGradNorm(maxNorm: number)");
        const double max_norm = info[0].As<Napi::Number>().DoubleValue();
        return Napi::Number::New(env, run_sync(env, exec(), [&]() { return param_store_clip_grad_norm(st, max_norm); }));
    }
    Napi::Value ZeroGrad(const Napi::CallbackInfo & info) {
        param_store & st = get(info.Env());
        run_sync(info.Env(), exec(), [&]() { param_store_zero_grad(st); });
        return info.Env().Undefined();
    }
    // adamwStep({ lr, beta1, beta2, eps, weightDecay, step }) -> Promise<number of parameters updated>
    Napi::Value AdamwStep(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        Napi::Object o = need_object(info, 0, "AdamW options");
        adamw_options ao;
        ao.lr = get_number(o, "lr", ao.lr);
        ao.beta1 = get_number(o, "beta1", ao.beta1);
        ao.beta2 = get_number(o, "beta2", ao.beta2);
        ao.eps = get_number(o, "eps", ao.eps);
        ao.weight_decay = get_number(o, "weightDecay", ao.weight_decay);
        const double step = get_number(o, "step", NAN);
        if (!(step >= 1 && step <= 9.0e15 && std::floor(step) == step)) bad_arg(env, "adamwStep: step must be an integer >= 1");
        ao.step = (int64_t) step;
        guarded(env, [&]() { adamw_options_check(ao); return 0; });
        std::shared_ptr<param_store> keep = s;
        return submit<double>(env, st.backends->exec,
            [keep, ao]() { return (double) param_store_adamw_step(*keep, ao); },
            [](Napi::Env env, double & n) -> Napi::Value { return Napi::Number::New(env, n); },
            info.This());
    }
    // saveState(path, { step, lr }) -> Promise<void>: the moments plus the optimizer's step count and lr, as GGUF.
    Napi::Value SaveState(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        if (info.Length() < 1 || !info[0].IsString()) bad_arg(env, "saveState(path: string, { step, lr })");
        const std::string path = info[0].As<Napi::String>().Utf8Value();
        if (path.empty()) bad_arg(env, "saveState: the path must not be empty");
        Napi::Object o = need_object(info, 1, "saveState options");
        const double step = get_number(o, "step", NAN);
        if (!(step >= 0 && step <= 9.0e15 && std::floor(step) == step)) bad_arg(env, "saveState: step must be an integer >= 0");
        const double lr = get_number(o, "lr", NAN);
        if (!(lr > 0)) bad_arg(env, "saveState: lr must be a positive finite number");
        // The moments are read on the executor, after the steps queued before and before those queued after.
        std::shared_ptr<param_store> keep = s;
        return submit<int>(env, st.backends->exec,
            [keep, path, step, lr]() { param_store_save_state(*keep, path, (int64_t) step, lr); return 0; },
            [](Napi::Env env, int &) -> Napi::Value { return env.Undefined(); },
            info.This());
    }
    // loadState(path) -> Promise<{ step, lr }>: the file is checked against the store before any moment is written.
    Napi::Value LoadState(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        param_store & st = get(env);
        if (info.Length() < 1 || !info[0].IsString()) bad_arg(env, "loadState(path: string)");
        const std::string path = info[0].As<Napi::String>().Utf8Value();
        if (path.empty()) bad_arg(env, "loadState: the path must not be empty");
        std::shared_ptr<param_store> keep = s;
        return submit<optimizer_state>(env, st.backends->exec,
            [keep, path]() { return param_store_load_state(*keep, path); },
            [](Napi::Env env, optimizer_state & r) -> Napi::Value {
                Napi::Object out = Napi::Object::New(env);
                out.Set("step", (double) r.step);
                out.Set("lr", r.lr);
                return out;
            },
            info.This());
    }
    // Queued calls keep the store alive until they have run; later calls get ERR_DISPOSED.
    Napi::Value Dispose(const Napi::CallbackInfo & info) {
        s.reset();
        return info.Env().Undefined();
    }
};
Napi::FunctionReference ParamStoreWrap::ctor;

// runGraph({ nodes, loss?, device?, threads?, store? }) -> Promise<{ loss?, outputs, grads, paramsWithGrad }>
Napi::Value RunGraph(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "graph request");
    tensor_graph_request req;
    req.device = get_string(o, "device", "cpu");
    const double threads = get_number(o, "threads", 0);
    if (!(threads >= 0 && threads <= 1024 && std::floor(threads) == threads)) bad_arg(env, "threads must be an integer in [0, 1024]");
    req.n_threads = (int) threads;
    const double loss = get_number(o, "loss", -1);
    if (std::floor(loss) != loss || loss < -1 || loss > (double) TENSOR_GRAPH_MAX_NODES) bad_arg(env, "loss must be a node index");
    req.loss = (int32_t) loss;

    ParamStoreWrap * store = nullptr;
    Napi::Value sv = o.Get("store");
    if (!sv.IsUndefined() && !sv.IsNull()) {
        if (!sv.IsObject() || !sv.As<Napi::Object>().InstanceOf(ParamStoreWrap::ctor.Value()))
            bad_arg(env, "store must be a ParamStore of this addon");
        store = ParamStoreWrap::Unwrap(sv.As<Napi::Object>());
        store->get(env);  // ERR_DISPOSED
        req.store = store->s;
    }

    Napi::Value nv = o.Get("nodes");
    if (!nv.IsArray()) bad_arg(env, "nodes must be an array");
    Napi::Array arr = nv.As<Napi::Array>();
    if (arr.Length() > TENSOR_GRAPH_MAX_NODES) bad_arg(env, "at most " + std::to_string(TENSOR_GRAPH_MAX_NODES) + " nodes, got " + std::to_string(arr.Length()));
    for (uint32_t i = 0; i < arr.Length(); i++) {
        const std::string at = "nodes[" + std::to_string(i) + "]";
        Napi::Value v = arr.Get(i);
        if (!v.IsObject()) bad_arg(env, at + " must be an object");
        Napi::Object no = v.As<Napi::Object>();
        tensor_graph_node nd;
        Napi::Value opv = no.Get("op");
        if (!opv.IsString()) bad_arg(env, at + ".op must be a string");
        nd.op = opv.As<Napi::String>().Utf8Value();
        Napi::Value iv = no.Get("inputs");
        if (!iv.IsUndefined()) {
            if (!iv.IsArray()) bad_arg(env, at + ".inputs must be an array of node indices");
            Napi::Array ia = iv.As<Napi::Array>();
            if (ia.Length() > 8) bad_arg(env, at + ".inputs has too many entries");
            for (uint32_t k = 0; k < ia.Length(); k++) {
                Napi::Value x = ia.Get(k);
                const double d = x.IsNumber() ? x.As<Napi::Number>().DoubleValue() : NAN;
                if (!(std::floor(d) == d) || std::fabs(d) > 1e9) bad_arg(env, at + ".inputs must hold integer node indices");
                nd.inputs.push_back((int32_t) d);
            }
        }
        Napi::Value pv = no.Get("params");
        if (!pv.IsUndefined()) {
            if (!pv.IsArray()) bad_arg(env, at + ".params must be an array of numbers");
            Napi::Array pa = pv.As<Napi::Array>();
            if (pa.Length() > 8) bad_arg(env, at + ".params has too many entries");
            for (uint32_t k = 0; k < pa.Length(); k++) {
                Napi::Value x = pa.Get(k);
                if (!x.IsNumber()) bad_arg(env, at + ".params must hold numbers");
                nd.params.push_back(x.As<Napi::Number>().DoubleValue());
            }
        }
        if (nd.op == "const" || nd.op == "reshape") nd.shape = get_shape(env, no.Get("shape"), at + ".shape");
        if (nd.op == "const") nd.data = get_f32(env, no.Get("data"), at + ".data");
        if (nd.op == "param") {
            Napi::Value nm = no.Get("param");
            if (!nm.IsString()) bad_arg(env, at + ".param must be the parameter's name");
            nd.param = nm.As<Napi::String>().Utf8Value();
        }
        nd.output = no.Get("output").ToBoolean();
        nd.requires_grad = no.Get("requiresGrad").ToBoolean();
        req.nodes.push_back(std::move(nd));
    }

    guarded(env, [&]() { tensor_graph_validate(req); return 0; });
    auto ex = req.store ? req.store->backends->exec : guarded(env, [&]() { return executor_for(req.device); });
    return submit<tensor_graph_result>(env, ex,
        [req]() { return tensor_graph_run(req); },
        [](Napi::Env env, tensor_graph_result & r) -> Napi::Value {
            Napi::Object out = Napi::Object::New(env);
            if (r.has_loss) out.Set("loss", r.loss);
            auto list = [&](const std::vector<tensor_graph_tensor> & ts) {
                Napi::Array a = Napi::Array::New(env, ts.size());
                for (size_t i = 0; i < ts.size(); i++) {
                    Napi::Object e = Napi::Object::New(env);
                    e.Set("node", (double) ts[i].node);
                    e.Set("shape", shape_to_js(env, ts[i].shape));
                    e.Set("data", to_js(env, ts[i].data));
                    a.Set((uint32_t) i, e);
                }
                return a;
            };
            out.Set("outputs", list(r.outputs));
            out.Set("grads", list(r.grads));
            Napi::Array pg = Napi::Array::New(env, r.params_with_grad.size());
            for (size_t i = 0; i < r.params_with_grad.size(); i++) pg.Set((uint32_t) i, r.params_with_grad[i]);
            out.Set("paramsWithGrad", pg);
            return out;
        },
        store ? Napi::Value(store->Value()) : Napi::Value());
}

} // namespace

Napi::Object param_store_to_js(Napi::Env env, std::shared_ptr<param_store> s) {
    std::shared_ptr<param_store> tmp = std::move(s);
    return ParamStoreWrap::ctor.New({ Napi::External<std::shared_ptr<param_store>>::New(env, &tmp) });
}

// adamwCheck({ lr, beta1, beta2, eps, weightDecay }): adamwStep's hyperparameter rule (adamw_options_check),
// exported so that the TypeScript AdamW rejects bad values when it is constructed, with the same rule.
Napi::Value AdamwCheck(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "AdamW options");
    adamw_options ao;
    ao.lr = get_number(o, "lr", NAN);
    ao.beta1 = get_number(o, "beta1", NAN);
    ao.beta2 = get_number(o, "beta2", NAN);
    ao.eps = get_number(o, "eps", NAN);
    ao.weight_decay = get_number(o, "weightDecay", NAN);
    ao.step = 1;
    guarded(env, [&]() { adamw_options_check(ao); return 0; });
    return env.Undefined();
}

// broadcastShape(a, b) -> the shape of a binary op on shapes a and b, or null when they do not broadcast.
Napi::Value BroadcastShape(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2) bad_arg(env, "broadcastShape(a, b): two shapes expected");
    const shape_t a = get_shape(env, info[0], "a"), b = get_shape(env, info[1], "b");
    shape_t out;
    if (!broadcast_shape(a, b, out)) return env.Null();
    return shape_to_js(env, out);
}

void tensor_graph_register(Napi::Env env, Napi::Object exports) {
    exports.Set("ParamStore", ParamStoreWrap::Init(env));
    exports.Set("runGraph", Napi::Function::New(env, RunGraph));
    exports.Set("broadcastShape", Napi::Function::New(env, BroadcastShape));
    exports.Set("adamwCheck", Napi::Function::New(env, AdamwCheck));
}

} // namespace sqlr1
