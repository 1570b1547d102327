// Tables of numbers as the study drivers print and write them: markdown (summary.md, the terminal)
// and CSV (summary.csv, written atomically).
#pragma once
#include <string>
#include <vector>

namespace sae {

struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};
std::string format_number(double value, int significant = 4);  // "%.4g"; "" for NaN
std::string markdown(const Table& table);
std::string markdown_paragraphs(const std::string& lines);  // each line of text its own paragraph
void write_csv(const Table& table, const std::string& path);

}  // namespace sae
