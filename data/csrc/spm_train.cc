// The one entry point baichuan needs from SentencePiece's trainer (libsentencepiece_train, built
// by the sentencepiece-sys crate): SentencePieceTrainer::Train on a map of options, with the
// library's random seed set first. C ABI so that Rust calls it without bindgen; exceptions and
// error statuses come back as a message.
#include <cstdio>
#include <exception>
#include <string>
#include <unordered_map>

#include "sentencepiece_trainer.h"

extern "C" int baichuan_spm_train(const char* const* keys, const char* const* values, size_t n, unsigned int seed,
                                  char* err, size_t err_len) {
  try {
    std::unordered_map<std::string, std::string> kwargs;
    for (size_t i = 0; i < n; ++i) kwargs[keys[i]] = values[i];
    sentencepiece::SetRandomGeneratorSeed(seed);
    const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs);
    if (!status.ok()) {
      std::snprintf(err, err_len, "%s", status.ToString().c_str());
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 2;
  }
}
