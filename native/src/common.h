// Shared helpers for the native core: the error type every layer throws (turned into a JS error with a
// `code` at the N-API boundary) and ggml log capture, so messages can name what ggml complained about.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace sqlr1 {

// An error with a stable code (ERR_GGUF_INVALID, ERR_NO_CUDA, ...). Validation throws these before anything
// reaches ggml, whose own checks abort the process.
struct error : std::runtime_error {
    std::string code;
    error(std::string code_, const std::string & msg) : std::runtime_error(msg), code(std::move(code_)) {}
};

[[noreturn]] void fail(const char * code, const char * fmt, ...) __attribute__((format(printf, 2, 3)));

// Installs a ggml log callback that keeps the last error line (and prints everything when SQLR1_DEBUG is set).
void log_init();
std::string log_last_error();

} // namespace sqlr1
