// How token text is shown (sae_features' JSON, sae_browser's page): byte-level BPE tokens are byte
// strings that may hold part of a UTF-8 character, control bytes or markup characters.
//   display_token: for reading on screen: valid UTF-8 kept, control bytes shown as their Unicode
//     control pictures (newline as "↵", tab as "⇥", others U+2400 + byte, DEL as "␡"), every byte of
//     an invalid sequence as "\xNN", and characters that act on the text around them (C1 controls,
//     bidirectional marks and overrides, line and paragraph separators) as "<U+XXXX>";
//   valid_utf8: invalid sequences replaced by U+FFFD (what Hugging Face's decode gives);
//   activation_block: the tutorial's annotation, one of ▁▂▃▄▅▆▇█ for a value relative to a maximum;
//   round_significant: a number cut to a few significant digits for compact JSON.
#pragma once
#include <string>
#include <string_view>

namespace sae {

std::string display_token(std::string_view bytes);
std::string valid_utf8(std::string_view bytes);

// "▁" .. "█" (U+2581 .. U+2588): level min(7, floor(8 value / max)) for max > 0 and value > 0,
// else "▁". So "█" marks the top eighth of the story's maximum, and the maximum itself.
std::string activation_block(double value, double max);

double round_significant(double value, int digits = 6);

}  // namespace sae
