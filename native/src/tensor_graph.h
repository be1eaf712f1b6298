// Lazy tensor expressions compiled to one ggml graph: forward, then ggml's autodiff (ggml_build_backward_expand)
// from a scalar loss, run on the CPU or CUDA. The request is a DAG of small ops built in TypeScript
// (lib/train/tensor.ts); leaves are constants (data + shape) or parameters of a param_store (adamw.h).
//
// Conventions
//  - Shapes are outermost first (row-major, as JS writes them); [] is a scalar. Shape [N, T] is ggml's
//    ne = [T, N], so "rows" are the innermost dimension: sum_rows([N, T]) -> [N, 1].
//  - Broadcasting (binary ops, masks): numpy's rule restricted to one side. Dimensions are aligned on the right;
//    one operand's shape must cover the other's, each dimension of the smaller one being equal or 1. Either
//    operand may be the smaller one; the result has the larger shape.
//  - Every request is validated in full (op names, arity, parameters, shapes, input indices in range, no
//    cycles, parameters known to the store, the loss a scalar) before ggml sees it: ggml's asserts abort.
//
// Ops (name: inputs -> shape; how it maps to ggml, see tensor_graph.cpp for why):
//   const, param                       leaves
//   add, sub, mul, div, min, max       (a, b) -> broadcast shape
//   neg, exp, log, step                (x) -> shape of x; step is 1 where x > 0, else 0 (gradient 0)
//   reshape                            (x) -> `shape` (same element count)
//   scale [s], add_scalar [c]          (x) -> shape of x
//   clamp [lo, hi]                     (x) -> shape of x, gradient 1 inside [lo, hi] and 0 outside
//   sum, mean                          (x) -> []
//   sum_rows, mean_rows                (x) -> x's shape with the last dimension 1 ([] stays [])
//   masked_sum, masked_mean            (x, mask) -> []; mean = sum(x*m) / max(sum(m), 1)
//   masked_mean_rows                   (x, mask) -> rows shape; sum_rows(x*m) / max(sum_rows(m), 1)
#pragma once

#include "adamw.h"

#include <napi.h>

#include <memory>
#include <string>
#include <vector>

namespace sqlr1 {

constexpr size_t TENSOR_GRAPH_MAX_NODES = 4096;

struct tensor_graph_node {
    std::string op;
    std::vector<int32_t> inputs;
    std::vector<double> params;
    std::vector<int64_t> shape;       // const and reshape: required; ignored otherwise
    std::vector<float> data;          // const
    std::string param;                // param: the name in the store
    bool output = false;              // return this node's value
    bool requires_grad = false;       // const only: return d loss / d this node
};

struct tensor_graph_request {
    std::vector<tensor_graph_node> nodes;
    int32_t loss = -1;                // node index of the scalar loss; -1: forward only
    std::string device = "cpu";       // ignored when a store is given (the store's device is used)
    int n_threads = 0;
    std::shared_ptr<param_store> store;
};

struct tensor_graph_tensor {
    int32_t node = -1;
    std::vector<int64_t> shape;
    std::vector<float> data;
};

struct tensor_graph_result {
    bool has_loss = false;
    double loss = 0.0;
    std::vector<tensor_graph_tensor> outputs;   // nodes marked output, in node order
    std::vector<tensor_graph_tensor> grads;     // consts marked requires_grad, in node order
    std::vector<std::string> params_with_grad;  // store parameters that received a gradient
};

// Validates the request and returns each node's shape (outermost first). Throws sqlr1::error.
std::vector<std::vector<int64_t>> tensor_graph_validate(const tensor_graph_request & req);

// Validates, builds and runs the graph. Parameter gradients are added to the store's accumulators.
tensor_graph_result tensor_graph_run(const tensor_graph_request & req);

// A JS ParamStore object for an existing store (a LoRA adapter's parameters).
Napi::Object param_store_to_js(Napi::Env env, std::shared_ptr<param_store> s);

// Exports ParamStore (class) and runGraph (function) on the addon.
void tensor_graph_register(Napi::Env env, Napi::Object exports);

} // namespace sqlr1
