// The N-API face of a trainer (train.h): a Trainer object with async forward and backward.
#pragma once

#include "train.h"

#include <napi.h>

namespace sqlr1 {

Napi::Object trainer_to_js(Napi::Env env, std::shared_ptr<trainer> t);
void train_register(Napi::Env env, Napi::Object exports);

} // namespace sqlr1
